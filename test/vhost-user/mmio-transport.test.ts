// VhostUserMmioTransport with no guest and no KVM: our SoftwareDriver plays Linux's
// virtio_mmio driver on the registers, our own vhost-user back end (the rng device over
// a socketpair) plays virtiofsd. A kick is a write to the queue's kick eventfd (what
// KVM's ioeventfd does); the call fd is an eventfd we watch (what KVM's irqfd injects).
import t, { type Test } from 'tap';
import { pino } from 'pino';
import { VhostUserConnection } from '../../src/engine/vhost-user/connection.js';
import { VhostUserFrontend } from '../../src/engine/vhost-user/frontend.js';
import { VhostUserMmioTransport, type VhostUserMmioOptions } from '../../src/engine/vhost-user/mmio-transport.js';
import { virtioFsKind, VIRTIO_FS_DEVICE_ID } from '../../src/engine/vhost-user/mmio-device-kinds.js';
import { TsiboxError } from '../../src/errors.js';
import { Feature, Interrupt, Reg, Status } from '../../src/virtio/constants.js';
import { RngDevice } from '../../src/virtio/rng.js';
import { SoftwareDriver } from '../../src/virtio/testing/driver.js';
import { EventFd, EventFdWatcher } from '../../src/vmm/eventfd.js';
import { GuestMemory } from '../../src/vmm/memory.js';
import { socketPair } from '../../src/sys/socket.js';

const RAM = 16 << 20;
const WAIT_MS = 5000;
const logger = pino({ level: process.env['TSIBOX_TEST_LOG'] ?? 'silent' });

interface Rig {
  transport: VhostUserMmioTransport;
  driver: SoftwareDriver;
  conn: VhostUserConnection;
  memory: GuestMemory;
  calls(): number;
  configInterrupts(): number;
  errors: TsiboxError[];
}

async function rig(t: Test, extra: Partial<VhostUserMmioOptions> = {}): Promise<Rig> {
  const [ours, theirs] = socketPair();
  const conn = new VhostUserConnection(theirs, { device: new RngDevice({ queueSize: 64 }), logger, name: 'rng' });
  const frontend = new VhostUserFrontend(ours, { logger, name: 'own-rng', replyTimeoutMs: WAIT_MS });
  const memory = GuestMemory.shared(RAM);
  const kick = new EventFd();
  const call = new EventFd();
  let calls = 0;
  const watcher = new EventFdWatcher(call, (n) => { calls += Number(n); });
  let configInterrupts = 0;
  const errors: TsiboxError[] = [];
  const hs = await frontend.handshake();
  const transport = new VhostUserMmioTransport({
    frontend, memory, deviceId: 4, backendFeatures: hs.features, queueSize: 64, kickFds: [kick.fd], callFd: call.fd,
    interrupt: { trigger: () => { configInterrupts++; } }, config: new Uint8Array(0), name: 'rng', logger,
    onError: (e) => { errors.push(e); }, ...extra,
  });
  // notify() is what KVM's ioeventfd on QueueNotify does: signal the kick eventfd.
  const driver = new SoftwareDriver({ read: (o, d) => { transport.read(o, d); }, write: (o, d) => { transport.write(o, d); }, notify: () => { kick.signal(); } },
    memory, { kick: 'direct' });
  t.teardown(() => { transport.close(); conn.close(); watcher.stop(); kick.close(); call.close(); memory.close(); });
  return { transport, driver, conn, memory, calls: () => calls, configInterrupts: () => configInterrupts, errors };
}

async function until(cond: () => boolean, ms = WAIT_MS): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

t.test('negotiate, hand the ring to the back end on DRIVER_OK, fill a buffer, reset stops the ring, restart', async (t) => {
  const r = await rig(t);
  const { driver, transport, conn } = r;
  const offered = driver.deviceFeatures();
  t.ok(offered & Feature.VERSION_1, 'VERSION_1 offered');
  t.equal(offered & (1n << 30n), 0n, 'PROTOCOL_FEATURES (vhost-only) is not shown to the guest');
  t.equal(offered & ~(Feature.VERSION_1 | Feature.RING_EVENT_IDX | Feature.RING_INDIRECT_DESC | 0xff_ffffn), 0n, 'only split-ring transport bits and device bits');
  driver.negotiate(Feature.VERSION_1);
  t.equal(driver.readReg(Reg.QueueNumMax), 64);
  const q = driver.setupQueue(0, { size: 64 });
  t.equal(driver.readReg(Reg.InterruptStatus), 0, 'no VRING bit before DRIVER_OK');
  t.notOk(conn.backend.active, 'nothing started before DRIVER_OK');
  driver.driverOk();
  await transport.settled();
  t.ok(conn.backend.active, 'SET_FEATURES, SET_MEM_TABLE and the ring reached the back end');
  t.equal(driver.readReg(Reg.InterruptStatus), Interrupt.USED_BUFFER, 'sticky VRING bit while DRIVER_OK');
  driver.writeReg(Reg.InterruptAck, Interrupt.USED_BUFFER);
  t.equal(driver.readReg(Reg.InterruptStatus), Interrupt.USED_BUFFER, 'an ack does not clear it (the back end interrupts through the irqfd)');
  const callsBefore = r.calls();
  t.not(q.add([], [64]), null);
  driver.kick(0);
  t.ok(await until(() => q.usedIdx() === 1), 'the back end used the buffer (kick eventfd → back end → used ring)');
  t.ok(await until(() => r.calls() > callsBefore), 'and signalled the call fd (the irqfd)');
  const used = q.reap();
  t.equal(used[0]!.len, 64);
  t.ok(used[0]!.data.some((b) => b !== 0), 'random bytes in shared RAM');

  driver.reset();
  t.equal(driver.status, 0);
  t.equal(driver.readReg(Reg.InterruptStatus), 0, 'no VRING bit after reset');
  await transport.settled();
  t.notOk(conn.backend.active, 'reset stopped the ring (GET_VRING_BASE)');

  driver.negotiate(Feature.VERSION_1);
  const q2 = driver.setupQueue(0, { size: 32 });
  driver.driverOk();
  await transport.settled();
  t.ok(conn.backend.active, 'a second session starts again');
  q2.add([], [16]);
  driver.kick(0);
  t.ok(await until(() => q2.usedIdx() === 1), 'and works');
  t.same(r.errors, []);
});

t.test('FEATURES_OK is refused without VERSION_1 or with features not offered', async (t) => {
  const { driver } = await rig(t);
  t.throws(() => driver.negotiate(0n), /refused FEATURES_OK/);
  driver.reset();
  driver.addStatus(Status.ACKNOWLEDGE | Status.DRIVER);
  driver.writeDriverFeatures(Feature.VERSION_1 | Feature.RING_PACKED);
  driver.addStatus(Status.FEATURES_OK);
  t.equal(driver.status & Status.FEATURES_OK, 0, 'packed rings are never accepted');
  driver.addStatus(Status.DRIVER_OK);
  t.equal(driver.status & Status.DRIVER_OK, 0, 'no DRIVER_OK without FEATURES_OK');
});

t.test('a ring outside guest RAM: DEVICE_NEEDS_RESET, nothing sent', async (t) => {
  const { driver, conn, transport } = await rig(t);
  driver.negotiate(Feature.VERSION_1);
  driver.writeReg(Reg.QueueSel, 0);
  driver.writeReg(Reg.QueueNum, 64);
  driver.writeReg(Reg.QueueDescLow, 0);
  driver.writeReg(Reg.QueueDescHigh, 1); // 4 GiB: far outside 16 MiB
  driver.writeReg(Reg.QueueReady, 1);
  t.equal(driver.readReg(Reg.QueueReady), 0);
  t.ok(driver.status & Status.DEVICE_NEEDS_RESET);
  await transport.settled();
  t.notOk(conn.backend.active);
});

t.test('the back end going away: DEVICE_NEEDS_RESET, a config interrupt, one DEVICE_ERROR', async (t) => {
  const r = await rig(t);
  r.driver.negotiate(Feature.VERSION_1);
  r.driver.setupQueue(0, { size: 64 });
  r.driver.driverOk();
  await r.transport.settled();
  r.conn.close();
  t.ok(await until(() => r.errors.length > 0), 'onError ran');
  t.equal(r.errors.length, 1);
  t.match(r.errors[0], { code: 'DEVICE_ERROR', message: /closed the vhost-user socket/ });
  t.ok(r.driver.status & Status.DEVICE_NEEDS_RESET, 'DEVICE_NEEDS_RESET');
  t.equal(r.driver.readReg(Reg.InterruptStatus), Interrupt.USED_BUFFER | Interrupt.CONFIG_CHANGE, 'config bit pending');
  t.equal(r.configInterrupts(), 1, 'an interrupt was raised');
  r.driver.writeReg(Reg.InterruptAck, Interrupt.CONFIG_CHANGE);
  t.equal(r.driver.readReg(Reg.InterruptStatus), Interrupt.USED_BUFFER, 'the config bit acks');
  r.driver.reset();
  await r.transport.settled();
  t.equal(r.errors.length, 1, 'a reset after the failure sends nothing and reports nothing more');
});

t.test('virtio-fs kind: config space is tag[36] + num_request_queues; no VERSION_1 is refused', async (t) => {
  const kind = virtioFsKind('tsibox-root');
  t.equal(kind.deviceId, VIRTIO_FS_DEVICE_ID);
  const cfg = Buffer.from(await kind.config({} as VhostUserFrontend, { features: 0n, protocolFeatures: 0n, queueNum: 2 }));
  t.equal(cfg.length, 40);
  t.equal(cfg.subarray(0, 36).toString('utf8').replace(/\0+$/, ''), 'tsibox-root');
  t.equal(cfg.readUInt32LE(36), 1);
  t.throws(() => virtioFsKind('x'.repeat(37)), { code: 'INVALID_ARGUMENT' });
  const r = await rig(t, { config: cfg, deviceId: VIRTIO_FS_DEVICE_ID });
  t.equal(r.driver.readReg(Reg.DeviceId), VIRTIO_FS_DEVICE_ID);
  t.equal(Buffer.from(r.driver.readConfig(0, 4)).toString(), 'tsib', 'config reads');
  t.equal(Buffer.from(r.driver.readConfig(36, 4)).readUInt32LE(0), 1);
  t.equal(r.driver.readReg(Reg.ShmLenLow), 0xffff_ffff, 'no shared memory region (no DAX window)');
  t.throws(() => new VhostUserMmioTransport({
    frontend: {} as VhostUserFrontend, memory: r.memory, deviceId: 26, backendFeatures: Feature.RING_EVENT_IDX, queueSize: 128,
    kickFds: [0], callFd: 0, interrupt: { trigger: () => undefined }, config: cfg, name: 'old', logger,
  }), { code: 'DEVICE_ERROR', message: /VERSION_1/ });
});
