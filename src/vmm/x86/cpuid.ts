// The CPUID a vCPU sees: KVM's supported set, with per-vCPU topology filled in and
// features the caller wants hidden taken out.
import type { CpuidEntry } from '../../kvm/structs.js';

export interface CpuidOptions {
  vcpu: number;
  vcpuCount: number;
  /** Leaf-1/leaf-7 feature bits to clear, by name. */
  hide?: readonly CpuidFeature[];
}

/** Features that can be hidden (useful where KVM's instruction emulator lacks them). */
export type CpuidFeature = 'xsave' | 'cx16' | 'avx' | 'x2apic' | 'tsc-deadline';

const FEATURE_BITS: Record<CpuidFeature, { leaf: number; reg: 'ecx' | 'edx' | 'ebx'; bit: number }> = {
  xsave: { leaf: 1, reg: 'ecx', bit: 26 },
  cx16: { leaf: 1, reg: 'ecx', bit: 13 },
  avx: { leaf: 1, reg: 'ecx', bit: 28 },
  x2apic: { leaf: 1, reg: 'ecx', bit: 21 },
  'tsc-deadline': { leaf: 1, reg: 'ecx', bit: 24 },
};

const ECX_HYPERVISOR = 1 << 31;
const ECX_OSXSAVE = 1 << 27;
const EDX_HTT = 1 << 28;

export function filterCpuid(supported: readonly CpuidEntry[], opts: CpuidOptions): CpuidEntry[] {
  const hide = new Set(opts.hide ?? []);
  const out: CpuidEntry[] = [];
  for (const src of supported) {
    const e = { ...src };
    if (e.function === 1) {
      // Initial APIC id and logical processor count.
      e.ebx = ((e.ebx & 0x0000_ffff) | ((opts.vcpuCount & 0xff) << 16) | ((opts.vcpu & 0xff) << 24)) >>> 0;
      e.ecx = (e.ecx | ECX_HYPERVISOR) >>> 0;
      if (opts.vcpuCount > 1) e.edx = (e.edx | EDX_HTT) >>> 0;
      if (hide.has('xsave')) e.ecx = (e.ecx & ~ECX_OSXSAVE) >>> 0;
    }
    if (e.function === 0xb || e.function === 0x1f) e.edx = opts.vcpu >>> 0; // x2APIC id
    for (const f of hide) {
      const spec = FEATURE_BITS[f];
      if (e.function === spec.leaf) e[spec.reg] = (e[spec.reg] & ~(1 << spec.bit)) >>> 0;
    }
    // Without XSAVE, leaf 0xd (XSAVE state sizes) must go too.
    if (hide.has('xsave') && e.function === 0xd) continue;
    out.push(e);
  }
  return out;
}
