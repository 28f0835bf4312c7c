// bench exits: one PIO exit round trip (guest `out` to the null port 0x508, handled in
// the vCPU thread, back into the guest) through our engine, against cvmm doing the
// same on the same machine in the same invocation.
//
// Our number: a whole `vm.run()` of N exits minus one of n0 exits, divided by N - n0.
// The subtraction removes everything that does not depend on the exit count (worker
// start-up, first entry, thread join). cvmm times from its first KVM_RUN to the last
// exit, which likewise leaves its VM setup out.
import type { BenchDefinition, BenchResult } from './registry.js';
import { versusCvmm } from './versus-cvmm.js';

export const exitsBench: BenchDefinition = {
  name: 'exits',
  summary: 'PIO exit round trip (guest out → vCPU thread → guest), ours vs the C baseline',
  defaultIterations: 20_000,
  defaultRuns: 5,
  async run({ iterations, runs, cpl = 3, progress }): Promise<BenchResult[]> {
    return [await versusCvmm({
      bench: 'exits', guest: 'bench-exits', cvmmMode: 'exits', cvmmField: 'ns_per_exit', unit: 'ns/exit',
      iterations, runs, cpl, ...(progress ? { progress } : {}),
    })];
  },
};
