// The contract between a virtio device and its transport. Devices know nothing of
// MMIO registers or KVM: they get ready queues, guest memory and ways to signal.
import type { Logger } from './virtio-logger.js';
import type { VirtioMemory } from './memory.js';
import type { Virtqueue } from './queue.js';

/** The device's interrupt line (irqfd under KVM, a counter in the software driver). */
export interface InterruptLine {
  trigger(): void;
}

/** What a device gets when the driver sets DRIVER_OK. */
export interface DeviceContext {
  readonly memory: VirtioMemory;
  /** One entry per queue the device declared; null where the driver left it disabled. */
  readonly queues: ReadonlyArray<Virtqueue | null>;
  /** Features both sides agreed on. */
  readonly features: bigint;
  readonly log: Logger;
  /** Raise the used-buffer interrupt for `queue` if the driver asked for one. */
  signalUsed(queue: Virtqueue): void;
  /** The device's config space changed: bump the generation and interrupt. */
  configChanged(): void;
  /** The driver broke a device-level rule: mark the device DEVICE_NEEDS_RESET. */
  fail(reason: string): void;
}

export interface VirtioDevice {
  /** virtio device id (console 3, rng 4, ...). */
  readonly deviceId: number;
  /** Device-specific feature bits the device offers (the transport adds its own). */
  readonly features: bigint;
  /** Maximum size of each queue; the array length is the queue count. */
  readonly queueSizes: readonly number[];
  /** Fill `data` from config space at `offset`; bytes past the config read as 0. */
  readConfig(offset: number, data: Uint8Array): void;
  writeConfig(offset: number, data: Uint8Array): void;
  /** Start working: the driver set DRIVER_OK. */
  activate(ctx: DeviceContext): void;
  /** The driver kicked queue `index` (QueueNotify write or ioeventfd). */
  queueNotify(index: number): void;
  /** Drop all driver-facing state (status was written 0). Host-side state survives. */
  reset(): void;
}

/** Reads `data.length` bytes of a config byte array; out-of-range bytes read as 0. */
export function readConfigBytes(config: Uint8Array, offset: number, data: Uint8Array): void {
  for (let i = 0; i < data.length; i++) data[i] = config[offset + i] ?? 0;
}
