// The guest-physical layout of RAM on a PC: where the MMIO hole below 4 GiB lies.
// Kept apart from GuestMemory because devices that reason about RAM ranges (the
// balloon) need the layout without mapping anything.

/** Start (guest-physical byte address) of the MMIO hole below 4 GiB: device windows, IOAPIC, LAPIC. */
export const MMIO_GAP_START = 0xd000_0000;
/** End (exclusive) of the MMIO hole: RAM that would overlap it continues here, at 4 GiB. */
export const MMIO_GAP_END = 0x1_0000_0000;
