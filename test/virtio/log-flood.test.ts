// Issue 13 (log flooding), virtio side: lines a guest (kernel) can trigger as fast as it
// rings a doorbell are rate-limited per transport, with a summary of what was dropped.
import t from 'tap';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { Feature } from '../../src/virtio/constants.js';
import { ControlEvent } from '../../src/virtio/console/index.js';
import { encodeControl } from '../../src/virtio/console/control.js';
import { RngDevice } from '../../src/virtio/rng.js';
import { createHarness } from '../support/virtio/harness.js';
import { consoleRig } from '../helpers/console-rig.js';

function countingLogger(): { logger: pino.Logger; lines: () => Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({ write(c: Buffer, _e, done) { for (const l of c.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>); done(); } });
  return { logger: pino({ level: 'debug' }, sink), lines: () => lines };
}

const flush = (): Promise<void> => new Promise((r) => { setTimeout(r, 50); });

t.test('100,000 DEVICE_READY(failed) messages write a bounded number of lines', async (t) => {
  const { logger, lines } = countingLogger();
  const { h, tx } = consoleRig({ logger });
  t.teardown(() => { h.close(); });
  const msg = encodeControl({ id: 0xffffffff, event: ControlEvent.DEVICE_READY, value: 0 });
  let sent = 0;
  while (sent < 100_000) {
    while (sent < 100_000 && tx.freeDescriptors > 0) { tx.add([msg], []); sent++; }
    tx.kick(true);
    tx.reapCount();
  }
  await flush();
  t.ok(lines().length <= 40, `${lines().length} lines for ${sent} messages (unfixed: 100,000)`);
});

t.test('20,000 break-and-reset cycles write a bounded number of "needs reset" lines', async (t) => {
  const { logger, lines } = countingLogger();
  const h = createHarness(new RngDevice(), { memorySize: 128 * 1024 * 1024, logger });
  t.teardown(() => { h.close(); });
  const d = h.driver;
  for (let i = 0; i < 20_000; i++) {
    d.reset();
    d.negotiate(Feature.VERSION_1);
    const q = d.setupQueue(0, { size: 8, slotSize: 64 });
    d.driverOk();
    q.setAvailIdx(1000); // more than a ring past the last seen: a broken queue
    q.kick(true);
  }
  await flush();
  const n = lines().length;
  t.ok(n <= 40, `${n} lines for 20,000 cycles (unfixed: 20,000)`);
  t.ok(lines().some((l) => l['msg'] === 'device needs reset'), 'the first ones are still written');
});
