// Issue 13: a guest that floods control messages without ever posting control-rx
// buffers must not make the host queue replies without bound.
import t from 'tap';
import { setImmediate as tick } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ControlEvent, PortName } from '../../src/virtio/console/index.js';
import { decodeControl, encodeControl, portRxQueue, CONTROL_RX_QUEUE } from '../../src/virtio/console/control.js';
import { ControlOutbox } from '../../src/virtio/console/outbox.js';
import type { DriverQueue } from '../support/virtio/driver.js';
import { consoleRig } from '../helpers/console-rig.js';

// A million messages through a real virtqueue take a few seconds on a busy 2-core machine.
t.setTimeout(120_000);
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

function heapUsed(): number {
  gc();
  return process.memoryUsage().heapUsed;
}

/** Sends `count` copies of a control message on control-tx, a ring-full at a time. */
function flood(q: DriverQueue, msg: Uint8Array, count: number): void {
  let sent = 0;
  while (sent < count) {
    while (sent < count && q.freeDescriptors > 0) {
      q.add([msg], []);
      sent++;
    }
    q.kick(true);
    if (q.reapCount() === 0) throw new Error('device stopped taking control messages');
  }
}

t.test('1,000,000 DEVICE_READY with no control-rx buffers: bounded, then a normal handshake', async (t) => {
  const { dev, h, queues, tx } = consoleRig();
  t.teardown(() => { h.close(); });
  const before = heapUsed();

  flood(tx, encodeControl({ id: 0xffffffff, event: ControlEvent.DEVICE_READY, value: 1 }), 1_000_000);
  t.equal(dev.pendingControl, dev.ports.length, 'one DEVICE_ADD per port waiting, not one per message');
  // PORT_READY for every port, many times over, and PORT_READY for a port that does not exist.
  for (const p of dev.ports) flood(tx, encodeControl({ id: p.id, event: ControlEvent.PORT_READY, value: 1 }), 20_000);
  flood(tx, encodeControl({ id: 999, event: ControlEvent.PORT_READY, value: 1 }), 20_000);
  t.equal(dev.pendingControl, 3 * dev.ports.length, 'DEVICE_ADD, CONSOLE_PORT|PORT_NAME, PORT_OPEN per port');
  t.equal(dev.droppedControl, 0, 'coalescing alone kept it bounded');
  const grown = heapUsed() - before;
  t.ok(grown < 16 * 1024 * 1024, `heap grew ${(grown / 1048576).toFixed(1)} MiB (unfixed: ~928 MiB)`);
  t.equal(h.transport.needsResetReason, null);

  // The guest finally posts control-rx buffers: each fact arrives once, in order.
  const rx = queues[CONTROL_RX_QUEUE]!;
  while (rx.freeDescriptors > 0) rx.add([], [256]);
  rx.kick(true);
  const got = rx.reap().map((u) => ({ ...decodeControl(u.data)!, data: Buffer.from(u.data.subarray(8)).toString() }));
  t.equal(dev.pendingControl, 0);
  const n = dev.ports.length;
  t.same(got.slice(0, n).map((m) => [m.id, m.event]), dev.ports.map((p) => [p.id, ControlEvent.DEVICE_ADD]));
  t.same(got.filter((m) => m.event === ControlEvent.CONSOLE_PORT).map((m) => m.id), [0]);
  t.same(got.filter((m) => m.event === ControlEvent.PORT_NAME).map((m) => m.data),
    [PortName.STDIN, PortName.STDOUT, PortName.STDERR, PortName.STATUS]);
  t.same(got.filter((m) => m.event === ControlEvent.PORT_OPEN).map((m) => [m.id, m.value]), dev.ports.map((p) => [p.id, 1]));
  t.equal(got.length, 3 * n);
  for (const m of got.filter((x) => x.event !== ControlEvent.DEVICE_ADD)) {
    const addAt = got.findIndex((x) => x.id === m.id && x.event === ControlEvent.DEVICE_ADD);
    t.ok(addAt < got.indexOf(m), `port ${m.id}: DEVICE_ADD before event ${m.event}`);
  }

  // And the ports still work: the guest opens stdout and writes.
  const out: Buffer[] = [];
  dev.port(PortName.STDOUT)!.output.on('data', (b: Buffer) => out.push(b));
  const stdout = dev.port(PortName.STDOUT)!;
  tx.add([encodeControl({ id: stdout.id, event: ControlEvent.PORT_OPEN, value: 1 })], []);
  tx.kick(true);
  t.ok(stdout.guestOpen);
  const q = queues[portRxQueue(stdout.id) + 1]!;
  q.add([Buffer.from('still alive\n')], []);
  q.kick(true);
  await tick();
  t.equal(Buffer.concat(out).toString(), 'still alive\n');
  t.end();
});

t.test('outbox: coalesces in place, hard cap counts drops', (t) => {
  const box = new ControlOutbox(2);
  const m = (v: number): Uint8Array => Uint8Array.of(v);
  t.ok(box.put(1, ControlEvent.DEVICE_ADD, m(1)));
  t.ok(box.put(1, ControlEvent.PORT_OPEN, m(2)));
  t.ok(box.put(1, ControlEvent.DEVICE_ADD, m(3)), 'a duplicate key is never dropped');
  t.notOk(box.put(2, ControlEvent.DEVICE_ADD, m(4)), 'a third distinct key is');
  t.equal(box.size, 2);
  t.equal(box.dropped, 1);
  t.same(box.take(), m(3), 'latest value, first position');
  t.same(box.take(), m(2));
  t.equal(box.take(), null);
  t.end();
});
