// The vhost-user message framer: property and fuzz tests (no I/O).
import t from 'tap';
import {
  encodeRequest, FLAG_NEED_REPLY, HEADER_SIZE, MAX_PAYLOAD, MessageReader, ProtocolError, Req, VHOST_USER_VERSION,
  decodeConfig, decodeMemTable, decodeVringAddr, type Message,
} from '../../src/engine/vhost-user/protocol.js';

/** xorshift32: deterministic "random" for reproducible runs (seed in the test name). */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 0x1_0000_0000;
  };
}

t.test('any split of a valid stream yields the same messages, with each fd on its message', async (t) => {
  for (let seed = 1; seed <= 200; seed++) {
    const r = rng(seed);
    const sent: Array<{ req: number; payload: Buffer; fds: number[] }> = [];
    let nextFd = 100;
    for (let i = 0; i < 1 + Math.floor(r() * 20); i++) {
      const len = Math.floor(r() * (r() < 0.1 ? MAX_PAYLOAD : 64));
      const payload = Buffer.alloc(len, i);
      const fds = r() < 0.3 ? Array.from({ length: 1 + Math.floor(r() * 3) }, () => nextFd++) : [];
      sent.push({ req: 1 + Math.floor(r() * 40), payload, fds });
    }
    const reader = new MessageReader();
    const got: Message[] = [];
    // Feed like the connection does: never more than `wanted` bytes per read; a
    // message's fds come with the read holding its first byte.
    for (const m of sent) {
      const bytes = encodeRequest(m.req, m.payload, VHOST_USER_VERSION | (r() < 0.5 ? FLAG_NEED_REPLY : 0));
      let off = 0;
      let first = true;
      while (off < bytes.length) {
        const n = Math.max(1, Math.min(reader.wanted, 1 + Math.floor(r() * 32), bytes.length - off));
        got.push(...reader.feed(bytes.subarray(off, off + n), first ? m.fds : []));
        first = false;
        off += n;
      }
    }
    t.equal(got.length, sent.length, `seed ${seed}: message count`);
    for (const [i, m] of sent.entries()) {
      if (got[i]?.request !== m.req || !got[i]!.payload.equals(m.payload) || got[i]!.fds.join() !== m.fds.join()) {
        t.fail(`seed ${seed}: message ${i} differs`);
        return;
      }
    }
    t.equal(reader.buffered, 0);
    t.same(reader.drainFds(), []);
  }
});

t.test('fuzz: arbitrary bytes never throw anything but ProtocolError, and no fd is lost', async (t) => {
  let errors = 0;
  let messages = 0;
  for (let seed = 1; seed <= 2000; seed++) {
    const r = rng(seed * 7919);
    const reader = new MessageReader();
    const fed: number[] = [];
    const delivered: number[] = [];
    let nextFd = 1000;
    try {
      for (let i = 0; i < 20; i++) {
        const len = Math.floor(r() * 40);
        const chunk = Buffer.alloc(len);
        for (let j = 0; j < len; j++) {
          // Bias towards plausible headers so framing paths are exercised.
          chunk[j] = r() < 0.6 ? [0, 1, 2, 8, 9, 12, 0x10][Math.floor(r() * 7)]! : Math.floor(r() * 256);
        }
        const fds = r() < 0.2 ? [nextFd++] : [];
        fed.push(...fds);
        for (const m of reader.feed(chunk, fds)) {
          messages++;
          delivered.push(...m.fds);
        }
      }
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      errors++;
      t.throws(() => reader.feed(Buffer.alloc(1)), ProtocolError, 'a failed reader stays failed');
    }
    const all = [...delivered, ...reader.drainFds()].sort((a, b) => a - b);
    if (all.join() !== fed.sort((a, b) => a - b).join()) {
      t.fail(`seed ${seed}: fds delivered + drained != fds fed`);
      return;
    }
  }
  t.ok(errors > 0, `some inputs were rejected (${errors})`);
  t.ok(messages > 0, `some inputs framed messages (${messages})`);
});

t.test('bad headers are rejected with a reason', async (t) => {
  const bad = (flags: number, size: number): Buffer => {
    const b = Buffer.alloc(HEADER_SIZE);
    b.writeUInt32LE(Req.GET_FEATURES, 0);
    b.writeUInt32LE(flags, 4);
    b.writeUInt32LE(size, 8);
    return b;
  };
  t.throws(() => new MessageReader().feed(bad(2, 0)), /unsupported version/);
  t.throws(() => new MessageReader().feed(bad(1 | 4, 0)), /reply sent to the backend/);
  t.throws(() => new MessageReader().feed(bad(1, MAX_PAYLOAD + 1)), /exceeds/);
  t.throws(() => new MessageReader().feed(bad(1, 0xffff_ffff)), /exceeds/);
});

t.test('payload decoders check sizes and ranges', async (t) => {
  const msg = (request: number, payload: Buffer): Message => ({ request, flags: 1, payload, fds: [] });
  t.throws(() => decodeVringAddr(msg(Req.SET_VRING_ADDR, Buffer.alloc(39))), /need 40/);
  const mt = Buffer.alloc(8);
  mt.writeUInt32LE(9, 0);
  t.throws(() => decodeMemTable(msg(Req.SET_MEM_TABLE, mt)), /9 regions/);
  mt.writeUInt32LE(2, 0);
  t.throws(() => decodeMemTable(msg(Req.SET_MEM_TABLE, mt)), /need 72/);
  const cfg = Buffer.alloc(12);
  cfg.writeUInt32LE(250, 0);
  cfg.writeUInt32LE(10, 4);
  t.throws(() => decodeConfig(msg(Req.GET_CONFIG, cfg)), /exceeds 256/);
});
