// passt's stream framing: property tests (any split of any frame sequence gives the
// same frames) and hostile lengths (zero, runt, oversized, truncated prefix).
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { encodeFrame, FrameReader, FramingError, LENGTH_PREFIX, MIN_FRAME } from '../../proxies/frame-stream.js';

let seed = 987654321;
const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };

function randomFrames(count: number, max: number): Buffer[] {
  return Array.from({ length: count }, () => randomBytes(MIN_FRAME + rnd(max - MIN_FRAME + 1)));
}

function splitRandomly(b: Buffer, maxPiece: number): Buffer[] {
  const parts: Buffer[] = [];
  for (let at = 0; at < b.length;) {
    const n = Math.min(b.length - at, 1 + rnd(maxPiece));
    parts.push(b.subarray(at, at + n));
    at += n;
  }
  return parts;
}

t.test('encode: 4-byte big-endian length then the frame', (t) => {
  const f = Buffer.from('0123456789abcdef', 'hex');
  t.equal(encodeFrame(f).toString('hex'), '00000008' + '0123456789abcdef');
  const big = Buffer.alloc(0x10203);
  t.equal(encodeFrame(big).subarray(0, 4).toString('hex'), '00010203');
  t.end();
});

t.test('property: every split of a frame sequence decodes to the same frames', (t) => {
  for (let round = 0; round < 300; round++) {
    const frames = randomFrames(1 + rnd(20), rnd(3) === 0 ? 65536 : 2000);
    const stream = Buffer.concat(frames.map(encodeFrame));
    const maxPiece = [1, 3, 7, 64, 1500, 70000][rnd(6)]!;
    const r = new FrameReader();
    const got: Buffer[] = [];
    for (const p of splitRandomly(stream, maxPiece)) got.push(...r.feed(p));
    if (got.length !== frames.length || got.some((g, i) => !g.equals(frames[i]!))) {
      t.fail(`round ${round}: ${got.length} frames decoded, ${frames.length} sent (pieces up to ${maxPiece})`);
      return t.end();
    }
    t.equal(r.buffered, 0);
  }
  t.pass('300 random streams, random splits');
  t.end();
});

t.test('frames returned are independent copies (the input chunk may be reused)', (t) => {
  const f = randomBytes(100);
  const chunk = Buffer.from(encodeFrame(f));
  const r = new FrameReader();
  const [got] = r.feed(chunk);
  chunk.fill(0);
  t.ok(got!.equals(f));
  t.end();
});

t.test('partial state: a prefix or frame cut anywhere waits for the rest', (t) => {
  const f = randomBytes(50);
  const enc = encodeFrame(f);
  for (let cut = 0; cut <= enc.length; cut++) {
    const r = new FrameReader();
    const a = r.feed(enc.subarray(0, cut));
    t.equal(a.length, cut === enc.length ? 1 : 0);
    t.equal(r.buffered, cut === enc.length ? 0 : cut);
    const b = r.feed(enc.subarray(cut));
    t.equal(a.length + b.length, 1);
  }
  t.end();
});

t.test('hostile lengths are a clean FramingError, and the reader stays failed', (t) => {
  const cases: Array<[string, Buffer, RegExp]> = [
    ['zero length', Buffer.from('00000000', 'hex'), /length 0 /],
    ['runt (13 bytes)', Buffer.concat([Buffer.from('0000000d', 'hex'), Buffer.alloc(13)]), /length 13 /],
    ['oversized (65537)', Buffer.from('00010001', 'hex'), /length 65537 /],
    ['huge (0xffffffff)', Buffer.from('ffffffff', 'hex'), /length 4294967295 /],
  ];
  for (const [name, bytes, re] of cases) {
    const r = new FrameReader();
    const good = encodeFrame(randomBytes(20));
    t.equal(r.feed(good).length, 1, `${name}: a good frame first`);
    t.throws(() => r.feed(bytes), { name: 'FramingError', message: re }, name);
    t.throws(() => r.feed(good), FramingError, `${name}: stays failed`);
  }
  const small = new FrameReader(100);
  t.throws(() => small.feed(encodeFrame(Buffer.alloc(101))), /outside 14\.\.100/);
  t.end();
});

t.test('fuzz: random garbage never throws anything but FramingError and never allocates past the limit', (t) => {
  let framingErrors = 0;
  for (let round = 0; round < 2000; round++) {
    const r = new FrameReader(4096);
    const garbage = randomBytes(rnd(300));
    try {
      for (const p of splitRandomly(garbage, 1 + rnd(40))) {
        for (const f of r.feed(p)) if (f.length > 4096 || f.length < MIN_FRAME) throw new Error('bad frame size');
      }
      if (r.buffered > LENGTH_PREFIX + 4096) throw new Error('buffered past the limit');
    } catch (e) {
      if (!(e instanceof FramingError)) throw e;
      framingErrors++;
    }
  }
  t.ok(framingErrors > 1000, `${framingErrors} of 2000 garbage streams rejected`);
  t.end();
});
