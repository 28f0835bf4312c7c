// The vhost-user back end over a real socketpair, driven by a small software front
// end: memfd guest RAM passed with SCM_RIGHTS, rings written by hand, kick/call
// eventfds. Also: malformed and out-of-order messages close the connection (with a
// logged reason) and nothing else breaks.
import t from 'tap';
import { readdirSync } from 'node:fs';
import { pino } from 'pino';
import { VhostUserConnection } from '../../src/engine/vhost-user/backend/connection.js';
import {
  encodeMemTable, encodeRequest, encodeVringState, F_PROTOCOL_FEATURES, FLAG_NEED_REPLY, HEADER_SIZE, Req, u64Payload,
  VHOST_USER_VERSION,
} from '../../src/engine/vhost-user/protocol.js';
import { EventFd } from '../../src/vmm/eventfd.js';
import { RngDevice } from '../../src/virtio/rng.js';
import { Feature } from '../../src/virtio/constants.js';
import { closeFd, view } from '../../src/sys/libc.js';
import { FdSocketReader, memfdCreate, mmapShared, munmap, sendWithFds, socketPair } from '../../src/sys/socket.js';

const RAM = 1 << 20;
const GPA = 0x10_0000; // guest-physical base of the region
const UVA = 0x7f00_0000_0000n; // the "front end's" virtual address of it

function logCapture(): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const logger = pino({ level: 'debug' }, { write: (s: string) => { lines.push(JSON.parse(s) as Record<string, unknown>); } });
  return { logger, lines };
}

class FrontEnd {
  readonly fd: number;
  readonly reader: FdSocketReader;
  constructor(fd: number) {
    this.fd = fd;
    this.reader = new FdSocketReader(fd);
  }
  send(req: number, payload: Buffer = Buffer.alloc(0), fds: number[] = [], flags = VHOST_USER_VERSION): void {
    sendWithFds(this.fd, encodeRequest(req, payload, flags), fds);
  }
  /** Waits for one reply (or EOF → null). */
  async reply(): Promise<Buffer | null> {
    let buf = Buffer.alloc(0);
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline) {
      const r = this.reader.read();
      if (r.kind === 'eof') return null;
      if (r.kind === 'data') buf = Buffer.concat([buf, r.bytes]);
      if (buf.length >= HEADER_SIZE && buf.length >= HEADER_SIZE + buf.readUInt32LE(8)) return buf.subarray(HEADER_SIZE);
      await new Promise((res) => setTimeout(res, 5));
    }
    throw new Error('no reply');
  }
  async eof(): Promise<boolean> {
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline) {
      const r = this.reader.read();
      if (r.kind === 'eof') return true;
      await new Promise((res) => setTimeout(res, 5));
    }
    return false;
  }
  close(): void {
    this.reader.close();
    closeFd(this.fd);
  }
}

function setup(t: { teardown(fn: () => void): void }) {
  const [ours, theirs] = socketPair();
  const { logger, lines } = logCapture();
  const device = new RngDevice({ queueSize: 256 });
  const conn = new VhostUserConnection(ours, { device, logger, name: 'rng-test' });
  const fe = new FrontEnd(theirs);
  const closed = new Promise<string | null>((r) => conn.once('close', r));
  t.teardown(() => { conn.close(); fe.close(); });
  return { conn, fe, device, lines, closed };
}

t.test('a front end sets up a ring and the rng device fills its buffer', async (t) => {
  const { conn, fe, device } = setup(t);
  fe.send(Req.GET_FEATURES);
  const features = (await fe.reply())!.readBigUInt64LE(0);
  t.ok((features & Feature.VERSION_1) !== 0n && (features & F_PROTOCOL_FEATURES) !== 0n, 'VERSION_1 and PROTOCOL_FEATURES offered');
  fe.send(Req.GET_PROTOCOL_FEATURES);
  const pf = (await fe.reply())!.readBigUInt64LE(0);
  fe.send(Req.SET_PROTOCOL_FEATURES, u64Payload(pf & 0b1001n)); // MQ + REPLY_ACK
  fe.send(Req.GET_QUEUE_NUM);
  t.equal((await fe.reply())!.readBigUInt64LE(0), 1n, 'one queue');
  fe.send(Req.SET_OWNER, undefined, [], VHOST_USER_VERSION | FLAG_NEED_REPLY);
  t.equal((await fe.reply())!.readBigUInt64LE(0), 0n, 'REPLY_ACK: success');
  fe.send(Req.SET_FEATURES, u64Payload(Feature.VERSION_1 | F_PROTOCOL_FEATURES));

  const memfd = memfdCreate('ram', RAM, { sealed: true });
  const addr = mmapShared(memfd, RAM);
  t.teardown(() => { munmap(addr, RAM); });
  const ram = new DataView(view(addr, RAM));
  fe.send(Req.SET_MEM_TABLE, encodeMemTable([{ guestPhysAddr: BigInt(GPA), memorySize: BigInt(RAM), userspaceAddr: UVA, mmapOffset: 0n }]), [memfd], VHOST_USER_VERSION | FLAG_NEED_REPLY);
  t.equal((await fe.reply())!.readBigUInt64LE(0), 0n, 'memory table mapped');
  closeFd(memfd);

  // Ring of 8 at offset 0 (desc), 0x1000 (avail), 0x2000 (used); a 64-byte buffer at 0x3000.
  const size = 8;
  fe.send(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: size }));
  fe.send(Req.SET_VRING_BASE, encodeVringState({ index: 0, num: 0 }));
  const va = Buffer.alloc(40);
  va.writeUInt32LE(0, 0);
  va.writeBigUInt64LE(UVA, 8); // desc
  va.writeBigUInt64LE(UVA + 0x2000n, 16); // used
  va.writeBigUInt64LE(UVA + 0x1000n, 24); // avail
  fe.send(Req.SET_VRING_ADDR, va);
  const call = new EventFd();
  const kick = new EventFd();
  t.teardown(() => { call.close(); kick.close(); });
  fe.send(Req.SET_VRING_CALL, u64Payload(0n), [call.fd]);
  fe.send(Req.SET_VRING_KICK, u64Payload(0n), [kick.fd]);
  fe.send(Req.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 1 }), [], VHOST_USER_VERSION | FLAG_NEED_REPLY);
  t.equal((await fe.reply())!.readBigUInt64LE(0), 0n);
  t.ok(conn.backend.active, 'device active once its ring is started and enabled');

  // desc 0: 64 writable bytes at GPA+0x3000
  ram.setBigUint64(0, BigInt(GPA + 0x3000), true);
  ram.setUint32(8, 64, true);
  ram.setUint16(12, 2, true);
  ram.setUint16(0x1000 + 4, 0, true); // avail.ring[0] = 0
  ram.setUint16(0x1000 + 2, 1, true); // avail.idx = 1
  kick.signal();
  const deadline = Date.now() + 3000;
  while (call.take() === 0n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  t.equal(ram.getUint16(0x2000 + 2, true), 1, 'used.idx advanced');
  t.equal(ram.getUint32(0x2000 + 8, true), 64, 'used.len = 64');
  t.equal(device.bytesServed, 64);
  t.notSame(new Uint8Array(ram.buffer, 0x3000, 64), new Uint8Array(64), 'buffer filled');

  fe.send(Req.GET_VRING_BASE, encodeVringState({ index: 0, num: 0 }));
  t.same((await fe.reply())!.readUInt32LE(4), 1, 'GET_VRING_BASE reports the next avail index');
  t.notOk(conn.backend.active, 'stopping the ring deactivates the device');
  fe.send(Req.SET_OWNER); // out of order: already owned
  t.ok(await fe.eof(), 'connection closed after a protocol error');
});

const badCases: Array<[string, (fe: FrontEnd) => void, RegExp]> = [
  ['vring message before SET_OWNER', (fe) => fe.send(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: 8 })), /before SET_OWNER/],
  ['features never offered', (fe) => fe.send(Req.SET_FEATURES, u64Payload(1n << 63n)), /never offered/],
  ['truncated payload', (fe) => { fe.send(Req.SET_OWNER); fe.send(Req.SET_VRING_ADDR, Buffer.alloc(8)); }, /need 40/],
  ['ring that does not exist', (fe) => { fe.send(Req.SET_OWNER); fe.send(Req.SET_VRING_NUM, encodeVringState({ index: 5, num: 8 })); }, /ring 5 does not exist/],
  ['ring size not a power of two', (fe) => { fe.send(Req.SET_OWNER); fe.send(Req.SET_VRING_NUM, encodeVringState({ index: 0, num: 7 })); }, /power of two/],
  ['addresses before the memory table', (fe) => { fe.send(Req.SET_OWNER); fe.send(Req.SET_VRING_ADDR, Buffer.alloc(40)); }, /before SET_MEM_TABLE/],
  ['memory table without fds', (fe) => { fe.send(Req.SET_OWNER); fe.send(Req.SET_MEM_TABLE, encodeMemTable([{ guestPhysAddr: 0n, memorySize: 4096n, userspaceAddr: 0n, mmapOffset: 0n }])); }, /1 regions but 0 file descriptors/],
  ['kick without fd', (fe) => { fe.send(Req.SET_OWNER); fe.send(Req.SET_VRING_KICK, u64Payload(0x100n)); }, /polling mode/],
  ['unknown request', (fe) => fe.send(99), /request 99 is not supported/],
  ['bad version', (fe) => fe.send(Req.GET_FEATURES, undefined, [], 3), /unsupported version/],
  ['GET_CONFIG not negotiated', (fe) => fe.send(Req.GET_CONFIG, Buffer.alloc(12)), /CONFIG protocol feature/],
];

for (const [name, act, reason] of badCases) {
  t.test(`protocol error closes the connection: ${name}`, async (t) => {
    const { fe, lines, closed } = setup(t);
    act(fe);
    t.match(await closed, reason, 'close reason');
    t.ok(await fe.eof(), 'the front end sees end of stream');
    t.ok(lines.some((l) => l['msg'] === 'vhost-user connection closed' && reason.test(String(l['reason']))), 'reason logged');
  });
}

t.test('descriptors sent with a rejected message are closed, not leaked', async (t) => {
  const { fe, closed } = setup(t);
  const e = new EventFd();
  const before = new Set(fds());
  fe.send(Req.SET_VRING_CALL, u64Payload(0n), [e.fd]); // before SET_OWNER: rejected
  await closed;
  const extra = fds().filter((fd) => !before.has(fd));
  t.same(extra, [], 'no descriptor left open by the rejected message');
  e.close();
});

function fds(): string[] {
  return readdirSync('/proc/self/fd');
}
