// `tsibox/vmm`: the parts of the VMM for people who build their own virtual machine on
// /dev/kvm (docs/virtio.md, docs/kvm-linux-boot.md, docs/synthetic-guests.md). A
// sandbox needs none of it: see `tsibox`.
export { Vm, type VmOptions, type VmExit, type VmExitReason, type RunOptions } from './vmm/vm.js';
export { GuestMemory, type MemoryRegion } from './memory/guest-memory.js';
export { Bus, type BusDevice } from './vmm/bus.js';
export { EventFd } from './vmm/eventfd.js';
export { loadSyntheticGuest, type SyntheticGuestOptions } from './vmm/synthetic.js';
export { loadLinux, type LinuxBootOptions, type LinuxBootInfo } from './vmm/boot/linux.js';
export { runLinuxOnKvm, type LinuxRunOptions, type LinuxRunResult } from './vmm/boot/run-linux.js';
export { parseKernelImage, type KernelImage } from './vmm/boot/kernel-image.js';
export { MmioTransport, type MmioTransportOptions } from './virtio/mmio.js';
export type { VirtioDevice, InterruptLine, DeviceContext } from './virtio/device.js';
export { ConsoleDevice, ConsolePort, DEFAULT_PORT_NAMES, type ConsoleOptions } from './virtio/console/index.js';
export { RngDevice } from './virtio/rng.js';
export { VsockDevice } from './virtio/vsock/device.js';
export { buildCmdline, type InitConfig } from './guest/index.js';
export { probeRing0, type Ring0Probe } from './engine/ring0-probe.js';
export { TsiboxError, type TsiboxErrorCode } from './errors.js';
