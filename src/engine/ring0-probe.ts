// Does KVM run guest ring-0 code natively? Times the `loop` synthetic guest (exactly
// `dec rcx; jnz`) at CPL0 and at CPL3 through our own engine. Each level runs twice,
// with N and 2N iterations; the difference is N iterations of pure guest code, with
// VM start-up, exits and thread join cancelled out. N grows until that difference is
// long enough to stand above timing noise. On nested PVM (ring 0 emulated) CPL0 costs
// ~1.2 µs per iteration against ~0.3 ns at CPL3; on real hardware both are ~0.3 ns.
import { timeGuestRun } from '../vmm/synthetic-run.js';
import { ensureNativeFiles } from '../vmm/native-build.js';
import { testGuestPath } from '../paths.js';

export interface Ring0Probe {
  cpl0NsPerIter: number;
  cpl3NsPerIter: number;
  /** cpl0NsPerIter / cpl3NsPerIter. */
  ratio: number;
  /** True when the ratio is below NATIVE_RATIO_LIMIT. */
  native: boolean;
  /** The N each level was measured with. */
  cpl0Iterations: number;
  cpl3Iterations: number;
  /** Wall time the probe took. */
  elapsedMs: number;
}

export interface Ring0ProbeOptions {
  /** How long the N-iteration difference must last to be trusted (default 15 ms). */
  targetMs?: number;
}

/** CPL0 slower than CPL3 by this factor or more means ring 0 is emulated. */
export const NATIVE_RATIO_LIMIT = 10;
const GUEST = 'loop';
const MAX_ITERATIONS = 2 ** 40;

async function nsPerIteration(cpl: 0 | 3, start: number, targetNs: number): Promise<{ ns: number; n: number }> {
  let n = start;
  for (;;) {
    const t1 = await timeGuestRun(GUEST, { cpl, param: n, memoryMiB: 4 });
    const t2 = await timeGuestRun(GUEST, { cpl, param: 2 * n, memoryMiB: 4 });
    const d = t2 - t1;
    if (d >= targetNs || n >= MAX_ITERATIONS) return { ns: Math.max(d, 0) / n, n };
    // Too short to trust: scale N so the next difference lands near twice the target
    // (at least 4x, at most 1024x: a noisy negative d must not make N explode).
    const factor = d <= 0 ? 64 : Math.min(1024, Math.max(4, Math.ceil((2 * targetNs) / d)));
    n = Math.min(MAX_ITERATIONS, n * factor);
  }
}

export async function probeRing0(opts: Ring0ProbeOptions = {}): Promise<Ring0Probe> {
  await ensureNativeFiles([testGuestPath(GUEST)]);
  const target = (opts.targetMs ?? 15) * 1e6;
  const t0 = performance.now();
  // Starting points sized for the slow case here (CPL0 ~1.2 µs) and native CPL3.
  const cpl0 = await nsPerIteration(0, 16_384, target);
  const cpl3 = await nsPerIteration(3, 64 * 2 ** 20, target);
  const cpl3Ns = Math.max(cpl3.ns, 0.01);
  const ratio = cpl0.ns / cpl3Ns;
  return {
    cpl0NsPerIter: cpl0.ns,
    cpl3NsPerIter: cpl3Ns,
    ratio,
    native: ratio < NATIVE_RATIO_LIMIT,
    cpl0Iterations: cpl0.n,
    cpl3Iterations: cpl3.n,
    elapsedMs: performance.now() - t0,
  };
}
