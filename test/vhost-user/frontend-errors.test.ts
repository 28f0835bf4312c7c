// The vhost-user front end against a scripted, misbehaving back end over a socketpair:
// a hung back end is a VM_TIMEOUT (never a hang), a malformed or unexpected reply
// closes the connection with DEVICE_ERROR, a refused REPLY_ACK is an error that leaves
// the connection usable, descriptors a back end pushes at us are closed, and bad
// arguments are refused before anything is sent.
import t from 'tap';
import { readdirSync } from 'node:fs';
import koffi from 'koffi';
import { pino } from 'pino';
import { VhostUserFrontend } from '../../src/engine/vhost-user/frontend/frontend.js';
import {
  encodeConfig, encodeReply, encodeVringState, F_PROTOCOL_FEATURES, FLAG_NEED_REPLY, HEADER_SIZE, MessageReader, ProtocolFeature,
  Req, u64Payload, VHOST_USER_VERSION, type Message,
} from '../../src/engine/vhost-user/protocol.js';
import { closeFd } from '../../src/sys/libc.js';
import { FdSocketReader, sendWithFds, socketPair } from '../../src/sys/socket.js';
import { EventFd } from '../../src/vmm/eventfd.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';

const logger = pino({ level: 'silent' });

/** A back end that answers each request with whatever `answer` returns (null: stay silent). */
function scripted(t: { teardown(fn: () => void): void }, answer: (m: Message) => Buffer | null, opts: { timeoutMs?: number; fds?: () => number[] } = {}) {
  const [ours, theirs] = socketPair();
  const reader = new FdSocketReader(theirs);
  const framer = new MessageReader();
  const seen: Message[] = [];
  let open = true;
  const poll = koffi.node.poll(theirs, { readable: true }, () => {
    while (open) {
      let r;
      try {
        r = reader.read(framer.wanted);
      } catch {
        hangUp(); // ECONNRESET: the front end closed with our reply unread
        return;
      }
      if (r.kind === 'eof') hangUp();
      if (r.kind !== 'data') return;
      for (const m of framer.feed(r.bytes, r.fds)) {
        seen.push(m);
        for (const fd of m.fds) closeFd(fd);
        const reply = answer(m);
        try {
          if (reply !== null && open) sendWithFds(theirs, reply, opts.fds?.() ?? []);
        } catch {
          hangUp();
        }
      }
    }
  });
  const hangUp = (): void => {
    if (!open) return;
    open = false;
    poll.stop();
    poll.close();
    reader.close();
    closeFd(theirs);
  };
  const fe = new VhostUserFrontend(ours, { logger, name: 'fake', replyTimeoutMs: opts.timeoutMs ?? 2000 });
  t.teardown(() => { fe.close(); hangUp(); });
  return { fe, seen, hangUp };
}

const FEATURES = F_PROTOCOL_FEATURES | (1n << 32n);

/** A well-behaved answer for the handshake; `over` overrides single requests. */
function polite(over: Partial<Record<number, (m: Message) => Buffer | null>> = {}, protocol = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK) {
  return (m: Message): Buffer | null => {
    const o = over[m.request];
    if (o !== undefined) return o(m);
    switch (m.request) {
      case Req.GET_FEATURES: return encodeReply(m.request, u64Payload(FEATURES));
      case Req.GET_PROTOCOL_FEATURES: return encodeReply(m.request, u64Payload(protocol));
      case Req.GET_QUEUE_NUM: return encodeReply(m.request, u64Payload(2n));
      case Req.GET_VRING_BASE: return encodeReply(m.request, m.payload);
      default:
        return (m.flags & FLAG_NEED_REPLY) !== 0 ? encodeReply(m.request, u64Payload(0n)) : null;
    }
  };
}

t.test('a hung back end: the reply times out with VM_TIMEOUT and the connection closes', async (t) => {
  const { fe } = scripted(t, () => null, { timeoutMs: 200 });
  const closed = new Promise<unknown>((r) => fe.once('close', r));
  const t0 = Date.now();
  await t.rejects(fe.getFeatures(), { code: 'VM_TIMEOUT', message: /no reply to GET_FEATURES within 200 ms/ });
  t.ok(Date.now() - t0 < 1500, 'bounded by the reply timeout');
  t.match(await closed, { code: 'VM_TIMEOUT' }, 'close event carries the error');
  t.ok(fe.closed);
  await t.rejects(fe.setOwner(), { code: 'VM_TIMEOUT' }, 'later requests fail at once');
});

t.test('the back end closing the socket mid-request rejects it and emits close', async (t) => {
  let hang: () => void = () => undefined;
  const s = scripted(t, () => { setImmediate(() => hang()); return null; });
  hang = s.hangUp;
  const closed = new Promise<unknown>((r) => s.fe.once('close', r));
  await t.rejects(s.fe.getProtocolFeatures(), { code: 'DEVICE_ERROR', message: /closed the vhost-user socket while waiting for the reply to GET_PROTOCOL_FEATURES/ });
  t.match(await closed, { code: 'DEVICE_ERROR' });
});

t.test('malformed replies close the connection with DEVICE_ERROR', async (t) => {
  const cases: Array<[string, (fe: VhostUserFrontend) => Promise<unknown>, (m: Message) => Buffer | null, RegExp]> = [
    ['short u64', (fe) => fe.getFeatures(), (m) => encodeReply(m.request, Buffer.alloc(4)), /GET_FEATURES reply payload is 4 bytes/],
    ['reply to another request', (fe) => fe.getFeatures(), () => encodeReply(Req.GET_QUEUE_NUM, u64Payload(1n)), /unexpected reply GET_QUEUE_NUM to GET_FEATURES/],
    ['a request instead of a reply', (fe) => fe.getFeatures(), (m) => {
      const b = encodeReply(m.request, u64Payload(1n));
      b.writeUInt32LE(VHOST_USER_VERSION, 4);
      return b;
    }, /sent a request on the main channel/],
    ['oversized payload', (fe) => fe.getFeatures(), (m) => {
      const b = Buffer.alloc(HEADER_SIZE);
      b.writeUInt32LE(m.request, 0);
      b.writeUInt32LE(VHOST_USER_VERSION | 0x4, 4);
      b.writeUInt32LE(1 << 30, 8);
      return b;
    }, /exceeds/],
    ['GET_QUEUE_NUM of 0', (fe) => fe.getQueueNum(), (m) => encodeReply(m.request, u64Payload(0n)), /0 queues is outside 1..256/],
    ['GET_QUEUE_NUM of 100000', (fe) => fe.getQueueNum(), (m) => encodeReply(m.request, u64Payload(100000n)), /outside 1..256/],
    ['GET_VRING_BASE for another ring', (fe) => fe.getVringBase(1), (m) => encodeReply(m.request, encodeVringState({ index: 0, num: 5 })), /asked for ring 1/],
    ['GET_VRING_BASE beyond 16 bits', (fe) => fe.getVringBase(0), (m) => encodeReply(m.request, encodeVringState({ index: 0, num: 0x10000 })), /not a 16-bit index/],
  ];
  for (const [name, call, answer, why] of cases) {
    const { fe } = scripted(t, answer);
    await t.rejects(call(fe), { code: 'DEVICE_ERROR', message: why }, name);
    t.ok(fe.closed, `${name}: connection closed`);
  }
});

t.test('GET_CONFIG checks the range the back end answers', async (t) => {
  const protocol = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG;
  const good = scripted(t, polite({ [Req.GET_CONFIG]: (m) => encodeReply(m.request, encodeConfig({ offset: 0, size: 8, flags: 0, data: u64Payload(2048n) })) }, protocol));
  await good.fe.handshake({ protocolFeatures: protocol });
  t.equal((await good.fe.getConfig(0, 8)).readBigUInt64LE(0), 2048n);
  const empty = scripted(t, polite({ [Req.GET_CONFIG]: (m) => encodeReply(m.request, Buffer.alloc(0)) }, protocol));
  await empty.fe.handshake({ protocolFeatures: protocol });
  await t.rejects(empty.fe.getConfig(0, 8), { code: 'DEVICE_ERROR', message: /GET_CONFIG failed in the back end/ });
  t.notOk(empty.fe.closed, 'a back end saying it failed is not a protocol violation');
  const wrong = scripted(t, polite({ [Req.GET_CONFIG]: (m) => encodeReply(m.request, encodeConfig({ offset: 0, size: 4, flags: 0, data: Buffer.alloc(4) })) }, protocol));
  await wrong.fe.handshake({ protocolFeatures: protocol });
  await t.rejects(wrong.fe.getConfig(0, 8), { code: 'DEVICE_ERROR', message: /asked for 0\+8/ });
  const none = scripted(t, polite());
  await none.fe.handshake();
  await t.rejects(none.fe.getConfig(0, 8), { code: 'INVALID_STATE' }, 'not without CONFIG');
  await t.rejects(good.fe.getConfig(250, 8), { code: 'INVALID_ARGUMENT' }, 'range beyond 256 bytes');
});

t.test('handshake acks only what we implement and both sides offer; REPLY_ACK failures are errors', async (t) => {
  let refuse = false;
  const { fe, seen } = scripted(t, polite({
    [Req.SET_VRING_NUM]: (m) => encodeReply(m.request, u64Payload(refuse ? 1n : 0n)),
  }, ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.RESET_DEVICE | (1n << 5n)));
  const hs = await fe.handshake({ protocolFeatures: ~0n });
  t.equal(hs.protocolFeatures, ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK, 'RESET_DEVICE and SLAVE_REQ are offered but never acked');
  t.equal(hs.queueNum, 2);
  t.same(seen.map((m) => m.request), [Req.GET_FEATURES, Req.SET_OWNER, Req.GET_PROTOCOL_FEATURES, Req.SET_PROTOCOL_FEATURES, Req.GET_QUEUE_NUM]);
  t.equal(seen[1]!.flags & FLAG_NEED_REPLY, 0, 'no NEED_REPLY before REPLY_ACK is negotiated');
  await fe.setFeatures(1n << 32n);
  const sf = seen.at(-1)!;
  t.equal(sf.payload.readBigUInt64LE(0), (1n << 32n) | F_PROTOCOL_FEATURES, 'SET_FEATURES keeps bit 30 once protocol features are negotiated');
  t.not(sf.flags & FLAG_NEED_REPLY, 0, 'NEED_REPLY once REPLY_ACK is in force');
  refuse = true;
  await t.rejects(fe.setVringNum(0, 64), { code: 'DEVICE_ERROR', message: /refused SET_VRING_NUM \(status 1\)/ });
  t.notOk(fe.closed, 'a refused request leaves the connection usable');
  refuse = false;
  await fe.setVringNum(0, 64);
  t.equal(await fe.getVringBase(0), 0);
});

t.test('descriptors a back end sends with a reply are closed', async (t) => {
  const count = (): number => readdirSync('/proc/self/fd').length;
  const e = new EventFd();
  t.teardown(() => e.close());
  const { fe } = scripted(t, polite(), { fds: () => [e.fd, e.fd, e.fd] });
  const before = count();
  for (let i = 0; i < 5; i++) await fe.getFeatures();
  t.equal(count(), before, 'no descriptor leaked');
});

t.test('bad arguments are refused before anything is sent', async (t) => {
  const { fe, seen } = scripted(t, polite());
  const anon = GuestMemory.anonymous(1 << 20);
  const shared = GuestMemory.shared(1 << 20);
  t.teardown(() => { anon.close(); shared.close(); });
  await fe.handshake(); // REPLY_ACK: each request below completes once the back end has it
  seen.length = 0;
  await t.rejects(fe.setMemTable(anon), { code: 'INVALID_ARGUMENT', message: /GuestMemory.shared/ });
  await t.rejects(fe.setVringAddr(0, { size: 64, desc: 0, avail: 0x1000, used: 0x2000 }), { code: 'INVALID_STATE' }, 'SET_VRING_ADDR before SET_MEM_TABLE');
  await fe.setMemTable(shared);
  await t.rejects(fe.setVringAddr(0, { size: 64, desc: (1 << 20) - 16, avail: 0x1000, used: 0x2000 }), { code: 'GUEST_MEMORY_RANGE' });
  await t.rejects(fe.setVringNum(0, 3), { code: 'INVALID_ARGUMENT' });
  await t.rejects(fe.setVringBase(0, 0x10000), { code: 'INVALID_ARGUMENT' });
  await t.rejects(fe.setVringKick(256, 3), { code: 'INVALID_ARGUMENT' });
  await t.rejects(fe.setProtocolFeatures(ProtocolFeature.RESET_DEVICE), { code: 'INVALID_ARGUMENT' });
  t.same(seen.map((m) => m.request), [Req.SET_MEM_TABLE], 'only the valid SET_MEM_TABLE went out');
  const table = seen[0]!;
  t.equal(table.payload.readUInt32LE(0), 1, 'one region');
  t.equal(table.payload.readBigUInt64LE(8), 0n, 'guest phys 0');
  t.equal(table.payload.readBigUInt64LE(16), BigInt(1 << 20), 'size');
  t.equal(table.payload.readBigUInt64LE(24), shared.regions[0]!.hostAddress, 'our user address');
  t.equal(table.payload.readBigUInt64LE(32), 0n, 'mmap offset');
  await fe.setVringAddr(0, { size: 64, desc: 0x1000, avail: 0x2000, used: 0x3000 });
  const addr = seen.at(-1)!.payload;
  const base = shared.regions[0]!.hostAddress;
  t.same([addr.readBigUInt64LE(8), addr.readBigUInt64LE(16), addr.readBigUInt64LE(24)], [base + 0x1000n, base + 0x3000n, base + 0x2000n], 'desc, used, avail as our user addresses');
});

t.test('connect gives up with DEVICE_ERROR when nothing listens', async (t) => {
  const t0 = Date.now();
  await t.rejects(VhostUserFrontend.connect('/tmp/tsibox-vhufe-no-such.sock', { logger, connectTimeoutMs: 150 }), { code: 'DEVICE_ERROR', message: /did not accept a connection in time/ });
  t.ok(Date.now() - t0 < 1500);
});
