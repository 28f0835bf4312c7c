// Fixed I/O ports the engine handles inside the vCPU thread (docs/synthetic-guests.md).
export const PORT = {
  I8042_DATA: 0x60,
  I8042_COMMAND: 0x64,
  /** A write ends the VM with reason 'exit' and the written value as code. */
  DEBUG_EXIT: 0x500,
  /** A write stops the writing vCPU (ring-3 stand-in for hlt). */
  PARK: 0x504,
  /** Writes ignored, reads zero: the cheapest possible exit. */
  NULL: 0x508,
} as const;
