// One call to get a device on a transport, driven by the software driver over real
// (mmap'ed) guest memory. Used by tests, the fuzzer and the benchmark.
import { GuestMemory } from '../../../src/memory/guest-memory.js';
import type { VirtioDevice } from '../../../src/virtio/device.js';
import type { Logger } from '../../../src/virtio/virtio-logger.js';
import type { VirtioMemory } from '../../../src/virtio/memory.js';
import { MmioTransport } from '../../../src/virtio/mmio.js';
import { CountingInterrupt, SoftwareDriver, type DriverOptions } from './driver.js';

export interface HarnessOptions extends DriverOptions {
  /** Bytes of guest RAM (default 4 MiB). */
  memorySize?: number;
  /** Interpose on what the transport sees as memory (fuzzer checks). */
  wrapMemory?: (memory: GuestMemory) => VirtioMemory;
  logger?: Logger;
  onInternalError?: (err: unknown) => void;
}

export interface Harness<D extends VirtioDevice> {
  device: D;
  memory: GuestMemory;
  transport: MmioTransport;
  driver: SoftwareDriver;
  irq: CountingInterrupt;
  close(): void;
}

export function createHarness<D extends VirtioDevice>(device: D, opts: HarnessOptions = {}): Harness<D> {
  const memory = GuestMemory.anonymous(opts.memorySize ?? 4 * 1024 * 1024);
  const irq = new CountingInterrupt();
  const transport = new MmioTransport({
    device,
    memory: opts.wrapMemory ? opts.wrapMemory(memory) : memory,
    interrupt: irq,
    ...(opts.logger ? { logger: opts.logger } : {}),
    ...(opts.onInternalError ? { onInternalError: opts.onInternalError } : {}),
  });
  const driver = new SoftwareDriver(transport, memory, opts);
  return { device, memory, transport, driver, irq, close: () => { transport.reset(); memory.close(); } };
}
