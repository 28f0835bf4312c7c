// bench ioeventfd: guest MMIO write to 0xd0001000 → KVM signals an eventfd (no exit to
// user space) → our main-thread callback stores the running count in the mailbox u64
// at 0x3000 → the spinning guest sees it and writes the next sequence number. One
// line of the result is that full round trip; the baseline is cvmm's ioeventfd mode
// (a C thread blocking in read(eventfd)). Same subtraction method as bench exits.
import type { BenchDefinition, BenchResult } from './registry.js';
import { timeGuestRun } from './guest-run.js';
import { ensureNativeBuilt, runCvmm } from './native.js';
import { machineInfo } from './machine.js';
import { median, round } from './stats.js';
import { smallCount } from './exits.js';
import type { Vm } from '../vmm/vm.js';

const GUEST = 'bench-ioeventfd';
const IOEVENTFD_ADDRESS = 0xd000_1000;
const MAILBOX = 0x3000;

function ackDevice(vm: Vm): void {
  let total = 0n;
  vm.addIoEventFd({ address: IOEVENTFD_ADDRESS, length: 4, pio: false }, (count) => {
    total += count;
    vm.memory.writeU64(MAILBOX, total);
  });
}

export const ioeventfdBench: BenchDefinition = {
  name: 'ioeventfd',
  summary: 'guest write → ioeventfd → main-thread callback → guest sees the ack, ours vs C',
  defaultIterations: 10_000,
  defaultRuns: 5,
  async run({ iterations, runs, cpl = 3, progress }): Promise<BenchResult[]> {
    await ensureNativeBuilt([GUEST], true);
    const n0 = smallCount(iterations);
    const ours: number[] = [];
    const theirs: number[] = [];
    // The fixed cost (a run with n0 iterations) is measured as often as the big run and
    // its median is subtracted from each big run: spawning a worker varies by ms.
    const smalls: number[] = [];
    for (let r = 0; r < runs; r++) smalls.push(await timeGuestRun(GUEST, { cpl, param: n0, setup: ackDevice }));
    const small = median(smalls);
    for (let r = 0; r < runs; r++) {
      const big = await timeGuestRun(GUEST, { cpl, param: iterations, setup: ackDevice });
      ours.push((big - small) / (iterations - n0));
      const c = await runCvmm(GUEST, 'ioeventfd', { cpl, param: iterations });
      theirs.push(Number(c.ns_per_roundtrip));
      progress?.(`ioeventfd run ${r + 1}/${runs}: ours ${round(ours[r]!)} ns, C ${round(theirs[r]!)} ns`);
    }
    const value = median(ours);
    const baseline = median(theirs);
    return [{
      bench: 'ioeventfd',
      value: round(value),
      unit: 'ns/roundtrip',
      baseline: round(baseline),
      ratio: round(value / baseline, 3),
      lowerIsBetter: true,
      iterations,
      runs,
      cpl,
      samples: ours.map((v) => round(v)),
      baselineSamples: theirs.map((v) => round(v)),
      fixedCostMs: round(small / 1e6, 2),
      method: `median over runs of (t(${iterations}) - median t(${n0})) / ${iterations - n0}; baseline: cvmm ioeventfd`,
      machine: machineInfo(),
    }];
  },
};
