// How many virtio devices a sandbox needs, checked before anything starts: past the
// machine's virtio-mmio slots QEMU fails late and cryptically ("No 'virtio-bus' bus
// found"), and our KVM engine has no pin left.
import { TsiboxError } from '../errors.js';
import { VIRTIO_MMIO_SLOTS } from '../vmm/virtio-mmio-attach.js';

/**
 * QEMU's microvm machine creates 8 virtio-mmio transports (hw/i386/microvm.c,
 * VIRTIO_NUM_TRANSPORTS; 24 more only with ACPI's second IOAPIC, which we run without).
 */
export const QEMU_MICROVM_SLOTS = 8;

export interface DeviceCount {
  /** virtio-fs shares (root and mounts). */
  shares: number;
  /** virtio-blk disks (rootDisk included). */
  disks: number;
  balloon: boolean;
  /** A virtio-net device (passt, gvproxy). */
  net: boolean;
}

/**
 * Throws INVALID_ARGUMENT, with the numbers, when the devices do not fit the engine's
 * virtio-mmio slots. Fixed devices: console (QEMU: virtio-serial), rng and vsock.
 */
export function checkDeviceSlots(engine: 'qemu' | 'kvm', c: DeviceCount): void {
  const slots = engine === 'qemu' ? QEMU_MICROVM_SLOTS : VIRTIO_MMIO_SLOTS;
  const fixed = 3 + (c.balloon ? 1 : 0) + (c.net ? 1 : 0);
  if (fixed + c.shares + c.disks <= slots) return;
  const what = `console, rng and vsock${c.balloon ? ', the balloon' : ''}${c.net ? ', virtio-net' : ''}`;
  throw new TsiboxError('INVALID_ARGUMENT',
    `too many devices for the ${engine === 'qemu' ? "QEMU engine's microvm machine" : 'KVM engine'}: ${slots} virtio-mmio slots, ${what} take ${fixed}, `
    + `leaving ${slots - fixed} for shares and disks; asked for ${c.shares} share(s) (root and mounts) and ${c.disks} disk(s)`
    + `${c.balloon ? ' (balloon: false frees one slot)' : ''}`);
}
