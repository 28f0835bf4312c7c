// Stopping running VMs: prompt, and nothing left behind (threads, fds).
import t from 'tap';
import { readdirSync } from 'node:fs';
import { Vm } from '../../src/vmm/vm.js';
import { loadSyntheticGuest } from '../../src/vmm/synthetic.js';
import { testGuestPath } from '../../src/paths.js';

const count = (dir: string): number => readdirSync(dir).length;
const threads = (): number => count('/proc/self/task');
const fds = (): number => count('/proc/self/fd');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function spinningVm(vcpus: number): Promise<{ vm: Vm; done: ReturnType<Vm['run']> }> {
  const vm = Vm.create({ memoryMiB: 8, vcpus });
  loadSyntheticGuest(vm, testGuestPath('spin'));
  const done = vm.run();
  await vm.started();
  await sleep(50); // let them enter KVM_RUN
  return { vm, done };
}

t.before(async () => {
  // Warm up once so lazily created runtime threads (libuv pool, V8 helpers) exist
  // before the counts are taken.
  const { vm, done } = await spinningVm(1);
  await vm.stop();
  await done;
  await vm.close();
});

t.test('stop() returns within 100 ms with 4 spinning vCPUs and leaves no threads or fds', async (t) => {
  const threadsBefore = threads();
  const fdsBefore = fds();
  const { vm, done } = await spinningVm(4);
  t.ok(threads() >= threadsBefore + 4, 'four vCPU threads were running');
  t.ok(fds() > fdsBefore, 'the VM holds fds while it exists');
  const t0 = performance.now();
  const exit = await vm.stop();
  const stopMs = performance.now() - t0;
  t.equal(exit?.reason, 'stopped');
  t.ok(stopMs < 100, `stop took ${stopMs.toFixed(1)} ms`);
  t.equal((await done).reason, 'stopped');
  t.ok(exit!.stats.every((s) => s.kicks >= 1), 'every vCPU was kicked out of KVM_RUN');
  t.ok(exit!.stats.every((s) => s.exits === 0), 'the spin guest never exited on its own');
  await vm.close();
  // Thread exit is asynchronous in the kernel: give it a moment.
  const deadline = Date.now() + 2000;
  while (threads() > threadsBefore && Date.now() < deadline) await sleep(10);
  t.equal(threads(), threadsBefore, 'no thread left');
  t.equal(fds(), fdsBefore, 'no fd left');
});

t.test('close() on a running VM stops it first', async (t) => {
  const fdsBefore = fds();
  const { vm, done } = await spinningVm(2);
  await vm.close();
  t.equal((await done).reason, 'stopped');
  t.equal(vm.state, 'closed');
  t.equal(fds(), fdsBefore);
  t.throws(() => vm.addIrqFd(5), { code: 'INVALID_STATE' });
});

t.test('a VM runs once', async (t) => {
  const vm = Vm.create({ memoryMiB: 4 });
  t.teardown(() => vm.close());
  loadSyntheticGuest(vm, testGuestPath('hello'));
  t.equal((await vm.run()).reason, 'reset');
  t.throws(() => vm.run(), { code: 'INVALID_STATE' });
});

t.test('many VMs in a row do not leak', async (t) => {
  const fdsBefore = fds();
  for (let i = 0; i < 10; i++) {
    const vm = Vm.create({ memoryMiB: 4 });
    loadSyntheticGuest(vm, testGuestPath('hello'));
    await vm.run();
    await vm.close();
  }
  t.equal(fds(), fdsBefore);
});

t.test('options are validated', async (t) => {
  t.throws(() => Vm.create({ vcpus: 0 }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => Vm.create({ vcpus: 17 }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => Vm.create({ memoryMiB: 1 }), { code: 'INVALID_ARGUMENT' });
});
