// Boot-time MSRs, FPU and local-APIC state for a new vCPU.
import type { KvmVcpuFd } from '../../kvm/vcpu-fd.js';
import type { MsrEntry } from '../../kvm/structs.js';

const MSR = {
  TSC: 0x10,
  SYSENTER_CS: 0x174,
  SYSENTER_ESP: 0x175,
  SYSENTER_EIP: 0x176,
  MISC_ENABLE: 0x1a0,
  MTRR_DEF_TYPE: 0x2ff,
  STAR: 0xc000_0081,
  LSTAR: 0xc000_0082,
  CSTAR: 0xc000_0083,
  SYSCALL_MASK: 0xc000_0084,
  KERNEL_GS_BASE: 0xc000_0102,
} as const;

export function bootMsrs(): MsrEntry[] {
  return [
    { index: MSR.SYSENTER_CS, data: 0n },
    { index: MSR.SYSENTER_ESP, data: 0n },
    { index: MSR.SYSENTER_EIP, data: 0n },
    { index: MSR.STAR, data: 0n },
    { index: MSR.CSTAR, data: 0n },
    { index: MSR.KERNEL_GS_BASE, data: 0n },
    { index: MSR.SYSCALL_MASK, data: 0n },
    { index: MSR.LSTAR, data: 0n },
    { index: MSR.TSC, data: 0n },
    { index: MSR.MISC_ENABLE, data: 1n }, // fast strings
    { index: MSR.MTRR_DEF_TYPE, data: (1n << 11n) | 6n }, // MTRRs on, default write-back
  ];
}

/** x87 control word and MXCSR at their reset values (KVM leaves them zero). */
export function setBootFpu(vcpu: KvmVcpuFd): void {
  const fpu = vcpu.getFpu();
  fpu.writeUInt16LE(0x37f, 128); // fcw
  fpu.writeUInt32LE(0x1f80, 408); // mxcsr
  vcpu.setFpu(fpu);
}

const APIC_LVT_LINT0 = 0x350;
const APIC_LVT_LINT1 = 0x360;
const DELIVERY_EXTINT = 7;
const DELIVERY_NMI = 4;

/** LINT0 as ExtINT (the legacy PIC) and LINT1 as NMI, as a PC firmware leaves them. */
export function setBootLapic(vcpu: KvmVcpuFd): void {
  const lapic = vcpu.getLapic();
  const set = (off: number, mode: number): void => {
    const v = lapic.readUInt32LE(off);
    lapic.writeUInt32LE(((v & ~0x700) | (mode << 8)) >>> 0, off);
  };
  set(APIC_LVT_LINT0, DELIVERY_EXTINT);
  set(APIC_LVT_LINT1, DELIVERY_NMI);
  vcpu.setLapic(lapic);
}
