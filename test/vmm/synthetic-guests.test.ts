// Real KVM guests (native/testguest) through the engine: port I/O, MMIO, several
// vCPUs, memory, ioeventfd, and guests that misbehave.
import t from 'tap';
import { runGuest, echoRegister } from '../helpers/guest.js';

t.test('hello: UART output reaches the serial stream, i8042 reset ends the VM', async (t) => {
  const r = await runGuest('hello');
  t.equal(r.serial, 'Hello from tsibox guest\n');
  t.equal(r.exit.reason, 'reset');
  t.ok(r.exit.stats[0]!.pioExits >= 24, 'one exit per UART byte plus the reset');
  t.equal(r.exit.stats[0]!.busRoundTrips, 0, 'UART and i8042 are handled in the vCPU thread');
});

t.test('pio-echo: port writes and reads go through the main-thread bus', async (t) => {
  const reg = echoRegister();
  const r = await runGuest('pio-echo', { setup: (vm) => vm.pio.register(0x510, 4, 'echo', reg) });
  t.same({ reason: r.exit.reason, code: r.exit.code }, { reason: 'exit', code: 0 });
  t.equal(reg.writes, 64);
});

t.test('pio-echo notices a device that reads back wrong values', async (t) => {
  const reg = echoRegister((v) => v ^ 1);
  const r = await runGuest('pio-echo', { setup: (vm) => vm.pio.register(0x510, 4, 'echo', reg) });
  t.same({ reason: r.exit.reason, code: r.exit.code }, { reason: 'exit', code: 0x100 }, 'fails on the first value');
});

t.test('mmio-echo: MMIO exits go through the MMIO bus', async (t) => {
  const reg = echoRegister();
  const r = await runGuest('mmio-echo', { setup: (vm) => vm.mmio.register(0xd000_0000, 4, 'echo', reg) });
  t.same({ reason: r.exit.reason, code: r.exit.code }, { reason: 'exit', code: 0 });
  t.equal(reg.writes, 64);
  t.equal(r.exit.stats[0]!.mmioExits, 128);
});

t.test('multi-vcpu: every vCPU runs and reports its own index once', async (t) => {
  const ids: number[] = [];
  const r = await runGuest('multi-vcpu', {
    vcpus: 4,
    setup: (vm) => vm.pio.register(0x514, 4, 'ids', { read(_o, d) { d.fill(0); }, write(_o, d) { ids.push(d[0]!); } }),
  });
  t.equal(r.exit.reason, 'halted', 'all vCPUs parked');
  t.same([...ids].sort(), [0, 1, 2, 3]);
  t.equal(r.exit.stats.length, 4);
});

t.test('memory-pattern: what the guest wrote is what the host reads', async (t) => {
  const size = 1 << 20;
  let mismatches = -1;
  const r = await runGuest('memory-pattern', {
    param: size,
    inspect: (vm) => {
      mismatches = 0;
      for (let a = 0x200000; a < 0x200000 + size; a += 4) {
        const want = (Math.imul(a, 2654435761) ^ 0xa5a5a5a5) >>> 0;
        if (vm.memory.readU32(a) !== want) mismatches++;
      }
      t.equal(vm.memory.readU32(0x200000 + size), 0, 'nothing written past the range');
    },
  });
  t.same({ reason: r.exit.reason, code: r.exit.code }, { reason: 'exit', code: 0 });
  t.equal(mismatches, 0);
});

t.test('ioeventfd: guest writes reach a main-thread callback without an exit', async (t) => {
  const rounds = 200;
  let callbacks = 0;
  let signals = 0n;
  const r = await runGuest('bench-ioeventfd', {
    param: rounds,
    setup: (vm) => {
      vm.addIoEventFd({ address: 0xd000_1000, length: 4, pio: false }, (n) => {
        callbacks++;
        signals += n;
        vm.memory.writeU64(0x3000, signals); // ack: the guest waits for this
      });
    },
  });
  t.same({ reason: r.exit.reason, code: r.exit.code }, { reason: 'exit', code: 0 });
  t.equal(signals, BigInt(rounds));
  t.equal(callbacks, rounds, 'one wakeup per round trip');
  t.equal(r.exit.stats[0]!.mmioExits, 0, 'no MMIO exits: KVM signalled the eventfd');
});

t.test('misbehaving guests end with a clear reason and never hang the VMM', async (t) => {
  const bad = await runGuest('bad-mmio');
  t.equal(bad.exit.reason, 'error');
  t.match(bad.exit.detail, /read 4 byte\(s\) at MMIO address 0xd0f00000, where no device is mapped/);

  const tf = await runGuest('triple-fault');
  t.equal(tf.exit.reason, 'shutdown');
  t.match(tf.exit.detail, /triple-fault/);

  const spin = await runGuest('spin', { timeoutMs: 300 });
  t.equal(spin.exit.reason, 'timeout');
  t.match(spin.exit.detail, /no exit within 300 ms/);

  const unmappedPort = await runGuest('pio-echo');
  t.equal(unmappedPort.exit.reason, 'error');
  t.match(unmappedPort.exit.detail, /port 0x510, where no device is mapped/);

  const ignored = await runGuest('pio-echo', { unhandledPio: 'ignore' });
  t.equal(ignored.exit.reason, 'exit', 'with unhandledPio=ignore absent ports read as all ones');
  t.equal(ignored.exit.code, 0x100, 'and the echo check fails as it should');
});

t.test('a device that throws ends the VM with an error instead of crashing', async (t) => {
  const r = await runGuest('mmio-echo', {
    setup: (vm) => vm.mmio.register(0xd000_0000, 4, 'broken', { read() { throw new Error('boom'); }, write() {} }),
  });
  t.equal(r.exit.reason, 'error');
  t.match(r.exit.detail, /device at MMIO address 0xd0000000 failed on a read/);
});

t.test('images that do not fit are rejected', async (t) => {
  const { Vm } = await import('../../src/vmm/vm.js');
  const { loadSyntheticGuest } = await import('../../src/vmm/synthetic.js');
  const vm = Vm.create({ memoryMiB: 2 });
  t.teardown(() => vm.close());
  t.throws(() => loadSyntheticGuest(vm, new Uint8Array(2 << 20)), { code: 'GUEST_IMAGE' });
  t.throws(() => loadSyntheticGuest(vm, new Uint8Array(0)), { code: 'GUEST_IMAGE' });
});
