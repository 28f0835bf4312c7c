// Which engine runs a sandbox. 'auto' picks the in-process KVM engine when guest ring-0
// code runs natively, QEMU otherwise. Deterministic first: the loaded KVM module says
// it (kvm_intel / kvm_amd: hardware virtualization, ring 0 native; kvm_pvm: PVM, ring 0
// emulated). Only when no known module is found does the timed probe (the same as
// `tsibox doctor`) decide, once per process.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { probeRing0, type Ring0Probe } from './ring0-probe.js';
import { cacheRoot } from '../guest/build.js';

export type EngineName = 'kvm' | 'qemu';
export type EngineChoice = EngineName | 'auto';

export interface EngineDecision {
  engine: EngineName;
  /** Why (one human line). */
  reason: string;
  probe: Ring0Probe | null;
}

let cached: Promise<{ probe: Ring0Probe | null; error: string | null }> | undefined;

/**
 * The ring-0 probe, run once per process (and remembered per host boot in the cache
 * directory, since the answer only changes with the host); null, with a reason, when
 * KVM is unusable. TSIBOX_NO_PROBE_CACHE=1 ignores the file.
 */
export function ring0ProbeOnce(): Promise<{ probe: Ring0Probe | null; error: string | null }> {
  cached ??= (async () => {
    if (!existsSync('/dev/kvm')) return { probe: null, error: '/dev/kvm does not exist' };
    const file = probeCacheFile();
    if (file !== null && process.env['TSIBOX_NO_PROBE_CACHE'] !== '1') {
      try {
        return { probe: JSON.parse(readFileSync(file, 'utf8')) as Ring0Probe, error: null };
      } catch {
        // not cached yet
      }
    }
    try {
      const probe = await probeRing0();
      if (file !== null) {
        try {
          mkdirSync(join(file, '..'), { recursive: true });
          writeFileSync(file, JSON.stringify(probe));
        } catch {
          // a read-only cache only costs the probe next time
        }
      }
      return { probe, error: null };
    } catch (err) {
      return { probe: null, error: (err as Error).message };
    }
  })();
  return cached;
}

function probeCacheFile(): string | null {
  try {
    const boot = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    return join(cacheRoot(), 'probe', `ring0-${boot}.json`);
  } catch {
    return null;
  }
}

/** What backs /dev/kvm, from /sys/module (no timing involved). */
export type KvmKind =
  | { kind: 'hardware'; module: 'kvm_intel' | 'kvm_amd' }
  | { kind: 'pvm' }
  | { kind: 'absent' }
  | { kind: 'unknown' };

export function kvmKind(sysModule = '/sys/module', dev = '/dev/kvm'): KvmKind {
  if (!existsSync(dev)) return { kind: 'absent' };
  // PVM first: a PVM host may also have kvm_intel/kvm_amd loaded for its own guests' sake.
  if (existsSync(join(sysModule, 'kvm_pvm'))) return { kind: 'pvm' };
  for (const module of ['kvm_intel', 'kvm_amd'] as const) if (existsSync(join(sysModule, module))) return { kind: 'hardware', module };
  return { kind: 'unknown' };
}

export async function chooseEngine(choice: EngineChoice): Promise<EngineDecision> {
  if (choice === 'qemu') return { engine: 'qemu', reason: 'engine qemu was asked for', probe: null };
  const k = kvmKind();
  if (choice === 'kvm') return { engine: 'kvm', reason: `engine kvm was asked for (${describeKind(k)})`, probe: null };
  if (k.kind === 'absent') return { engine: 'qemu', reason: 'KVM is not usable (/dev/kvm does not exist)', probe: null };
  if (k.kind === 'pvm') return { engine: 'qemu', reason: 'KVM is kvm_pvm here: guest ring 0 is emulated, so Linux cannot boot under it', probe: null };
  if (k.kind === 'hardware') return { engine: 'kvm', reason: `KVM is ${k.module}: guest ring 0 runs natively`, probe: null };
  const { probe, error } = await ring0ProbeOnce();
  if (probe === null) return { engine: 'qemu', reason: `KVM is not usable (${error})`, probe };
  const ratio = probe.ratio.toFixed(1);
  return probe.native
    ? { engine: 'kvm', reason: `KVM runs guest ring 0 natively (CPL0/CPL3 cost ratio ${ratio})`, probe }
    : { engine: 'qemu', reason: `KVM emulates guest ring 0 here (CPL0 is ${ratio}x slower than CPL3), so Linux cannot boot under it`, probe };
}

export function describeKind(k: KvmKind): string {
  switch (k.kind) {
    case 'hardware': return `KVM is ${k.module}, ring 0 native`;
    case 'pvm': return 'KVM is kvm_pvm, ring 0 emulated';
    case 'absent': return 'no /dev/kvm';
    default: return 'KVM module unknown';
  }
}

/** QEMU's accelerator: KVM only where ring 0 is native (the module, else the probe). */
export async function qemuAccel(): Promise<'kvm' | 'tcg'> {
  const k = kvmKind();
  if (k.kind === 'hardware') return 'kvm';
  if (k.kind !== 'unknown') return 'tcg';
  const { probe } = await ring0ProbeOnce();
  return probe?.native === true ? 'kvm' : 'tcg';
}
