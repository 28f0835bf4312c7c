// What a vCPU worker and the main thread share: a small Int32Array control block in a
// SharedArrayBuffer (start/stop flags and one synchronous bus-access slot) and the
// messages the worker posts.

export const CTL = {
  /** Bus-access slot state: RPC_IDLE, RPC_REQUEST (worker waits), RPC_DONE. */
  RPC_STATE: 0,
  /** 0 = port I/O, 1 = MMIO. */
  RPC_KIND: 1,
  RPC_IS_WRITE: 2,
  RPC_SIZE: 3,
  RPC_ADDR_LO: 4,
  RPC_ADDR_HI: 5,
  /** 8 data bytes (two int32 slots). */
  RPC_DATA: 6,
  RPC_RESULT: 8,
  /** Set to 1 by the main thread to let the vCPU enter the guest. */
  GO: 9,
  /** Set to 1 by the main thread to make the vCPU leave its run loop. */
  STOP: 10,
  LENGTH: 16,
} as const;

export const RPC_IDLE = 0;
export const RPC_REQUEST = 1;
export const RPC_DONE = 2;

export const RPC_KIND_PIO = 0;
export const RPC_KIND_MMIO = 1;

export const RPC_OK = 0;
/** No device at that address; the worker ends the VM with an error. */
export const RPC_UNHANDLED = 1;
/** The device threw; the worker ends the VM with an error. */
export const RPC_FAILED = 2;

/** Why a vCPU ended the VM (or itself). */
export type VcpuEndReason = 'reset' | 'exit' | 'shutdown' | 'error';

export interface VcpuWorkerData {
  vcpuId: number;
  vcpuFd: number;
  vmFd: number;
  runAddress: bigint;
  runSize: number;
  kickSignal: number;
  control: SharedArrayBuffer;
  /** Raise the COM1 interrupt (IRQ 4) through the in-kernel irqchip. */
  serialIrq: boolean;
}

export interface VcpuStats {
  exits: number;
  pioExits: number;
  mmioExits: number;
  busRoundTrips: number;
  kicks: number;
}

export type VcpuMessage =
  | { type: 'ready'; tid: number }
  | { type: 'serial'; bytes: Uint8Array }
  | { type: 'bus' }
  | { type: 'end'; reason: VcpuEndReason; code?: number; detail?: string }
  | { type: 'parked' }
  | { type: 'done'; stats: VcpuStats };
