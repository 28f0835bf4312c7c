// VhostUserMmioTransport with no guest and no KVM: our SoftwareDriver plays Linux's
// virtio_mmio driver on the registers, our own vhost-user back end (the rng device over
// a socketpair) plays virtiofsd; qemu-storage-daemon serves the virtio-blk kind. A kick is a write to the queue's kick eventfd (what
// KVM's ioeventfd does); the call fd is an eventfd we watch (what KVM's irqfd injects).
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { VhostUserConnection } from '../../src/engine/vhost-user/backend/connection.js';
import { VhostUserFrontend } from '../../src/engine/vhost-user/frontend/frontend.js';
import { VhostUserMmioTransport, type VhostUserMmioOptions } from '../../src/engine/vhost-user/frontend/mmio-transport.js';
import {
  BLK_CONFIG_SIZE, BLK_CONFIG_WRITEBACK, BlkFeature, vhostUserBlkKind, virtioFsKind, VIRTIO_BLK_DEVICE_ID, VIRTIO_FS_DEVICE_ID,
} from '../../src/engine/vhost-user/frontend/mmio-device-kinds.js';
import { ProtocolFeature } from '../../src/engine/vhost-user/protocol.js';
import { TsiboxError } from '../../src/errors.js';
import { Feature, Interrupt, Reg, Status } from '../../src/virtio/constants.js';
import { RngDevice } from '../../src/virtio/rng.js';
import { SoftwareDriver } from '../support/virtio/driver.js';
import { EventFd, EventFdWatcher } from '../../src/vmm/eventfd.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { socketPair } from '../../src/sys/socket.js';
import { missing, QSD, startBackend } from './backends.js';

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

t.test('status bits only in the order of virtio 1.2 §3.1.1, as for our own devices', async (t) => {
  const { driver, conn, transport } = await rig(t);
  const v1High = Number(Feature.VERSION_1 >> 32n);
  const writeV1 = (): void => { driver.writeReg(Reg.DriverFeaturesSel, 1); driver.writeReg(Reg.DriverFeatures, v1High); driver.writeReg(Reg.DriverFeaturesSel, 0); };

  writeV1();
  driver.writeReg(Reg.Status, Status.FEATURES_OK);
  t.equal(driver.status, 0, 'FEATURES_OK without ACKNOWLEDGE and DRIVER is refused');
  driver.writeReg(Reg.Status, Status.DRIVER);
  t.equal(driver.status, 0, 'DRIVER without ACKNOWLEDGE is refused');
  driver.writeReg(Reg.Status, Status.ACKNOWLEDGE);
  writeV1();
  driver.writeReg(Reg.Status, Status.ACKNOWLEDGE | Status.FEATURES_OK);
  t.equal(driver.status, Status.ACKNOWLEDGE, 'FEATURES_OK without DRIVER is refused');
  driver.addStatus(Status.DRIVER);
  driver.writeReg(Reg.Status, Status.DRIVER | Status.FEATURES_OK);
  t.equal(driver.status, Status.ACKNOWLEDGE | Status.DRIVER, 'a write that clears ACKNOWLEDGE is ignored');
  driver.addStatus(Status.FEATURES_OK);
  t.equal(driver.status & Status.FEATURES_OK, 0, 'driver features written before DRIVER were not kept: no VERSION_1');

  driver.reset();
  driver.addStatus(Status.ACKNOWLEDGE | Status.DRIVER);
  writeV1();
  driver.addStatus(Status.FEATURES_OK);
  t.equal(driver.status, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK, 'in order, features written after DRIVER: accepted');
  driver.setupQueue(0, { size: 64 });
  driver.addStatus(Status.FAILED);
  driver.addStatus(Status.DRIVER_OK);
  t.equal(driver.status & Status.DRIVER_OK, 0, 'no DRIVER_OK after FAILED');
  await transport.settled();
  t.notOk(conn.backend.active, 'nothing reached the back end');

  driver.negotiate(Feature.VERSION_1);
  driver.setupQueue(0, { size: 64 });
  driver.driverOk();
  await transport.settled();
  t.ok(conn.backend.active, 'after a reset the ordered sequence starts the ring');
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

t.test('vhost-user-blk kind against qemu-storage-daemon: its config, our feature mask, writeback through SET_CONFIG', { skip: missing(QSD) ?? false }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-vhublk-'));
  const img = join(dir, 'disk.img');
  const sock = join(dir, 'blk.sock');
  writeFileSync(img, '');
  truncateSync(img, 4 << 20);
  const proc = startBackend(QSD, [
    '--blockdev', `driver=file,node-name=f,filename=${img},discard=unmap`,
    '--blockdev', 'driver=raw,node-name=r,file=f,discard=unmap',
    '--export', `type=vhost-user-blk,id=e,node-name=r,addr.type=unix,addr.path=${sock},writable=on,writethrough=on`,
  ]);
  const memory = GuestMemory.shared(RAM);
  const kick = new EventFd();
  const call = new EventFd();
  let frontend: VhostUserFrontend | null = null;
  t.teardown(async () => { frontend?.close(); await proc.stop(); kick.close(); call.close(); memory.close(); rmSync(dir, { recursive: true, force: true }); });
  frontend = await VhostUserFrontend.connect(sock, { logger, name: 'qsd', replyTimeoutMs: WAIT_MS, connectTimeoutMs: WAIT_MS });
  const kind = vhostUserBlkKind();
  const hs = await frontend.handshake({ protocolFeatures: ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | (kind.wantsConfig ? ProtocolFeature.CONFIG : 0n) });
  t.equal(kind.queues(hs), 1);
  const config = await kind.config(frontend, hs);
  t.equal(config.length, BLK_CONFIG_SIZE, 'GET_CONFIG of the 60 bytes every back end has');
  const errors: TsiboxError[] = [];
  const transport = new VhostUserMmioTransport({
    frontend, memory, deviceId: kind.deviceId, backendFeatures: hs.features, deviceFeatureMask: kind.deviceFeatureMask!, queueSize: kind.queueSize,
    kickFds: [kick.fd], callFd: call.fd, interrupt: { trigger: () => undefined }, config, configWritable: kind.configWritable!,
    name: 'blk', logger, onError: (e) => { errors.push(e); },
  });
  const driver = new SoftwareDriver({ read: (o, d) => { transport.read(o, d); }, write: (o, d) => { transport.write(o, d); }, notify: () => { kick.signal(); } }, memory, { kick: 'direct' });
  t.equal(driver.readReg(Reg.DeviceId), VIRTIO_BLK_DEVICE_ID);
  t.equal(driver.readReg(Reg.QueueNumMax), 256);
  const offered = driver.deviceFeatures();
  for (const [name, bit] of [['FLUSH', BlkFeature.FLUSH], ['CONFIG_WCE', BlkFeature.CONFIG_WCE], ['DISCARD', BlkFeature.DISCARD], ['WRITE_ZEROES', BlkFeature.WRITE_ZEROES], ['SEG_MAX', BlkFeature.SEG_MAX], ['BLK_SIZE', BlkFeature.BLK_SIZE], ['TOPOLOGY', BlkFeature.TOPOLOGY]] as const) {
    t.not(offered & bit, 0n, `${name} passed through`);
  }
  t.equal(offered & BlkFeature.MQ, 0n, 'MQ is not (one request queue)');
  t.equal(offered & BlkFeature.RO, 0n, 'a writable export is not RO');
  t.equal(offered & (1n << 30n), 0n, 'PROTOCOL_FEATURES is not shown');
  const cfg = (o: number, n: number): Buffer => Buffer.from(driver.readConfig(o, n));
  t.equal(cfg(0, 8).readBigUInt64LE(0), BigInt((4 << 20) / 512), 'capacity in sectors, as the back end states it');
  t.equal(cfg(20, 4).readUInt32LE(0), 512, 'blk_size');
  t.equal(cfg(BLK_CONFIG_WRITEBACK, 1)[0], 0, 'writeback 0: the export is write-through');
  const gen0 = driver.readReg(Reg.ConfigGeneration);

  transport.write(Reg.Config + BLK_CONFIG_WRITEBACK, Uint8Array.of(1));
  t.equal(cfg(BLK_CONFIG_WRITEBACK, 1)[0], 0, 'before FEATURES_OK a write is ignored');
  driver.negotiate(Feature.VERSION_1 | BlkFeature.FLUSH | BlkFeature.CONFIG_WCE);
  transport.write(Reg.Config + BLK_CONFIG_WRITEBACK, Uint8Array.of(1));
  t.equal(cfg(BLK_CONFIG_WRITEBACK, 1)[0], 1, 'with CONFIG_WCE the driver reads its write back at once');
  t.not(driver.readReg(Reg.ConfigGeneration), gen0, 'and the config generation changed');
  await transport.settled();
  // Read from 0: libvhost-user ignores GET_CONFIG's offset (it copies from the start).
  t.equal((await frontend.getConfig(0, BLK_CONFIG_SIZE))[BLK_CONFIG_WRITEBACK], 1, 'SET_CONFIG reached the back end: it is write-back now');
  transport.write(Reg.Config, Uint8Array.of(0xff, 0xff, 0xff, 0xff));
  t.equal(cfg(0, 8).readBigUInt64LE(0), BigInt((4 << 20) / 512), 'capacity is not writable (nothing sent: qemu-storage-daemon would drop the connection)');
  await transport.settled();
  t.equal((await frontend.getConfig(0, 8)).readBigUInt64LE(0), BigInt((4 << 20) / 512));
  t.same(errors, [], 'the back end is still fine');

  const noWce = new VhostUserMmioTransport({
    frontend, memory, deviceId: kind.deviceId, backendFeatures: hs.features, deviceFeatureMask: kind.deviceFeatureMask!, queueSize: kind.queueSize,
    kickFds: [kick.fd], callFd: call.fd, interrupt: { trigger: () => undefined }, config, configWritable: kind.configWritable!, name: 'blk2', logger,
  });
  const d2 = new SoftwareDriver({ read: (o, d) => { noWce.read(o, d); }, write: (o, d) => { noWce.write(o, d); }, notify: () => undefined }, memory, { kick: 'direct' });
  d2.negotiate(Feature.VERSION_1 | BlkFeature.FLUSH);
  noWce.write(Reg.Config + BLK_CONFIG_WRITEBACK, Uint8Array.of(1));
  t.equal(Buffer.from(d2.readConfig(BLK_CONFIG_WRITEBACK, 1))[0], 0, 'without CONFIG_WCE negotiated writeback is read-only');
});
