// bench virtqueue: requests per second through virtio-rng, (1) driven by the software
// driver over the real MMIO transport (no VM), and (2) driven by a synthetic KVM guest
// (native/testguest/virtio-rng-bench.c) kicking through an ioeventfd and completed
// through an irqfd, with interrupts signalled and suppressed. Every row's baseline is
// the C ring walk (native/bench/ringwalk.c) doing the same device work. The software
// driver is a test double, so its row comes from the test tree
// (test/support/bench/virtqueue.ts) and only where that exists (a source checkout);
// the KVM rows are ./virtqueue-kvm.ts and run anywhere.
import type { BenchDefinition, BenchResult } from './registry.js';
import { machineInfo } from './machine.js';
import { ensureNativeBuilt } from './native.js';
import { round } from './stats.js';
import { hasTestTree, loadTestTreeBench } from './test-tree.js';
import { benchVirtqueueKvm } from './virtqueue-kvm.js';

interface SoftwareBody { softwareRows: BenchDefinition['run'] }

export const virtqueueBench: BenchDefinition = {
  name: 'virtqueue',
  summary: 'virtio-rng requests/s: software driver (source checkout), and a KVM guest via ioeventfd + irqfd, vs a C ring walk',
  defaultIterations: 20_000,
  defaultRuns: 3,
  async run(opts) {
    const { iterations, runs, progress } = opts;
    await ensureNativeBuilt(['virtio-rng-bench']);
    const rows: BenchResult[] = [];
    if (hasTestTree('virtqueue')) {
      rows.push(...await (await loadTestTreeBench<SoftwareBody>('virtqueue', 'virtqueue')).softwareRows(opts));
    } else {
      progress?.('virtqueue software row skipped: the software driver is in the test tree, which an installed package does not have');
    }
    for (const interrupts of ['signalled', 'suppressed'] as const) {
      const k = await benchVirtqueueKvm({ interrupts, rounds: iterations, runs });
      progress?.(`virtqueue kvm (${interrupts}): ${round(k.value)} req/s, C ${round(k.baseline)} req/s`);
      rows.push({
        bench: 'virtqueue', variant: `kvm-${interrupts}`, value: round(k.value), unit: 'req/s', baseline: round(k.baseline),
        ratio: round(k.ratio, 4), baselineName: k.baselineName, lowerIsBetter: false, iterations, runs,
        device: 'rng', bytes: 64, guestTookInterrupts: k.guestTookInterrupts, irqfdSignals: k.irqfdSignals,
        kicks: k.kicks, mmioExits: k.mmioExits, samples: k.samples.map((v) => round(v)), method: k.method,
        machine: machineInfo(),
      });
    }
    return rows;
  },
};
