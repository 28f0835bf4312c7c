import t from 'tap';
import { DeviceId } from '../../src/virtio/constants.js';
import { RngDevice } from '../../src/virtio/rng.js';
import { createHarness } from '../support/virtio/harness.js';

t.test('rng fills writable buffers with random bytes', (t) => {
  const dev = new RngDevice();
  const h = createHarness(dev);
  t.teardown(h.close);
  t.equal(dev.deviceId, DeviceId.RNG);
  h.driver.negotiate();
  const q = h.driver.setupQueue(0);
  h.driver.driverOk();
  q.add([], [64]);
  q.add([], [16, 16], { indirect: true });
  q.kick();
  const used = q.reap();
  t.equal(used.length, 2);
  t.equal(used[0]!.len, 64);
  t.equal(used[1]!.len, 32);
  const a = Buffer.from(used[0]!.data);
  t.not(a.toString('hex'), '00'.repeat(64), 'not zeros');
  t.not(Buffer.from(used[1]!.data).toString('hex'), a.subarray(0, 32).toString('hex'), 'different bytes each time');
  t.equal(dev.bytesServed, 96);
  t.equal(h.irq.count, 1, 'one interrupt for the batch');
  t.end();
});

t.test('rng caps one request at 64 KiB', (t) => {
  const dev = new RngDevice();
  const h = createHarness(dev, { memorySize: 64 * 1024 * 1024 });
  t.teardown(h.close);
  h.driver.negotiate();
  const q = h.driver.setupQueue(0, { size: 16, slotSize: 256 * 1024 });
  h.driver.driverOk();
  q.add([], [100 * 1024, 50 * 1024]);
  q.kick();
  const [u] = q.reap();
  t.equal(u!.len, 64 * 1024);
  t.end();
});

t.test('rng ignores readable-only chains (writes 0 bytes)', (t) => {
  const h = createHarness(new RngDevice());
  t.teardown(h.close);
  h.driver.negotiate();
  const q = h.driver.setupQueue(0);
  h.driver.driverOk();
  q.add([Buffer.from('x')], []);
  q.kick();
  t.equal(q.reap()[0]!.len, 0);
  t.end();
});
