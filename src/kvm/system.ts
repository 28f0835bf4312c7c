// /dev/kvm: the system-level ioctls.
import { TsiboxError } from '../errors.js';
import { sys, errno, errnoName, closeFd, O_RDWR, O_CLOEXEC } from '../sys/libc.js';
import { KVM, KVM_API_VERSION } from './ioctl-numbers.js';
import { ioctlInt, ioctlError } from './ioctl.js';
import { decodeCpuid, CPUID_ENTRY_SIZE, type CpuidEntry } from './structs.js';

export const KVM_DEVICE = '/dev/kvm';

export class Kvm {
  readonly fd: number;
  #closed = false;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** Opens /dev/kvm and checks the API version. */
  static open(path = KVM_DEVICE): Kvm {
    const fd = sys.open(path, O_RDWR | O_CLOEXEC) as number;
    if (fd < 0) {
      const e = errno();
      throw new TsiboxError('KVM_UNAVAILABLE', `cannot open ${path}: ${errnoName(e)} (${sys.strerror(e)})`, { errno: e });
    }
    const kvm = new Kvm(fd);
    const version = kvm.apiVersion();
    if (version !== KVM_API_VERSION) {
      kvm.close();
      throw new TsiboxError('KVM_UNAVAILABLE', `${path} speaks KVM API ${version}, tsibox needs ${KVM_API_VERSION}`);
    }
    return kvm;
  }

  apiVersion(): number {
    return ioctlInt(this.fd, 'GET_API_VERSION', KVM.GET_API_VERSION);
  }

  /** KVM_CHECK_EXTENSION: 0 when absent, else a capability-specific positive value. */
  checkExtension(cap: number): number {
    return ioctlInt(this.fd, 'CHECK_EXTENSION', KVM.CHECK_EXTENSION, cap);
  }

  vcpuMmapSize(): number {
    return ioctlInt(this.fd, 'GET_VCPU_MMAP_SIZE', KVM.GET_VCPU_MMAP_SIZE);
  }

  supportedCpuid(): CpuidEntry[] {
    // The kernel answers E2BIG when the array is too small; grow until it fits.
    for (let n = 64; n <= 4096; n *= 2) {
      const b = Buffer.alloc(8 + n * CPUID_ENTRY_SIZE);
      b.writeUInt32LE(n, 0);
      const r = sys.ioctlBuf(this.fd, KVM.GET_SUPPORTED_CPUID, b) as number;
      if (r >= 0) return decodeCpuid(b);
      const e = errno();
      if (e !== 7 /* E2BIG */) throw ioctlError('GET_SUPPORTED_CPUID', e);
    }
    throw new TsiboxError('KVM_IOCTL', 'KVM_GET_SUPPORTED_CPUID: more than 4096 entries');
  }

  /** Returns the new VM's file descriptor. */
  createVm(): number {
    return ioctlInt(this.fd, 'CREATE_VM', KVM.CREATE_VM, 0);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }
}

