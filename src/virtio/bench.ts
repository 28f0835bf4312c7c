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
import { testGuestPath } from '../paths.js';
import { attachVirtioMmio } from '../vmm/virtio-mmio-attach.js';
import { loadSyntheticGuest } from '../vmm/synthetic.js';
import { Vm } from '../vmm/vm.js';
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

// ---- KVM half ----

export interface VirtqueueKvmBenchOptions {
  /**
   * signalled: the device raises its irqfd for every used buffer (the guest takes the
   * interrupt where KVM can deliver it to CPL3, and polls its used ring on nested
   * PVM, where it cannot); suppressed: VRING_AVAIL_F_NO_INTERRUPT, the guest polls.
   */
  interrupts?: 'signalled' | 'suppressed';
  /** Round trips in the measured run (a run of rounds/10 is subtracted). */
  rounds?: number;
  /** Measured runs; the median is reported. */
  runs?: number;
}

export interface VirtqueueKvmBenchResult {
  value: number;
  unit: 'req/s';
  baseline: number;
  baselineName: string;
  ratio: number;
  interrupts: 'signalled' | 'suppressed';
  /** Whether the guest waited for interrupts (false: it polled the used ring). */
  guestTookInterrupts: boolean;
  rounds: number;
  runs: number;
  /** irqfd signals in the last measured run. */
  irqfdSignals: number;
  /** ioeventfd wake-ups in the last measured run. */
  kicks: number;
  /** MMIO exits to user space in the last measured run (register set-up only). */
  mmioExits: number;
  samples: number[];
  method: string;
}

const GUEST_DEVICE_INDEX = 2;
const PARAM_IRQ_MODE = 1n << 32n;
const PARAM_SUPPRESS = 1n << 33n;

/** Nested PVM cannot deliver interrupts to a CPL3 guest (native/testguest/virtio.h). */
export function kvmCanInterruptCpl3(): boolean {
  return !existsSync('/sys/module/kvm_pvm');
}

interface KvmRun { ns: number; irqfdSignals: number; kicks: number; mmioExits: number }

async function runRngGuest(rounds: number, param: bigint): Promise<KvmRun> {
  const vm = Vm.create({ memoryMiB: 16 });
  try {
    const a = attachVirtioMmio(vm, new RngDevice({ queueSize: 16 }), { index: GUEST_DEVICE_INDEX, name: 'virtio-rng' });
    loadSyntheticGuest(vm, testGuestPath('virtio-rng-bench'), { param: param | BigInt(rounds) });
    const t0 = process.hrtime.bigint();
    const exit = await vm.run({ timeoutMs: 120_000 });
    const ns = Number(process.hrtime.bigint() - t0);
    if (exit.reason !== 'exit' || exit.code !== 0) {
      throw new TsiboxError('VM_ERROR', `virtio-rng-bench (${rounds} rounds) ended with ${exit.reason}${exit.code === undefined ? '' : ` code 0x${exit.code.toString(16)}`}${exit.detail ? `: ${exit.detail}` : ''}`);
    }
    return { ns, irqfdSignals: a.interrupts, kicks: Number(a.notifications), mmioExits: exit.stats.reduce((n, s) => n + s.mmioExits, 0) };
  } finally {
    await vm.close();
  }
}

/**
 * Requests per second through virtio-rng driven by a synthetic KVM guest
 * (native/testguest/virtio-rng-bench.c): one 64-byte request per round trip, kicked
 * through an ioeventfd, completed on the main thread, signalled through an irqfd.
 * Per-request time = (t(rounds) - median t(rounds/10)) / (rounds - rounds/10), so VM
 * creation and thread start-up cancel out. Baseline: the C ring walk
 * (native/bench/ringwalk.c, batch 1, 64 bytes, random fill) — the same device work
 * with no VM, no thread hop and no notification.
 */
export async function benchVirtqueueKvm(opts: VirtqueueKvmBenchOptions = {}): Promise<VirtqueueKvmBenchResult> {
  const interrupts = opts.interrupts ?? 'signalled';
  const rounds = opts.rounds ?? 20_000;
  const runs = opts.runs ?? 3;
  if (!Number.isInteger(rounds) || rounds < 100 || rounds > 0xffff_ffff) throw new TsiboxError('INVALID_ARGUMENT', 'rounds must be 100..2^32-1');
  if (!Number.isInteger(runs) || runs < 1) throw new TsiboxError('INVALID_ARGUMENT', 'runs must be >= 1');
  if (!existsSync(testGuestPath('virtio-rng-bench'))) throw new TsiboxError('NOT_SUPPORTED', 'native/build/testguest/virtio-rng-bench.bin is missing (make -C native)');
  const guestTookInterrupts = interrupts === 'signalled' && kvmCanInterruptCpl3();
  const param = interrupts === 'suppressed' ? PARAM_SUPPRESS : guestTookInterrupts ? PARAM_IRQ_MODE : 0n;
  const small = Math.max(10, Math.floor(rounds / 10));
  await runRngGuest(small, param); // warm-up (JIT, page cache)
  const smalls: number[] = [];
  for (let r = 0; r < runs; r++) smalls.push((await runRngGuest(small, param)).ns);
  const fixed = medianOf(smalls);
  const samples: number[] = [];
  let last: KvmRun | null = null;
  for (let r = 0; r < runs; r++) {
    last = await runRngGuest(rounds, param);
    samples.push(1e9 * (rounds - small) / Math.max(1, last.ns - fixed));
  }
  const value = medianOf(samples);
  const baseline = runRingwalk(0.5, 1, 64, true);
  return {
    value, unit: 'req/s', baseline, baselineName: 'C ring walk (native/bench/ringwalk.c, rng, batch 1, 64 B)', ratio: value / baseline,
    interrupts, guestTookInterrupts, rounds, runs,
    irqfdSignals: last!.irqfdSignals, kicks: last!.kicks, mmioExits: last!.mmioExits,
    samples,
    method: `median over ${runs} runs of (rounds - ${small}) / (t(${rounds}) - median t(${small})); guest ${guestTookInterrupts ? 'takes the irqfd interrupt' : 'polls the used ring'}`,
  };
}

function medianOf(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
