// The software row of `tsibox bench virtqueue` (registered in src/bench/virtqueue.ts,
// loaded at run time from a source checkout): requests per second through virtio-rng
// driven by the software driver over the real MMIO transport (no VM;
// test/support/virtio/). Its baseline is the C ring walk (native/bench/ringwalk.c)
// doing the same device work.
import { TsiboxError } from '../../../src/errors.js';
import type { BenchDefinition, BenchResult } from '../../../src/bench/registry.js';
import { machineInfo } from '../../../src/bench/machine.js';
import { runRingwalk } from '../../../src/bench/ringwalk.js';
import { median, round } from '../../../src/bench/stats.js';
import { RngDevice } from '../../../src/virtio/rng.js';
import { createHarness } from '../virtio/harness.js';
import { NullDevice } from '../virtio/null-device.js';

/** The software row of `tsibox bench virtqueue` (the KVM rows are src/bench/virtqueue.ts's own). */
export const softwareRows: BenchDefinition['run'] = async ({ iterations, runs, progress }): Promise<BenchResult[]> => {
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
  return rows;
};

// ---- software half ----

export interface VirtqueueBenchOptions {
  /** null: completes requests untouched (the ring-walk floor); rng: fills them. */
  device?: 'null' | 'rng';
  /** Chains posted per kick (1 = one notification per request). */
  batch?: number;
  /** Writable bytes per request. */
  bytes?: number;
  /** How the driver kicks: a QueueNotify register write, or notify() as ioeventfd does. */
  kick?: 'register' | 'direct';
  durationMs?: number;
}

export interface VirtqueueBenchResult {
  value: number;
  unit: 'req/s';
  /** The C ring walk doing the same work, req/s. */
  baseline: number;
  baselineName: string;
  /** value / baseline. */
  ratio: number;
  device: 'null' | 'rng';
  batch: number;
  bytes: number;
  kick: 'register' | 'direct';
  requests: number;
  interrupts: number;
  seconds: number;
}

const QUEUE_SIZE = 256;

export async function benchVirtqueueSoftware(opts: VirtqueueBenchOptions = {}): Promise<VirtqueueBenchResult> {
  const device = opts.device ?? 'null';
  const batch = opts.batch ?? 1;
  const bytes = opts.bytes ?? 64;
  const kick = opts.kick ?? 'direct';
  const durationMs = opts.durationMs ?? 1000;
  if (!Number.isInteger(batch) || batch < 1 || batch > QUEUE_SIZE) throw new TsiboxError('INVALID_ARGUMENT', `batch must be 1..${QUEUE_SIZE}`);
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > 4096) throw new TsiboxError('INVALID_ARGUMENT', 'bytes must be 1..4096');

  const dev = device === 'rng' ? new RngDevice({ queueSize: QUEUE_SIZE }) : new NullDevice({ queueSize: QUEUE_SIZE });
  const h = createHarness(dev, { memorySize: 8 * 1024 * 1024, kick });
  let requests = 0;
  let seconds = 0;
  try {
    h.driver.negotiate();
    const q = h.driver.setupQueue(0, { slotSize: 4096 });
    h.driver.driverOk();
    const lens = [bytes];
    const step = (): void => {
      for (let b = 0; b < batch; b++) q.add([], lens);
      q.kick();
      requests += q.reapCount();
    };
    // Warm up the JIT before timing.
    for (let i = 0; i < 20000; i++) step();
    requests = 0;
    const start = performance.now();
    const end = start + durationMs;
    let now = start;
    while (now < end) {
      for (let i = 0; i < 1000; i++) step();
      now = performance.now();
    }
    seconds = (now - start) / 1000;
    if (h.transport.needsResetReason !== null) throw new TsiboxError('DEVICE_ERROR', `bench queue broke: ${h.transport.needsResetReason}`);
  } finally {
    h.close();
  }
  const value = requests / seconds;
  const baseline = runRingwalk(Math.max(0.2, durationMs / 1000), batch, bytes, device === 'rng');
  return {
    value, unit: 'req/s', baseline, baselineName: `C ring walk (native/bench/ringwalk.c, ${device})`, ratio: value / baseline,
    device, batch, bytes, kick, requests, interrupts: h.irq.count, seconds,
  };
}
