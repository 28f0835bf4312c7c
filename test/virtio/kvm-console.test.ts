// The virtio-console device driven for real by a synthetic KVM guest
// (native/testguest/virtio-console.c): register set-up through MMIO exits, kicks
// through ioeventfds (no exit), interrupts through an irqfd into the guest's IDT.
import t from 'tap';
import { existsSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { Vm, type VmExit } from '../../src/vmm/vm.js';
import { loadSyntheticGuest } from '../../src/vmm/synthetic.js';
import { testGuestPath } from '../../src/paths.js';
import { attachVirtioMmio, VIRTIO_MMIO_BASE } from '../../src/vmm/virtio-mmio-attach.js';
import { ConsoleDevice } from '../../src/virtio/console/index.js';
import { RngDevice } from '../../src/virtio/rng.js';
import { benchVirtqueueKvm } from '../../src/bench/virtqueue-kvm.js';

const GREETING = 'hello from the virtio-console guest\n';
const MAILBOX = 0x3000;
/** Register accesses the guest makes during set-up (negotiation, two queues, ISR). */
const SETUP_MMIO_EXITS_MAX = 64;

/**
 * Nested PVM (kvm_pvm) cannot deliver an interrupt to a CPL3 synthetic guest (see
 * native/testguest/virtio.h): there the guest polls its used rings and the test
 * checks that the irqfd interrupt reached the LAPIC (pending in IRR) instead.
 */
const PVM = existsSync('/sys/module/kvm_pvm');
const IRQ_MODE = 1n << 32n;
const VECTOR = 0x30;

/** Whether `vector` is pending (IRR) or in service (ISR) in vCPU 0's LAPIC. */
function lapicHas(vm: Vm, vector: number): { irr: boolean; isr: boolean } {
  const lapic = vm.vcpus[0]!.getLapic();
  const bit = (base: number): boolean => ((lapic.readUInt32LE(base + (vector >> 5) * 0x10) >>> (vector & 31)) & 1) === 1;
  return { irr: bit(0x200), isr: bit(0x100) };
}

const skip = !existsSync('/dev/kvm') ? 'no /dev/kvm'
  : !existsSync(testGuestPath('virtio-console')) ? 'guests not built (make -C native)' : false;

function pattern(n: number, from = 0): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = ((from + i) * 31 + 7) & 0xff;
  return b;
}

interface ConsoleRun {
  exit: VmExit;
  output: Buffer;
  irqs: number;
  spurious: number;
  received: number;
  hostInterrupts: number;
  notifications: bigint;
  phaseAfterClose: string;
  pending: { irr: boolean; isr: boolean };
}

async function runConsoleGuest(bytes: number, sendChunks = 1): Promise<ConsoleRun> {
  const vm = Vm.create({ memoryMiB: 16, serial: new PassThrough() });
  const dev = new ConsoleDevice();
  const port = dev.ports[0]!;
  const chunks: Buffer[] = [];
  let sent = false;
  const out = (): Buffer => Buffer.concat(chunks);
  port.output.on('data', (b: Buffer) => {
    chunks.push(b);
    // Once the greeting is in, send the pattern (in pieces, to exercise reposting).
    if (!sent && out().length >= GREETING.length) {
      sent = true;
      const data = pattern(bytes);
      const step = Math.ceil(bytes / sendChunks);
      for (let at = 0; at < bytes; at += step) port.input.write(data.subarray(at, at + step));
    }
  });
  try {
    const a = attachVirtioMmio(vm, dev, { index: 2, name: 'virtio-console' });
    loadSyntheticGuest(vm, testGuestPath('virtio-console'), { param: BigInt(bytes) | (PVM ? 0n : IRQ_MODE) });
    const exit = await vm.run({ timeoutMs: 20_000 });
    await new Promise((r) => setImmediate(r));
    const run = {
      exit,
      output: out(),
      irqs: Number(vm.memory.readU64(MAILBOX)),
      spurious: Number(vm.memory.readU64(MAILBOX + 8)),
      received: Number(vm.memory.readU64(MAILBOX + 0x10)),
      hostInterrupts: a.interrupts,
      notifications: a.notifications,
      pending: lapicHas(vm, VECTOR),
    };
    await vm.close();
    return { ...run, phaseAfterClose: a.transport.phase };
  } finally {
    await vm.close();
  }
}

t.test('virtio-console over KVM: guest → host, host → guest, interrupts, no notify exits', { skip }, async (t) => {
  const bytes = 1000; // > 8 receive buffers of 64 bytes: the guest must repost
  const r = await runConsoleGuest(bytes, 4);
  t.same({ reason: r.exit.reason, code: r.exit.code }, { reason: 'exit', code: 0 },
    `guest exit (detail: ${r.exit.detail ?? '-'}, guest saw ${r.received} bytes, ${r.irqs} interrupts)`);
  t.equal(r.output.subarray(0, GREETING.length).toString(), GREETING, 'the guest greeting arrives on port 0');
  t.equal(r.received, bytes, 'the guest received and checked every host byte');
  t.ok(r.output.subarray(GREETING.length).equals(pattern(bytes)), 'the guest echoed the host bytes back unchanged');
  t.ok(r.hostInterrupts > 0, `the device raised its irqfd (${r.hostInterrupts} times)`);
  if (PVM) {
    t.equal(r.irqs, 0, 'nested PVM: the guest polled, no interrupt was taken');
    t.ok(r.pending.irr, `nested PVM: vector 0x${VECTOR.toString(16)} is pending in the LAPIC IRR (irqfd → IOAPIC pin → LAPIC works)`);
  } else {
    t.ok(r.irqs > 0, `interrupts reached the guest's handler (${r.irqs})`);
    t.ok(r.irqs <= r.hostInterrupts, `no more guest interrupts (${r.irqs}) than irqfd signals (${r.hostInterrupts})`);
  }
  t.equal(r.spurious, 0, 'no spurious interrupts');
  t.ok(r.notifications > 2n, `kicks arrived through the ioeventfds (${r.notifications})`);
  const mmioExits = r.exit.stats.reduce((s, v) => s + v.mmioExits, 0);
  t.ok(mmioExits <= SETUP_MMIO_EXITS_MAX, `MMIO exits (${mmioExits}) are register set-up only, not kicks`);
  t.equal(r.phaseAfterClose, 'reset', 'vm.close() reset the transport before unmapping memory');
});

t.test('virtio-rng bench guest: round trips, interrupts raised and suppressed', { skip }, async (t) => {
  const modes = [{ name: 'signalled', bits: PVM ? 0n : IRQ_MODE }, { name: 'suppressed', bits: 1n << 33n }];
  for (const mode of modes) {
    const rounds = 500;
    const vm = Vm.create({ memoryMiB: 16 });
    try {
      const dev = new RngDevice({ queueSize: 16 });
      const a = attachVirtioMmio(vm, dev, { index: 2 });
      t.equal(a.base, VIRTIO_MMIO_BASE + 0x2000);
      t.equal(a.gsi, 7);
      loadSyntheticGuest(vm, testGuestPath('virtio-rng-bench'), { param: mode.bits | BigInt(rounds) });
      const exit = await vm.run({ timeoutMs: 20_000 });
      t.same({ reason: exit.reason, code: exit.code }, { reason: 'exit', code: 0 }, `${mode.name}: guest exit (${exit.detail ?? '-'})`);
      t.equal(Number(vm.memory.readU64(MAILBOX + 0x10)), rounds, 'every round completed');
      t.equal(dev.bytesServed, rounds * 64);
      t.equal(a.notifications, BigInt(rounds), 'one ioeventfd kick per round');
      const irqs = Number(vm.memory.readU64(MAILBOX));
      if (mode.name === 'suppressed') {
        t.equal(a.interrupts, 0, 'suppressed: the device never signalled its irqfd');
        t.equal(irqs, 0);
      } else {
        // The guest can post the next request before the device finishes the current
        // queueNotify pass, which then completes both with one interrupt.
        t.ok(a.interrupts > 0 && a.interrupts <= rounds, `irqfd signalled (${a.interrupts} times for ${rounds} rounds)`);
        if (PVM) t.ok(lapicHas(vm, VECTOR).irr, 'nested PVM: the vector is pending in the LAPIC');
        else t.ok(irqs > 0 && irqs <= a.interrupts, `guest took ${irqs} interrupts`);
      }
      t.ok(exit.stats[0]!.mmioExits <= SETUP_MMIO_EXITS_MAX, `MMIO exits: ${exit.stats[0]!.mmioExits}`);
    } finally {
      await vm.close();
    }
  }
});

t.test('benchVirtqueueKvm reports req/s against the C ring walk', { skip }, async (t) => {
  const r = await benchVirtqueueKvm({ rounds: 500, runs: 1 });
  t.ok(r.value > 0 && Number.isFinite(r.value), `${Math.round(r.value)} req/s`);
  t.ok(r.baseline > 0);
  t.equal(r.kicks, 500);
  t.equal(r.guestTookInterrupts, !PVM);
});
