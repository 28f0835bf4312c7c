// What a vhost-user back end relies on from the VM: guest RAM in a memfd
// (VmOptions.sharedMemory) and a KVM ioeventfd that nothing in Node watches
// (Vm.addUnwatchedIoEventFd), read here by polling, as another process would.
import t from 'tap';
import { runGuest } from '../helpers/guest.js';
import type { EventFd } from '../../src/vmm/eventfd.js';
import type { Vm } from '../../src/vmm/vm.js';

t.test('a synthetic guest on shared RAM signals an unwatched ioeventfd; only its reader sees the kicks', async (t) => {
  const rounds = 5;
  let signals = 0n;
  let fd: EventFd | null = null;
  let backing: unknown = null;
  let vm: Vm | null = null;
  // The "back end": polls the eventfd (KVM signalled it without an exit) and acks through RAM.
  const timer = setInterval(() => {
    if (fd === null || fd.closed) return;
    const n = fd.take();
    if (n > 0n) {
      signals += n;
      vm?.memory.writeU64(0x3000, signals);
    }
  }, 2);
  const r = await runGuest('bench-ioeventfd', {
    param: rounds,
    sharedMemory: true,
    setup: (v) => {
      vm = v;
      backing = v.memory.backing;
      fd = v.addUnwatchedIoEventFd({ address: 0xd000_1000, length: 4, pio: false });
    },
  }).finally(() => { clearInterval(timer); });
  t.not(backing, null, 'guest RAM is a memfd');
  t.same({ reason: r.exit.reason, code: r.exit.code }, { reason: 'exit', code: 0 });
  t.equal(signals, BigInt(rounds), 'every kick reached the eventfd, none was consumed by a watcher');
  t.equal(r.exit.stats[0]!.mmioExits, 0, 'no MMIO exits');
  t.ok(fd !== null && (fd as EventFd).closed, 'closed with the VM');
});

t.test('without sharedMemory guest RAM stays anonymous', async (t) => {
  let backing: unknown = 'unset';
  await runGuest('hello', { setup: (v) => { backing = v.memory.backing; } });
  t.equal(backing, null);
});
