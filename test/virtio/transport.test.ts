import t from 'tap';
import { Feature, Interrupt, MMIO_MAGIC, Reg, Status, DeviceId } from '../../src/virtio/constants.js';
import { RngDevice } from '../../src/virtio/rng.js';
import { createHarness } from '../support/virtio/harness.js';
import { RecordingDevice } from './recording-device.js';

t.test('identity registers', (t) => {
  const h = createHarness(new RngDevice());
  t.teardown(h.close);
  const d = h.driver;
  t.equal(d.readReg(Reg.MagicValue), MMIO_MAGIC);
  t.equal(d.readReg(Reg.Version), 2);
  t.equal(d.readReg(Reg.DeviceId), DeviceId.RNG);
  t.not(d.readReg(Reg.VendorId), 0);
  t.equal(d.readReg(Reg.Status), 0);
  // Narrow or unaligned register accesses read 0 and write nothing.
  const narrow = new Uint8Array(2);
  h.transport.read(Reg.MagicValue, narrow);
  t.same([...narrow], [0, 0]);
  h.transport.write(Reg.Status, new Uint8Array([1, 0]));
  t.equal(d.status, 0);
  t.end();
});

t.test('feature negotiation', (t) => {
  const h = createHarness(new RngDevice());
  t.teardown(h.close);
  const d = h.driver;
  const offered = d.deviceFeatures();
  t.ok(offered & Feature.VERSION_1, 'offers VERSION_1');
  t.ok(offered & Feature.RING_EVENT_IDX, 'offers EVENT_IDX');
  t.ok(offered & Feature.RING_INDIRECT_DESC, 'offers INDIRECT_DESC');
  t.notOk(offered & Feature.RING_PACKED, 'no packed rings');

  // Legacy driver (no VERSION_1): FEATURES_OK is refused.
  d.reset();
  d.addStatus(Status.ACKNOWLEDGE | Status.DRIVER);
  d.writeDriverFeatures(Feature.RING_EVENT_IDX);
  d.addStatus(Status.FEATURES_OK);
  t.equal(d.status & Status.FEATURES_OK, 0, 'refused without VERSION_1');

  // Features the device did not offer: refused.
  d.reset();
  d.addStatus(Status.ACKNOWLEDGE | Status.DRIVER);
  d.writeDriverFeatures(Feature.VERSION_1 | Feature.RING_PACKED);
  d.addStatus(Status.FEATURES_OK);
  t.equal(d.status & Status.FEATURES_OK, 0, 'refused unoffered bit');

  // Out of order: FEATURES_OK before DRIVER is ignored.
  d.reset();
  d.addStatus(Status.ACKNOWLEDGE);
  d.addStatus(Status.FEATURES_OK);
  t.equal(d.status, Status.ACKNOWLEDGE);

  const agreed = d.negotiate(Feature.VERSION_1 | Feature.RING_EVENT_IDX);
  t.equal(agreed, Feature.VERSION_1 | Feature.RING_EVENT_IDX);
  t.equal(h.transport.negotiatedFeatures, agreed);
  t.equal(h.transport.phase, 'features-ok');
  t.end();
});

t.test('queue setup rules and reset', (t) => {
  const h = createHarness(new RngDevice({ queueSize: 64 }));
  t.teardown(h.close);
  const d = h.driver;
  // Queue registers before FEATURES_OK are ignored.
  d.writeReg(Reg.QueueSel, 0);
  d.writeReg(Reg.QueueNum, 8);
  d.writeReg(Reg.QueueReady, 1);
  t.equal(d.readReg(Reg.QueueReady), 0);
  d.negotiate();
  d.writeReg(Reg.QueueSel, 0);
  t.equal(d.readReg(Reg.QueueNumMax), 64);
  d.writeReg(Reg.QueueSel, 5);
  t.equal(d.readReg(Reg.QueueNumMax), 0, 'absent queue has max 0');
  const q = d.setupQueue(0);
  t.equal(q.size, 64);
  d.writeReg(Reg.QueueSel, 0);
  t.equal(d.readReg(Reg.QueueReady), 1);
  d.driverOk();
  t.equal(h.transport.phase, 'live');
  t.equal(d.status, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK);
  // Clearing bits without a reset is ignored.
  d.writeReg(Reg.Status, Status.ACKNOWLEDGE);
  t.equal(h.transport.phase, 'live');
  d.reset();
  t.equal(d.status, 0);
  t.equal(h.transport.phase, 'reset');
  d.writeReg(Reg.QueueSel, 0);
  t.equal(d.readReg(Reg.QueueReady), 0, 'reset disables queues');
  t.equal(d.readReg(Reg.InterruptStatus), 0);
  t.end();
});

t.test('bad ring layouts need reset', async (t) => {
  const cases: Array<[string, (h: ReturnType<typeof createHarness<RngDevice>>) => void]> = [
    ['size not a power of two', (h) => { h.driver.writeReg(Reg.QueueNum, 3); }],
    ['size above max', (h) => { h.driver.writeReg(Reg.QueueNum, 512); }],
    ['size zero', (h) => { h.driver.writeReg(Reg.QueueNum, 0); }],
    ['desc misaligned', (h) => { h.driver.writeReg(Reg.QueueNum, 8); h.driver.writeReg(Reg.QueueDescLow, 0x1008); h.driver.writeReg(Reg.QueueDriverLow, 0x2000); h.driver.writeReg(Reg.QueueDeviceLow, 0x3000); }],
    ['used outside RAM', (h) => { h.driver.writeReg(Reg.QueueNum, 8); h.driver.writeReg(Reg.QueueDescLow, 0x1000); h.driver.writeReg(Reg.QueueDriverLow, 0x2000); h.driver.writeReg(Reg.QueueDeviceLow, 0xfffff000); }],
    ['avail high word', (h) => { h.driver.writeReg(Reg.QueueNum, 8); h.driver.writeReg(Reg.QueueDescLow, 0x1000); h.driver.writeReg(Reg.QueueDriverLow, 0x2000); h.driver.writeReg(Reg.QueueDriverHigh, 0xffffffff); h.driver.writeReg(Reg.QueueDeviceLow, 0x3000); }],
    ['desc straddles end of RAM', (h) => { h.driver.writeReg(Reg.QueueNum, 256); h.driver.writeReg(Reg.QueueDescLow, h.memory.size - 16); h.driver.writeReg(Reg.QueueDriverLow, 0x2000); h.driver.writeReg(Reg.QueueDeviceLow, 0x3000); }],
  ];
  for (const [name, program] of cases) {
    const h = createHarness(new RngDevice());
    h.driver.negotiate();
    h.driver.writeReg(Reg.QueueSel, 0);
    program(h);
    h.driver.writeReg(Reg.QueueReady, 1);
    t.equal(h.driver.readReg(Reg.QueueReady), 0, `${name}: not ready`);
    t.ok(h.driver.status & Status.DEVICE_NEEDS_RESET, `${name}: DEVICE_NEEDS_RESET`);
    t.match(h.transport.needsResetReason, /queue 0/, `${name}: reason logged`);
    h.driver.reset();
    t.equal(h.driver.status, 0, `${name}: reset clears it`);
    h.close();
  }
});

t.test('needs-reset raises a config interrupt when live', (t) => {
  const h = createHarness(new RngDevice());
  t.teardown(h.close);
  h.driver.negotiate();
  const q = h.driver.setupQueue(0);
  h.driver.driverOk();
  q.publish(9999 % q.size + q.size); // head beyond the queue size
  h.driver.kick(0);
  t.ok(h.driver.status & Status.DEVICE_NEEDS_RESET);
  t.equal(h.irq.count, 1);
  t.equal(h.driver.ackInterrupt(), Interrupt.CONFIG_CHANGE);
  t.equal(h.driver.readReg(Reg.InterruptStatus), 0, 'ack clears');
  // Further kicks are ignored until reset.
  h.driver.kick(0);
  t.equal(h.irq.count, 1);
  // Reset and bring it up again: works.
  h.driver.negotiate();
  const q2 = h.driver.setupQueue(0);
  h.driver.driverOk();
  q2.add([], [32]);
  q2.kick();
  t.equal(q2.reap().length, 1);
  t.end();
});

t.test('QueueNotify write and direct notify take the same path', (t) => {
  for (const kick of ['register', 'direct'] as const) {
    const h = createHarness(new RngDevice(), { kick });
    h.driver.negotiate();
    const q = h.driver.setupQueue(0);
    h.driver.driverOk();
    q.add([], [16]);
    t.ok(q.kick(), `${kick}: kicked`);
    const used = q.reap();
    t.equal(used.length, 1, `${kick}: one used`);
    t.equal(used[0]!.len, 16);
    t.equal(h.irq.count, 1);
    // Notify for a queue that does not exist is ignored.
    h.transport.notify(7);
    h.driver.writeReg(Reg.QueueNotify, 7);
    t.equal(h.transport.needsResetReason, null);
    h.close();
  }
  t.end();
});

t.test('device bugs are contained', (t) => {
  const dev = new RngDevice();
  const errors: unknown[] = [];
  const h = createHarness(dev, { onInternalError: (e) => errors.push(e) });
  t.teardown(h.close);
  dev.queueNotify = () => { throw new Error('boom'); };
  h.driver.negotiate();
  const q = h.driver.setupQueue(0);
  h.driver.driverOk();
  q.add([], [8]);
  t.doesNotThrow(() => q.kick(true));
  t.equal(errors.length, 1);
  t.ok(h.driver.status & Status.DEVICE_NEEDS_RESET);
  t.end();
});

t.test('a device the driver set FAILED on after DRIVER_OK is still reset on reset', (t) => {
  const dev = new RecordingDevice();
  const h = createHarness(dev);
  t.teardown(h.close);
  const d = h.driver;
  d.negotiate(Feature.VERSION_1);
  d.setupQueue(0);
  d.driverOk();
  t.ok(dev.ctx !== null, 'activated');
  d.addStatus(Status.FAILED);
  t.equal(h.transport.phase, 'failed');
  d.reset();
  t.equal(dev.ctx, null, 'device.reset() ran: it keeps nothing from the failed activation');
  t.equal(h.transport.phase, 'reset');
  t.end();
});
