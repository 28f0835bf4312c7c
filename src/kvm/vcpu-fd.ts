// vCPU-level ioctls and the shared kvm_run page. Usable from the main thread (setup)
// and from the vCPU's worker thread (KVM_RUN); fds and mappings are process-wide.
import { TsiboxError } from '../errors.js';
import { sys, view, closeFd, syscallError, PROT_READ, PROT_WRITE, MAP_SHARED } from '../sys/libc.js';
import { KVM } from './ioctl-numbers.js';
import { ioctlBuf } from './ioctl.js';
import {
  decodeRegs, encodeRegs, decodeSregs, encodeSregs, encodeCpuid, encodeMsrs, decodeMsrs,
  REGS_SIZE, SREGS_SIZE, FPU_SIZE, LAPIC_SIZE,
  type Regs, type Sregs, type CpuidEntry, type MsrEntry,
} from './structs.js';

export class KvmVcpuFd {
  readonly fd: number;
  readonly id: number;
  /** Host address of this vCPU's struct kvm_run mapping. */
  readonly runAddress: bigint;
  readonly runSize: number;
  #closed = false;

  constructor(fd: number, id: number, runSize: number, runAddress?: bigint) {
    this.fd = fd;
    this.id = id;
    this.runSize = runSize;
    if (runAddress === undefined) {
      const p = sys.mmap(null, runSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) as bigint | null;
      if (p === null || p === 0xffff_ffff_ffff_ffffn) throw syscallError(`mmap of kvm_run for vCPU ${id}`);
      runAddress = p;
    }
    this.runAddress = runAddress;
  }

  /** A zero-copy view of struct kvm_run (and the PIO data area that follows it). */
  runView(): ArrayBuffer {
    return view(this.runAddress, this.runSize);
  }

  getRegs(): Regs {
    const b = Buffer.alloc(REGS_SIZE);
    ioctlBuf(this.fd, 'GET_REGS', KVM.GET_REGS, b);
    return decodeRegs(b);
  }

  setRegs(r: Regs): void {
    ioctlBuf(this.fd, 'SET_REGS', KVM.SET_REGS, encodeRegs(r));
  }

  getSregs(): Sregs {
    const b = Buffer.alloc(SREGS_SIZE);
    ioctlBuf(this.fd, 'GET_SREGS', KVM.GET_SREGS, b);
    return decodeSregs(b);
  }

  setSregs(s: Sregs): void {
    ioctlBuf(this.fd, 'SET_SREGS', KVM.SET_SREGS, encodeSregs(s));
  }

  /** Raw struct kvm_fpu. */
  getFpu(): Buffer {
    const b = Buffer.alloc(FPU_SIZE);
    ioctlBuf(this.fd, 'GET_FPU', KVM.GET_FPU, b);
    return b;
  }

  setFpu(b: Buffer): void {
    if (b.length !== FPU_SIZE) throw new TsiboxError('INVALID_ARGUMENT', `kvm_fpu is ${FPU_SIZE} bytes`);
    ioctlBuf(this.fd, 'SET_FPU', KVM.SET_FPU, b);
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    ioctlBuf(this.fd, 'SET_CPUID2', KVM.SET_CPUID2, encodeCpuid(entries));
  }

  setMsrs(entries: readonly MsrEntry[]): void {
    const n = ioctlBuf(this.fd, 'SET_MSRS', KVM.SET_MSRS, encodeMsrs(entries));
    if (n !== entries.length) {
      const bad = entries[n];
      throw new TsiboxError('KVM_IOCTL', `KVM_SET_MSRS set ${n} of ${entries.length} MSRs; MSR 0x${bad?.index.toString(16)} was refused`);
    }
  }

  getMsrs(indices: readonly number[]): MsrEntry[] {
    const b = encodeMsrs(indices.map((index) => ({ index, data: 0n })));
    const n = ioctlBuf(this.fd, 'GET_MSRS', KVM.GET_MSRS, b);
    return decodeMsrs(b, n);
  }

  /** Raw struct kvm_lapic_state (1024 bytes of APIC registers). */
  getLapic(): Buffer {
    const b = Buffer.alloc(LAPIC_SIZE);
    ioctlBuf(this.fd, 'GET_LAPIC', KVM.GET_LAPIC, b);
    return b;
  }

  setLapic(b: Buffer): void {
    ioctlBuf(this.fd, 'SET_LAPIC', KVM.SET_LAPIC, b);
  }

  getMpState(): number {
    const b = Buffer.alloc(4);
    ioctlBuf(this.fd, 'GET_MP_STATE', KVM.GET_MP_STATE, b);
    return b.readUInt32LE(0);
  }

  setMpState(state: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(state, 0);
    ioctlBuf(this.fd, 'SET_MP_STATE', KVM.SET_MP_STATE, b);
  }

  /**
   * KVM_SET_SIGNAL_MASK: the signal mask in force while the vCPU runs guest code.
   * `sigset` is the kernel's 8-byte sigset.
   */
  setSignalMask(sigset: Buffer): void {
    const b = Buffer.alloc(4 + 8);
    b.writeUInt32LE(8, 0);
    sigset.copy(b, 4, 0, 8);
    ioctlBuf(this.fd, 'SET_SIGNAL_MASK', KVM.SET_SIGNAL_MASK, b);
  }

  /** KVM_RUN. Returns 0, or -errno (EINTR when kicked) without throwing: this is the hot path. */
  run(): number {
    return sys.ioctlInt(this.fd, KVM.RUN, 0) as number;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    sys.munmap(this.runAddress, this.runSize);
    closeFd(this.fd);
  }
}

