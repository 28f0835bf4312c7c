// `tsibox bench virtqueue`, KVM half: requests per second through virtio-rng driven by a
// synthetic KVM guest (native/testguest/virtio-rng-bench.c) kicking through an
// ioeventfd and completed through an irqfd, against the C ring walk (./ringwalk.ts).
import { existsSync } from 'node:fs';
import { TsiboxError } from '../errors.js';
import { testGuestPath } from '../paths.js';
import { attachVirtioMmio } from '../vmm/virtio-mmio-attach.js';
import { loadSyntheticGuest } from '../vmm/synthetic.js';
import { Vm } from '../vmm/vm.js';
import { RngDevice } from '../virtio/rng.js';
import { runRingwalk } from './ringwalk.js';

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
