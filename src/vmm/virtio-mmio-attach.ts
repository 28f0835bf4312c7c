// Puts a virtio device on a KVM VM: its virtio-mmio window on the MMIO bus (register
// accesses exit to the main thread), one ioeventfd per queue on QueueNotify (kicks
// never exit to user space) and an irqfd as the interrupt line (no ioctl per
// interrupt). Device `index` gets window 0xd0000000 + index * 0x1000 and GSI 5 + index.
import { TsiboxError } from '../errors.js';
import { MMIO_WINDOW_SIZE, Reg } from '../virtio/constants.js';
import type { VirtioDevice } from '../virtio/device.js';
import type { Logger } from '../virtio/virtio-logger.js';
import { MmioTransport } from '../virtio/mmio.js';
import type { EventFd } from './eventfd.js';
import type { Vm } from './vm.js';

export const VIRTIO_MMIO_BASE = 0xd000_0000;
export const VIRTIO_MMIO_STRIDE = 0x1000;
/** GSI of device 0; device i uses VIRTIO_GSI_BASE + i (IOAPIC pins 5..23). */
export const VIRTIO_GSI_BASE = 5;
/** The in-kernel IOAPIC has 24 pins: virtio-mmio devices the KVM engine can attach. */
export const VIRTIO_MMIO_SLOTS = 24 - VIRTIO_GSI_BASE;
const MAX_DEVICES = VIRTIO_MMIO_SLOTS;

/**
 * The window base and GSI of virtio-mmio slot `index` (0..18). Throws INVALID_ARGUMENT
 * for any other index. For devices attached by other means (vhost-user back ends).
 */
export function virtioMmioSlot(index: number): { base: number; gsi: number } {
  if (!Number.isInteger(index) || index < 0 || index >= MAX_DEVICES) {
    throw new TsiboxError('INVALID_ARGUMENT', `virtio-mmio index must be 0..${MAX_DEVICES - 1}, got ${index}`);
  }
  return { base: VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_STRIDE, gsi: VIRTIO_GSI_BASE + index };
}

export interface VirtioMmioAttachOptions {
  /** Slot: window VIRTIO_MMIO_BASE + index * 0x1000, GSI VIRTIO_GSI_BASE + index. */
  index: number;
  /** Names the device on the bus and in log lines. */
  name?: string;
  logger?: Logger;
  onInternalError?: (err: unknown) => void;
}

export interface VirtioMmioAttachment {
  readonly transport: MmioTransport;
  readonly base: number;
  readonly gsi: number;
  readonly irqfd: EventFd;
  /** Interrupts raised through the irqfd so far. */
  readonly interrupts: number;
  /** Queue notifications that arrived through the ioeventfds (one wake-up may carry several). */
  readonly notifications: bigint;
  /** Resets the device and takes its window off the bus (also runs on vm.close()). */
  detach(): void;
}

/**
 * Wires `device` behind a new MmioTransport on `vm`. The transport is reset when the
 * VM closes (before guest memory is unmapped), or earlier through `detach()`.
 */
export function attachVirtioMmio(vm: Vm, device: VirtioDevice, opts: VirtioMmioAttachOptions): VirtioMmioAttachment {
  const { index } = opts;
  const { base, gsi } = virtioMmioSlot(index);
  const name = opts.name ?? `virtio-${device.deviceId}@${index}`;
  const irqfd = vm.addIrqFd(gsi);
  let interrupts = 0;
  let notifications = 0n;
  const transport = new MmioTransport({
    device,
    memory: vm.memory,
    name,
    interrupt: {
      trigger: () => {
        if (irqfd.closed) return;
        interrupts++;
        irqfd.signal();
      },
    },
    ...(opts.logger ? { logger: opts.logger } : {}),
    ...(opts.onInternalError ? { onInternalError: opts.onInternalError } : {}),
  });
  vm.mmio.register(base, MMIO_WINDOW_SIZE, name, transport);
  device.queueSizes.forEach((_size, queue) => {
    vm.addIoEventFd({ address: base + Reg.QueueNotify, length: 4, pio: false, datamatch: BigInt(queue) }, (count) => {
      notifications += count;
      transport.notify(queue);
    });
  });
  let attached = true;
  const detach = (): void => {
    if (!attached) return;
    attached = false;
    transport.reset();
    vm.mmio.unregister(base);
  };
  vm.onClose(detach);
  return {
    transport, base, gsi, irqfd, detach,
    get interrupts() { return interrupts; },
    get notifications() { return notifications; },
  };
}
