// The measurement both engine-path benches share: a synthetic guest through our engine
// (whole run of N iterations minus the median run of n0, per iteration) against cvmm
// running the same guest in the same mode, alternating, medians over `runs`.
import type { BenchResult } from './registry.js';
import { timeGuestRun } from '../vmm/synthetic-run.js';
import { ensureNativeBuilt, runCvmm } from './native.js';
import { machineInfo } from './machine.js';
import { median, round } from './stats.js';
import type { Vm } from '../vmm/vm.js';

export interface VersusCvmmSpec {
  bench: string;
  guest: string;
  /** cvmm mode, and the field of its JSON line that holds ns per iteration. */
  cvmmMode: 'exits' | 'ioeventfd';
  cvmmField: string;
  unit: string;
  iterations: number;
  runs: number;
  cpl: 0 | 3;
  setup?: (vm: Vm) => void;
  progress?: (line: string) => void;
}

/** n0: the small run whose time is subtracted (fixed costs only). */
export function smallCount(n: number): number {
  return Math.max(1, Math.floor(Math.min(100, n / 10)));
}

export async function versusCvmm(spec: VersusCvmmSpec): Promise<BenchResult> {
  const { bench, guest, iterations, runs, cpl, setup } = spec;
  await ensureNativeBuilt([guest], true);
  const n0 = smallCount(iterations);
  const run = (param: number): Promise<number> => timeGuestRun(guest, { cpl, param, ...(setup ? { setup } : {}) });
  // The fixed cost is measured as often as the big run and its median subtracted from
  // each big run: spawning a worker varies by milliseconds.
  const smalls: number[] = [];
  for (let r = 0; r < runs; r++) smalls.push(await run(n0));
  const small = median(smalls);
  const ours: number[] = [];
  const theirs: number[] = [];
  for (let r = 0; r < runs; r++) {
    ours.push((await run(iterations) - small) / (iterations - n0));
    const c = await runCvmm(guest, spec.cvmmMode, { cpl, param: iterations });
    theirs.push(Number(c[spec.cvmmField]));
    spec.progress?.(`${bench} run ${r + 1}/${runs}: ours ${round(ours[r]!)} ns, C ${round(theirs[r]!)} ns`);
  }
  const value = median(ours);
  const baseline = median(theirs);
  return {
    bench,
    value: round(value),
    unit: spec.unit,
    baseline: round(baseline),
    ratio: round(value / baseline, 3),
    lowerIsBetter: true,
    iterations,
    runs,
    cpl,
    samples: ours.map((v) => round(v)),
    baselineSamples: theirs.map((v) => round(v)),
    fixedCostMs: round(small / 1e6, 2),
    method: `median over runs of (t(${iterations}) - median t(${n0})) / ${iterations - n0}; baseline: cvmm ${spec.cvmmMode}`,
    machine: machineInfo(),
  };
}
