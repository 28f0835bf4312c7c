// The vhost-user front end against real back ends, with no guest: our test code plays
// the virtio driver in shared memfd guest RAM (ring-driver.ts), the back end maps that
// RAM from SET_MEM_TABLE and serves the rings; kicks and calls are eventfds.
//  - our own back end (VhostUserConnection + the rng device), over a socketpair;
//  - virtiofsd: FUSE_INIT and FUSE_LOOKUP on the request queue (linux/fuse.h, 7.31);
//  - qemu-storage-daemon's vhost-user-blk export: GET_CONFIG capacity, write, flush,
//    read back, and the host sees the bytes in the image file.
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { VhostUserConnection } from '../../src/engine/vhost-user/backend/connection.js';
import { VhostUserFrontend } from '../../src/engine/vhost-user/frontend/frontend.js';
import { ProtocolFeature } from '../../src/engine/vhost-user/protocol.js';
import { Feature } from '../../src/virtio/constants.js';
import { RngDevice } from '../../src/virtio/rng.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { socketPair } from '../../src/sys/socket.js';
import { missing, QSD, startBackend, VIRTIOFSD } from './backends.js';
import { RingDriver } from './ring-driver.js';

const RAM = 16 << 20;
const WAIT_MS = 5000;
const logger = pino({ level: process.env['TSIBOX_TEST_LOG'] ?? 'silent' });

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-vhufe-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('our own back end (rng) through the front end: negotiate, fill a buffer, stop the ring', async (t) => {
  const [ours, theirs] = socketPair();
  const conn = new VhostUserConnection(theirs, { device: new RngDevice({ queueSize: 64 }), logger, name: 'rng' });
  const fe = new VhostUserFrontend(ours, { logger, name: 'own-rng', replyTimeoutMs: WAIT_MS });
  const memory = GuestMemory.shared(RAM);
  const drv = new RingDriver(memory);
  const ring = drv.ring(0, 64);
  t.teardown(() => { fe.close(); conn.close(); ring.close(); memory.close(); });

  const hs = await fe.handshake();
  t.equal(hs.queueNum, 1, 'GET_QUEUE_NUM');
  t.equal(hs.protocolFeatures, ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK, 'MQ and REPLY_ACK negotiated');
  await fe.setFeatures(hs.features & Feature.VERSION_1);
  await fe.setMemTable(memory);
  await fe.startVring(0, ring.layout, { kick: ring.kick.fd, call: ring.call.fd, err: ring.err.fd });
  t.ok(conn.backend.active, 'the back end activated the device');
  const head = ring.queue.add([], [64]);
  t.not(head, null);
  ring.queue.kick(true);
  const used = await ring.waitUsed(1, WAIT_MS);
  t.equal(used[0]!.len, 64, 'the rng device wrote 64 bytes into shared RAM');
  t.ok(used[0]!.data.some((b) => b !== 0), 'random bytes arrived');
  t.equal(await fe.stopVring(0), 1, 'GET_VRING_BASE: one buffer consumed');
  t.notOk(conn.backend.active, 'the ring is stopped');
  const closed = new Promise<unknown>((r) => fe.once('close', r));
  conn.close();
  t.match(await closed, { code: 'DEVICE_ERROR', message: /closed the vhost-user socket/ }, 'the back end going away is a close event with an error');
  await t.rejects(fe.getFeatures(), { code: 'DEVICE_ERROR' }, 'later requests fail with the same error');
});

// ---- virtiofsd ----

const FUSE_LOOKUP = 1;
const FUSE_INIT = 26;
const FUSE_ROOT_ID = 1n;
const IN_HEADER = 40;
const OUT_HEADER = 16;

function fuseRequest(opcode: number, unique: bigint, nodeid: bigint, body: Uint8Array): Buffer {
  const b = Buffer.alloc(IN_HEADER + body.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(opcode, 4);
  b.writeBigUInt64LE(unique, 8);
  b.writeBigUInt64LE(nodeid, 16);
  // uid, gid, pid: root, as the guest kernel would say for a root process
  b.set(body, IN_HEADER);
  return b;
}

function fuseInitIn(major: number, minor: number): Buffer {
  const b = Buffer.alloc(16); // fuse_init_in up to 7.35: major, minor, max_readahead, flags
  b.writeUInt32LE(major, 0);
  b.writeUInt32LE(minor, 4);
  b.writeUInt32LE(128 * 1024, 8);
  return b;
}

interface FuseReply { len: number; error: number; unique: bigint; body: Buffer }

function fuseReply(data: Uint8Array): FuseReply {
  const b = Buffer.from(data);
  if (b.length < OUT_HEADER) throw new Error(`FUSE reply of ${b.length} bytes`);
  return { len: b.readUInt32LE(0), error: b.readInt32LE(4), unique: b.readBigUInt64LE(8), body: b.subarray(OUT_HEADER) };
}

t.test('virtiofsd: FUSE_INIT and FUSE_LOOKUP through rings in shared memory', { skip: missing(VIRTIOFSD) ?? (process.getuid?.() !== 0 ? 'virtiofsd needs root' : false) }, async (t) => {
  const dir = tempDir(t);
  const share = join(dir, 'share');
  const sock = join(dir, 'vfs.sock');
  mkdirSync(share);
  const content = 'hello from the host, through virtiofsd\n';
  writeFileSync(join(share, 'hello.txt'), content);

  const proc = startBackend(VIRTIOFSD, [`--socket-path=${sock}`, '-o', `source=${share}`, '-o', 'cache=none']);
  const memory = GuestMemory.shared(RAM);
  const drv = new RingDriver(memory);
  const hiprio = drv.ring(0, 64);
  const req = drv.ring(1, 64, 8192);
  let fe: VhostUserFrontend | null = null;
  t.teardown(async () => {
    fe?.close();
    await proc.stop();
    hiprio.close();
    req.close();
    memory.close();
  });

  fe = await VhostUserFrontend.connect(sock, { logger, name: 'virtiofsd', replyTimeoutMs: WAIT_MS, connectTimeoutMs: WAIT_MS });
  const hs = await fe.handshake();
  t.ok((hs.features & Feature.VERSION_1) !== 0n, `virtiofsd offers VERSION_1 (features 0x${hs.features.toString(16)})`);
  t.ok(hs.queueNum === null || hs.queueNum >= 2, `queues: ${hs.queueNum}`);
  await fe.setFeatures(hs.features & Feature.VERSION_1);
  await fe.setMemTable(memory);
  for (const [i, r] of [[0, hiprio], [1, req]] as const) {
    await fe.startVring(i, r.layout, { kick: r.kick.fd, call: r.call.fd, err: r.err.fd });
  }

  const t0 = process.hrtime.bigint();
  req.queue.add([fuseRequest(FUSE_INIT, 1n, 0n, fuseInitIn(7, 31))], [4096]);
  req.queue.kick(true);
  const [init] = await req.waitUsed(1, WAIT_MS);
  const initUs = Number(process.hrtime.bigint() - t0) / 1000;
  const r1 = fuseReply(init!.data);
  t.equal(r1.error, 0, 'FUSE_INIT: error 0');
  t.equal(r1.unique, 1n, 'FUSE_INIT: unique echoed');
  t.equal(r1.len, init!.len, 'FUSE_INIT: out header len = used len');
  t.equal(r1.body.readUInt32LE(0), 7, 'FUSE_INIT: major 7');
  t.comment(`FUSE_INIT round trip ${initUs.toFixed(0)} µs; virtiofsd speaks 7.${r1.body.readUInt32LE(4)}`);

  const t1 = process.hrtime.bigint();
  req.queue.add([fuseRequest(FUSE_LOOKUP, 2n, FUSE_ROOT_ID, Buffer.from('hello.txt\0'))], [4096]);
  req.queue.kick(true);
  const [lookup] = await req.waitUsed(1, WAIT_MS);
  const lookupUs = Number(process.hrtime.bigint() - t1) / 1000;
  const r2 = fuseReply(lookup!.data);
  t.equal(r2.error, 0, 'FUSE_LOOKUP: error 0');
  t.ok(r2.body.length >= 128, 'FUSE_LOOKUP: a whole fuse_entry_out');
  t.ok(r2.body.readBigUInt64LE(0) > FUSE_ROOT_ID, 'FUSE_LOOKUP: a node id');
  t.equal(r2.body.readBigUInt64LE(48), BigInt(Buffer.byteLength(content)), 'FUSE_LOOKUP: attr.size is the file size');
  t.equal(r2.body.readUInt32LE(100) & 0o170000, 0o100000, 'FUSE_LOOKUP: a regular file');
  t.comment(`FUSE_LOOKUP round trip ${lookupUs.toFixed(0)} µs`);

  req.queue.add([fuseRequest(FUSE_LOOKUP, 3n, FUSE_ROOT_ID, Buffer.from('missing.txt\0'))], [4096]);
  req.queue.kick(true);
  const [miss] = await req.waitUsed(1, WAIT_MS);
  t.equal(fuseReply(miss!.data).error, -2, 'FUSE_LOOKUP of a missing name: -ENOENT');

  t.equal(await fe.stopVring(1), 3, 'GET_VRING_BASE (request queue): three requests consumed');
  t.equal(await fe.stopVring(0), 0, 'GET_VRING_BASE (hiprio): none');
  fe.close();
  const code = await proc.waitExit(WAIT_MS);
  t.equal(code, 0, `virtiofsd exits 0 once the front end hangs up (output: ${proc.output().slice(-300)})`);
});

// ---- qemu-storage-daemon, vhost-user-blk ----

const VIRTIO_BLK_T_IN = 0;
const VIRTIO_BLK_T_OUT = 1;
const VIRTIO_BLK_T_FLUSH = 4;
const VIRTIO_BLK_F_FLUSH = 1n << 9n;

function blkHeader(type: number, sector: bigint): Buffer {
  const b = Buffer.alloc(16); // struct virtio_blk_outhdr: type, ioprio, sector
  b.writeUInt32LE(type, 0);
  b.writeBigUInt64LE(sector, 8);
  return b;
}

t.test('qemu-storage-daemon vhost-user-blk: capacity, write, flush, read back', { skip: missing(QSD) ?? false }, async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'disk.img');
  const sock = join(dir, 'blk.sock');
  const SIZE = 4 << 20;
  writeFileSync(img, '');
  truncateSync(img, SIZE);
  const proc = startBackend(QSD, [
    '--blockdev', `driver=file,node-name=f,filename=${img}`,
    '--blockdev', 'driver=raw,node-name=r,file=f',
    '--export', `type=vhost-user-blk,id=e,node-name=r,addr.type=unix,addr.path=${sock},writable=on`,
  ]);
  const memory = GuestMemory.shared(RAM);
  const drv = new RingDriver(memory);
  const ring = drv.ring(0, 16, 8192);
  let fe: VhostUserFrontend | null = null;
  t.teardown(async () => {
    fe?.close();
    await proc.stop();
    ring.close();
    memory.close();
  });

  fe = await VhostUserFrontend.connect(sock, { logger, name: 'qsd', replyTimeoutMs: WAIT_MS, connectTimeoutMs: WAIT_MS });
  const hs = await fe.handshake({ protocolFeatures: ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG });
  t.ok((hs.protocolFeatures & ProtocolFeature.CONFIG) !== 0n, 'CONFIG negotiated');
  t.equal(hs.queueNum, 1, 'one queue');
  const config = await fe.getConfig(0, 8);
  t.equal(config.readBigUInt64LE(0), BigInt(SIZE / 512), 'GET_CONFIG: capacity in 512-byte sectors');
  t.ok((hs.features & VIRTIO_BLK_F_FLUSH) !== 0n, 'FLUSH offered');
  await fe.setFeatures(hs.features & (Feature.VERSION_1 | VIRTIO_BLK_F_FLUSH));
  await fe.setMemTable(memory);
  await fe.startVring(0, ring.layout, { kick: ring.kick.fd, call: ring.call.fd, err: ring.err.fd });

  const data = Buffer.alloc(4096);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
  const t0 = process.hrtime.bigint();
  ring.queue.add([blkHeader(VIRTIO_BLK_T_OUT, 8n), data], [1]);
  ring.queue.kick(true);
  const [w] = await ring.waitUsed(1, WAIT_MS);
  const writeUs = Number(process.hrtime.bigint() - t0) / 1000;
  t.equal(w!.data[0], 0, 'write: status VIRTIO_BLK_S_OK');

  ring.queue.add([blkHeader(VIRTIO_BLK_T_FLUSH, 0n)], [1]);
  ring.queue.kick(true);
  const [f] = await ring.waitUsed(1, WAIT_MS);
  t.equal(f!.data[0], 0, 'flush: status OK');

  const t1 = process.hrtime.bigint();
  ring.queue.add([blkHeader(VIRTIO_BLK_T_IN, 8n)], [4096, 1]);
  ring.queue.kick(true);
  const [r] = await ring.waitUsed(1, WAIT_MS);
  const readUs = Number(process.hrtime.bigint() - t1) / 1000;
  t.equal(r!.data.length, 4097, 'read: data and status written');
  t.equal(r!.data[4096], 0, 'read: status OK');
  t.same(Buffer.from(r!.data.subarray(0, 4096)), data, 'read back what was written');
  t.same(readFileSync(img).subarray(8 * 512, 8 * 512 + 4096), data, 'the host sees the bytes in the image file');
  t.comment(`4 KiB write ${writeUs.toFixed(0)} µs, 4 KiB read ${readUs.toFixed(0)} µs (round trips incl. kick and call)`);

  t.equal(await fe.stopVring(0), 3, 'GET_VRING_BASE: three requests consumed');
  fe.close();
  const code = await proc.stop();
  t.equal(code, 0, 'qemu-storage-daemon exits 0 on SIGTERM');
});

t.test('a real back end that stops answering is a VM_TIMEOUT; one that dies is a close event', { skip: missing(QSD) ?? false }, async (t) => {
  const dir = tempDir(t);
  const img = join(dir, 'disk.img');
  writeFileSync(img, '');
  truncateSync(img, 1 << 20);
  const start = (sock: string) => startBackend(QSD, [
    '--blockdev', `driver=file,node-name=f,filename=${img}`,
    '--blockdev', 'driver=raw,node-name=r,file=f',
    '--export', `type=vhost-user-blk,id=e,node-name=r,addr.type=unix,addr.path=${sock},writable=on`,
  ]);
  const hung = start(join(dir, 'hung.sock'));
  t.teardown(async () => { hung.child.kill('SIGCONT'); await hung.stop(); });
  const fe1 = await VhostUserFrontend.connect(join(dir, 'hung.sock'), { logger, name: 'qsd-hung', replyTimeoutMs: 300, connectTimeoutMs: WAIT_MS });
  t.teardown(() => fe1.close());
  await fe1.handshake();
  hung.child.kill('SIGSTOP');
  const t0 = Date.now();
  await t.rejects(fe1.getFeatures(), { code: 'VM_TIMEOUT' }, 'a stopped back end: the reply times out');
  t.ok(Date.now() - t0 < 2000, `gave up after ${Date.now() - t0} ms`);
  t.ok(fe1.closed, 'and the connection is closed (a late reply cannot be matched any more)');

  const dying = start(join(dir, 'dying.sock'));
  t.teardown(async () => { await dying.stop(); });
  const fe2 = await VhostUserFrontend.connect(join(dir, 'dying.sock'), { logger, name: 'qsd-dying', replyTimeoutMs: WAIT_MS, connectTimeoutMs: WAIT_MS });
  t.teardown(() => fe2.close());
  await fe2.handshake();
  const closed = new Promise<unknown>((r) => fe2.once('close', r));
  dying.child.kill('SIGKILL');
  t.match(await closed, { code: 'DEVICE_ERROR', message: /closed the vhost-user socket/ }, 'close event with DEVICE_ERROR');
});
