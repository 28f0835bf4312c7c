// bench virtqueue: requests per second through virtio-rng, (1) driven by the software
// driver over the real MMIO transport (no VM), and (2) driven by a synthetic KVM guest
// (native/testguest/virtio-rng-bench.c) kicking through an ioeventfd and completed
// through an irqfd, with interrupts signalled and suppressed. Every row's baseline is
// the C ring walk (native/bench/ringwalk.c) doing the same device work.
import type { BenchDefinition, BenchResult } from './registry.js';
import { ensureNativeBuilt } from './native.js';
import { machineInfo } from './machine.js';
import { median, round } from './stats.js';
import { benchVirtqueueKvm, benchVirtqueueSoftware } from '../virtio/bench.js';

export const virtqueueBench: BenchDefinition = {
  name: 'virtqueue',
  summary: 'virtio-rng requests/s: software driver, and a KVM guest via ioeventfd + irqfd, vs a C ring walk',
  defaultIterations: 20_000,
  defaultRuns: 3,
  async run({ iterations, runs, progress }): Promise<BenchResult[]> {
    await ensureNativeBuilt(['virtio-rng-bench']);
    const rows: BenchResult[] = [];
    const soft: number[] = [];
    const softBase: number[] = [];
    for (let r = 0; r < runs; r++) {
      const s = await benchVirtqueueSoftware({ device: 'rng', batch: 1, bytes: 64, durationMs: 500 });
      soft.push(s.value);
      softBase.push(s.baseline);
    }
    const sv = median(soft);
    const sb = median(softBase);
    progress?.(`virtqueue software: ${round(sv)} req/s, C ${round(sb)} req/s`);
    rows.push({
      bench: 'virtqueue', variant: 'software', value: round(sv), unit: 'req/s', baseline: round(sb), ratio: round(sv / sb, 3),
      baselineName: 'C ring walk (native/bench/ringwalk.c, rng, batch 1, 64 B)', lowerIsBetter: false,
      iterations, runs, device: 'rng', bytes: 64, samples: soft.map((v) => round(v)),
      method: 'software driver over MmioTransport, one request per notify() (ioeventfd path), 500 ms per run',
      machine: machineInfo(),
    });
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
