// `tsibox bench virtqueue`, software half: requests per second through a device
// (null or rng) driven by the software driver over the real MMIO transport, against
// a tight C loop doing the same ring walk (native/bench/ringwalk.c, built on demand).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TsiboxError } from '../errors.js';
import { RngDevice } from './rng.js';
import { createHarness } from './testing/harness.js';
import { NullDevice } from './testing/null-device.js';

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
    const round = (): void => {
      for (let b = 0; b < batch; b++) q.add([], lens);
      q.kick();
      requests += q.reapCount();
    };
    // Warm up the JIT before timing.
    for (let i = 0; i < 20000; i++) round();
    requests = 0;
    const start = performance.now();
    const end = start + durationMs;
    let now = start;
    while (now < end) {
      for (let i = 0; i < 1000; i++) round();
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

/** Runs the C baseline, compiling it into the temp directory first if needed. */
export function runRingwalk(seconds: number, batch: number, bytes: number, fillRandom: boolean): number {
  const bin = ringwalkBinary();
  const out = execFileSync(bin, [String(seconds), String(batch), String(bytes), fillRandom ? '1' : '0'], { encoding: 'utf8' });
  const rate = Number(out.trim());
  if (!Number.isFinite(rate) || rate <= 0) throw new TsiboxError('DEVICE_ERROR', `ringwalk printed ${JSON.stringify(out)}`);
  return rate;
}

function ringwalkBinary(): string {
  const source = fileURLToPath(new URL('../../../native/bench/ringwalk.c', import.meta.url));
  if (!existsSync(source)) throw new TsiboxError('NOT_SUPPORTED', `baseline source ${source} is missing`);
  // Keyed by the source's hash so an edited source is rebuilt.
  const tag = createHash('sha256').update(readFileSync(source)).digest('hex').slice(0, 12);
  const bin = join(tmpdir(), `tsibox-ringwalk-${tag}`);
  if (!existsSync(bin)) {
    try {
      execFileSync('gcc', ['-O2', '-o', bin, source], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (err) {
      throw new TsiboxError('NOT_SUPPORTED', 'cannot build the C baseline (is gcc installed?)', { cause: err });
    }
  }
  return bin;
}
