import t from 'tap';
import { Feature } from '../../src/virtio/constants.js';
import { needEvent } from '../../src/virtio/queue.js';
import { createHarness } from '../support/virtio/harness.js';
import { RecordingDevice } from './recording-device.js';

function setup(features: bigint, size = 8) {
  const dev = new RecordingDevice(size);
  const h = createHarness(dev);
  h.driver.negotiate(features);
  const q = h.driver.setupQueue(0);
  h.driver.driverOk();
  return { h, dev, q };
}

const ALL = Feature.VERSION_1 | Feature.RING_EVENT_IDX | Feature.RING_INDIRECT_DESC;
const PLAIN = Feature.VERSION_1;

t.test('chains: readable then writable buffers', (t) => {
  const { h, dev, q } = setup(PLAIN);
  t.teardown(h.close);
  const head = q.add([Buffer.from('abc'), Buffer.from('de')], [2, 4]);
  t.not(head, null);
  q.kick();
  t.equal(dev.seen.length, 1);
  const s = dev.seen[0]!;
  t.same(s.readable.map((b) => Buffer.from(b).toString()), ['abc', 'de']);
  t.same(s.writableLens, [2, 4]);
  const [u] = q.reap();
  t.equal(u!.head, head);
  t.equal(u!.len, 5);
  t.equal(Buffer.from(u!.data).toString(), 'edcba');
  t.equal(q.freeDescriptors, 8, 'descriptors freed');
  t.end();
});

t.test('many chains, ring wraps', (t) => {
  const { h, dev, q } = setup(PLAIN, 4);
  t.teardown(h.close);
  for (let round = 0; round < 40; round++) {
    t.not(q.add([Buffer.from([round])], [1]), null);
    t.not(q.add([Buffer.from([round + 1])], [1]), null);
    q.kick();
    const used = q.reap();
    t.equal(used.length, 2);
    t.same([...used[0]!.data], [round & 0xff]);
  }
  t.equal(dev.seen.length, 80);
  t.equal(h.transport.needsResetReason, null);
  t.end();
});

t.test('indirect descriptors', (t) => {
  const { h, dev, q } = setup(ALL);
  t.teardown(h.close);
  const head = q.add([Buffer.from('xy'), Buffer.from('z')], [1, 1, 1], { indirect: true });
  t.equal(q.freeDescriptors, 7, 'one ring descriptor used');
  q.kick();
  t.same(dev.seen[0]!.readable.map((b) => Buffer.from(b).toString()), ['xy', 'z']);
  t.same(dev.seen[0]!.writableLens, [1, 1, 1]);
  const [u] = q.reap();
  t.equal(u!.head, head);
  t.equal(Buffer.from(u!.data).toString(), 'zyx');
  t.end();
});

t.test('indirect without the feature needs reset', (t) => {
  const { h, q } = setup(PLAIN);
  t.teardown(h.close);
  q.add([Buffer.from('a')], [], { indirect: true });
  q.kick(true);
  t.match(h.transport.needsResetReason, /INDIRECT_DESC was not negotiated/);
  t.end();
});

t.test('needEvent arithmetic', (t) => {
  t.ok(needEvent(0, 1, 0));
  t.notOk(needEvent(1, 1, 0));
  t.ok(needEvent(0xffff, 0, 0xffff), 'wraps');
  t.ok(needEvent(5, 10, 3));
  t.notOk(needEvent(10, 10, 3));
  t.end();
});

t.test('EVENT_IDX: interrupts follow used_event, kicks follow avail_event', (t) => {
  const { h, dev, q } = setup(ALL);
  t.teardown(h.close);
  // After activation the device has not published avail_event yet (0): first kick needed.
  q.add([Buffer.from('1')], [1]);
  t.ok(q.kick(), 'first kick');
  t.equal(q.availEvent(), 1, 'device re-armed avail_event at its last_avail');
  t.equal(h.irq.count, 1, 'used_event 0 -> interrupt for used idx 1');
  q.reap(); // sets used_event = 1

  // Driver suppresses interrupts by leaving used_event behind.
  q.setUsedEvent(100);
  q.add([Buffer.from('2')], [1]);
  t.ok(q.kick());
  t.equal(h.irq.count, 1, 'no interrupt: used_event far ahead');
  t.equal(q.usedIdx(), 2);

  // Add two without the device looking: only the first crossing needs a kick.
  dev.complete = true;
  q.setUsedEvent(2);
  q.add([Buffer.from('3')], [1]);
  q.add([Buffer.from('4')], [1]);
  t.ok(q.needsKick(), 'avail_event 2 crossed');
  q.kick();
  t.equal(h.irq.count, 2, 'used idx crossed used_event 2');
  t.equal(q.reap().length, 3);
  t.end();
});

t.test('EVENT_IDX: device that stops consuming does not get kicked', (t) => {
  const { h, dev, q } = setup(ALL);
  t.teardown(h.close);
  q.add([Buffer.from('a')], [1]);
  q.kick();
  q.reap();
  // avail_event is 1: publishing entry #2 (idx 1->2) crosses it.
  q.add([Buffer.from('b')], [1]);
  t.ok(q.needsKick());
  q.kick(); // consumed, avail_event -> 2
  q.add([Buffer.from('c')], [1]);
  q.kick();
  t.equal(dev.seen.length, 3);
  t.end();
});

t.test('no EVENT_IDX: NO_INTERRUPT and NO_NOTIFY flags', (t) => {
  const { h, dev, q } = setup(PLAIN);
  t.teardown(h.close);
  q.setNoInterrupt(true);
  q.add([Buffer.from('a')], [1]);
  q.kick();
  t.equal(q.reap().length, 1);
  t.equal(h.irq.count, 0, 'NO_INTERRUPT honoured');
  q.setNoInterrupt(false);
  // The device asks not to be notified.
  h.transport.notify(0);
  dev.ctx!.queues[0]!.setNotification(false);
  t.notOk(q.needsKick(), 'NO_NOTIFY seen by the driver');
  dev.ctx!.queues[0]!.setNotification(true);
  q.add([Buffer.from('b')], [1]);
  t.ok(q.kick());
  t.equal(h.irq.count, 1);
  t.end();
});
