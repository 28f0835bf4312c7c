// VM-level ioctls on a KVM VM file descriptor.
import { closeFd } from '../sys/libc.js';
import { KVM, KVM_IOEVENTFD_FLAG, KVM_IRQFD_FLAG, KVM_PIT_SPEAKER_DUMMY } from './ioctl-numbers.js';
import { ioctlInt, ioctlBuf } from './ioctl.js';

export interface IoEventFdSpec {
  /** Guest-physical address (MMIO) or port number (PIO). */
  address: number;
  /** Access width that triggers: 1, 2, 4 or 8 (0 = any width, MMIO only). */
  length: number;
  pio: boolean;
  /** Trigger only when the written value equals this. */
  datamatch?: bigint;
}

export class KvmVmFd {
  readonly fd: number;
  #closed = false;

  constructor(fd: number) {
    this.fd = fd;
  }

  setUserMemoryRegion(slot: number, guestAddress: number, size: number, hostAddress: bigint, flags = 0): void {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(slot, 0);
    b.writeUInt32LE(flags, 4);
    b.writeBigUInt64LE(BigInt(guestAddress), 8);
    b.writeBigUInt64LE(BigInt(size), 16);
    b.writeBigUInt64LE(hostAddress, 24);
    ioctlBuf(this.fd, 'SET_USER_MEMORY_REGION', KVM.SET_USER_MEMORY_REGION, b);
  }

  setTssAddr(addr: number): void {
    ioctlInt(this.fd, 'SET_TSS_ADDR', KVM.SET_TSS_ADDR, addr);
  }

  setIdentityMapAddr(addr: number): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(addr));
    ioctlBuf(this.fd, 'SET_IDENTITY_MAP_ADDR', KVM.SET_IDENTITY_MAP_ADDR, b);
  }

  createIrqchip(): void {
    ioctlInt(this.fd, 'CREATE_IRQCHIP', KVM.CREATE_IRQCHIP);
  }

  createPit2(): void {
    const b = Buffer.alloc(64);
    b.writeUInt32LE(KVM_PIT_SPEAKER_DUMMY, 0);
    ioctlBuf(this.fd, 'CREATE_PIT2', KVM.CREATE_PIT2, b);
  }

  irqLine(irq: number, level: boolean): void {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(irq, 0);
    b.writeUInt32LE(level ? 1 : 0, 4);
    ioctlBuf(this.fd, 'IRQ_LINE', KVM.IRQ_LINE, b);
  }

  /** Routes writes to `eventFd` into an edge on GSI `gsi` (no exit to user space). */
  irqfd(eventFd: number, gsi: number, deassign = false): void {
    const b = Buffer.alloc(32);
    b.writeUInt32LE(eventFd, 0);
    b.writeUInt32LE(gsi, 4);
    b.writeUInt32LE(deassign ? KVM_IRQFD_FLAG.DEASSIGN : 0, 8);
    ioctlBuf(this.fd, 'IRQFD', KVM.IRQFD, b);
  }

  /** Makes guest writes matching `spec` signal `eventFd` instead of exiting. */
  ioeventfd(eventFd: number, spec: IoEventFdSpec, deassign = false): void {
    const b = Buffer.alloc(64);
    let flags = 0;
    if (spec.pio) flags |= KVM_IOEVENTFD_FLAG.PIO;
    if (spec.datamatch !== undefined) {
      flags |= KVM_IOEVENTFD_FLAG.DATAMATCH;
      b.writeBigUInt64LE(spec.datamatch, 0);
    }
    if (deassign) flags |= KVM_IOEVENTFD_FLAG.DEASSIGN;
    b.writeBigUInt64LE(BigInt(spec.address), 8);
    b.writeUInt32LE(spec.length, 16);
    b.writeInt32LE(eventFd, 20);
    b.writeUInt32LE(flags, 24);
    ioctlBuf(this.fd, 'IOEVENTFD', KVM.IOEVENTFD, b);
  }

  /** Returns the new vCPU's file descriptor. */
  createVcpu(id: number): number {
    return ioctlInt(this.fd, 'CREATE_VCPU', KVM.CREATE_VCPU, id);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }
}
