// bench exits: one PIO exit round trip (guest `out` to the null port 0x508, handled in
// the vCPU thread, back into the guest) through our engine, against cvmm doing the
// same on the same machine in the same invocation.
//
// Our number: a whole `vm.run()` of N exits minus one of n0 exits, divided by N - n0.
// The subtraction removes everything that does not depend on the exit count (worker
// start-up, first entry, thread join). cvmm times from its first KVM_RUN to the last
// exit, which likewise leaves its VM setup out.
import type { BenchDefinition, BenchResult } from './registry.js';
import { timeGuestRun } from './guest-run.js';
import { ensureNativeBuilt, runCvmm } from './native.js';
import { machineInfo } from './machine.js';
import { median, round } from './stats.js';

const GUEST = 'bench-exits';

export function smallCount(n: number): number {
  return Math.max(1, Math.floor(Math.min(100, n / 10)));
}

export const exitsBench: BenchDefinition = {
  name: 'exits',
  summary: 'PIO exit round trip (guest out → vCPU thread → guest), ours vs the C baseline',
  defaultIterations: 20_000,
  defaultRuns: 5,
  async run({ iterations, runs, cpl = 3, progress }): Promise<BenchResult[]> {
    await ensureNativeBuilt([GUEST], true);
    const n0 = smallCount(iterations);
    const ours: number[] = [];
    const theirs: number[] = [];
    // The fixed cost (a run with n0 iterations) is measured as often as the big run and
    // its median is subtracted from each big run: spawning a worker varies by ms.
    const smalls: number[] = [];
    for (let r = 0; r < runs; r++) smalls.push(await timeGuestRun(GUEST, { cpl, param: n0 }));
    const small = median(smalls);
    for (let r = 0; r < runs; r++) {
      const big = await timeGuestRun(GUEST, { cpl, param: iterations });
      ours.push((big - small) / (iterations - n0));
      const c = await runCvmm(GUEST, 'exits', { cpl, param: iterations });
      theirs.push(Number(c.ns_per_exit));
      progress?.(`exits run ${r + 1}/${runs}: ours ${round(ours[r]!)} ns, C ${round(theirs[r]!)} ns`);
    }
    const value = median(ours);
    const baseline = median(theirs);
    return [{
      bench: 'exits',
      value: round(value),
      unit: 'ns/exit',
      baseline: round(baseline),
      ratio: round(value / baseline, 3),
      lowerIsBetter: true,
      iterations,
      runs,
      cpl,
      samples: ours.map((v) => round(v)),
      baselineSamples: theirs.map((v) => round(v)),
      fixedCostMs: round(small / 1e6, 2),
      method: `median over runs of (t(${iterations}) - median t(${n0})) / ${iterations - n0}; baseline: cvmm exits`,
      machine: machineInfo(),
    }];
  },
};
