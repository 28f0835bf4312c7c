// Which engine runs a sandbox. 'auto' picks the in-process KVM engine when guest ring-0
// code runs natively (the same timed probe as `tsibox doctor`), QEMU otherwise. The
// probe runs at most once per process.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { probeRing0, type Ring0Probe } from '../doctor/ring0.js';
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

export async function chooseEngine(choice: EngineChoice): Promise<EngineDecision> {
  if (choice === 'qemu' || choice === 'kvm') return { engine: choice, reason: `engine ${choice} was asked for`, probe: null };
  const { probe, error } = await ring0ProbeOnce();
  if (probe === null) return { engine: 'qemu', reason: `KVM is not usable (${error})`, probe };
  const ratio = probe.ratio.toFixed(1);
  return probe.native
    ? { engine: 'kvm', reason: `KVM runs guest ring 0 natively (CPL0/CPL3 cost ratio ${ratio})`, probe }
    : { engine: 'qemu', reason: `KVM emulates guest ring 0 here (CPL0 is ${ratio}x slower than CPL3), so Linux cannot boot under it`, probe };
}

/** QEMU's accelerator: KVM only where the probe says ring 0 is native. */
export async function qemuAccel(): Promise<'kvm' | 'tcg'> {
  const { probe } = await ring0ProbeOnce();
  return probe?.native === true ? 'kvm' : 'tcg';
}
