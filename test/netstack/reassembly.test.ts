// Reassembly and fragmentation: fragmentFrame then Reassembler gives back the packet
// (IPv4 with options, IPv6 with hop-by-hop options, any order); overlaps, bad lengths,
// conflicting ends and every limit drop the datagram; timeouts forget it.
import t from 'tap';
import {
  decodeFrame, encodeEthernet, encodeIPv4, encodeIPv6, encodeUdp, EtherType, fragmentFrame, IpProto, Reassembler,
  type IpFrame, type ReassemblyResult,
} from '../../netstack/index.js';
import { Prng } from '../support/prng.js';

const SRC4 = Uint8Array.of(10, 0, 2, 15);
const DST4 = Uint8Array.of(203, 0, 113, 9);
const SRC6 = Buffer.from('fd000001000000000000000000000015', 'hex');
const DST6 = Buffer.from('fd000001000000000000000000000002', 'hex');
const MAC = Buffer.from('02000000000f', 'hex');

const ipFrame = (f: Buffer): IpFrame => {
  const d = decodeFrame(f);
  if (!d.ok || d.value.kind !== 'ip') throw new Error(`not an IP frame: ${d.ok ? d.value.kind : d.error}`);
  return d.value;
};

function packet4(size: number, options?: Uint8Array): Buffer {
  return encodeEthernet(MAC, MAC, EtherType.IPv4, encodeIPv4({ src: SRC4, dst: DST4, protocol: IpProto.UDP, id: 5, ...(options ? { options } : {}) }, encodeUdp(1, 2, Buffer.alloc(size, 0x5a).map((_, i) => i & 0xff), SRC4, DST4)));
}

function packet6(size: number, hopByHop: boolean): Buffer {
  const udp = encodeUdp(1, 2, Buffer.alloc(size).map((_, i) => (i * 7) & 0xff), SRC6, DST6);
  if (!hopByHop) return encodeEthernet(MAC, MAC, EtherType.IPv6, encodeIPv6({ src: SRC6, dst: DST6, nextHeader: IpProto.UDP }, udp));
  const hbh = Buffer.from([IpProto.UDP, 0, 1, 4, 0, 0, 0, 0]); // PadN
  return encodeEthernet(MAC, MAC, EtherType.IPv6, encodeIPv6({ src: SRC6, dst: DST6, nextHeader: 0 }, Buffer.concat([hbh, udp])));
}

function feed(re: Reassembler, frames: Buffer[], now = 0): ReassemblyResult[] {
  return frames.map((f) => re.add(f, ipFrame(f), now));
}

t.test('fragmentFrame then Reassembler: the same packet, in any order (IPv4, IPv6)', async (t) => {
  const rng = new Prng(7);
  let cases = 0;
  for (let i = 0; i < 200; i++) {
    const v6 = rng.chance(0.5);
    const size = rng.below(20_000);
    const original = v6 ? packet6(size, rng.chance(0.5)) : packet4(size, rng.chance(0.3) ? Buffer.from([1, 1, 1, 0]) : undefined);
    const mtu = v6 ? 1280 + 8 * rng.below(100) : 68 + 8 * rng.below(200);
    // (a packet that fits comes back as one piece: IPv4 as it was, IPv6 as an atomic fragment)
    const parts = fragmentFrame(original, ipFrame(original), mtu, rng.u32());
    if (parts === null) { t.fail('could not fragment'); continue; }
    for (const p of parts) {
      const f = ipFrame(p);
      if (parts.length > 1 && f.ip.fragment === null) t.fail('a piece that is not a fragment');
      if (f.ip.end - f.ip.offset > mtu) t.fail(`piece of ${f.ip.end - f.ip.offset} bytes above MTU ${mtu}`);
    }
    for (let k = parts.length - 1; k > 0; k--) { const j = rng.below(k + 1); [parts[k], parts[j]] = [parts[j]!, parts[k]!]; }
    // (fragments down to 8 bytes each: more than the default 256 per datagram)
    const re = new Reassembler({ maxFragments: 8192 });
    const results = feed(re, parts);
    const done = results.filter((r) => r.status === 'complete');
    if (done.length !== 1) { t.fail(`${done.length} completions for ${parts.length} pieces`); continue; }
    const whole = (done[0] as { frame: Buffer }).frame;
    // IPv4: the header differs only in id (and the checksum); compare from the payload on.
    const off = v6 ? 14 : 14 + (original[14]! & 0x0f) * 4;
    if (!whole.subarray(off).equals(original.subarray(off))) t.fail(`v${v6 ? 6 : 4} ${size} bytes mtu ${mtu}: different bytes`);
    const d = ipFrame(whole);
    if (d.ip.fragment !== null || d.l4.kind !== 'udp') t.fail('reassembled packet is not a whole UDP datagram');
    t.equal(re.stats().bytes, 0);
    cases++;
  }
  t.equal(cases, 200);
});

t.test('overlap, conflicting ends, bad lengths drop the datagram; later fragments are discarded', async (t) => {
  const frag = (off: number, more: boolean, len: number, id = 1): Buffer =>
    encodeEthernet(MAC, MAC, EtherType.IPv4, encodeIPv4({ src: SRC4, dst: DST4, protocol: IpProto.UDP, id, fragmentOffset: off, moreFragments: more }, Buffer.alloc(len)));
  const re = new Reassembler();
  t.match(feed(re, [frag(0, true, 16), frag(8, true, 16)]), [{ status: 'held' }, { status: 'dropped', reason: 'overlap' }]);
  t.match(feed(re, [frag(24, false, 8)]), [{ status: 'dropped', reason: 'discarded' }]);
  t.match(feed(re, [frag(0, true, 12, 2)]), [{ status: 'dropped', reason: 'bad-length' }]);
  t.match(feed(re, [frag(16, false, 8, 3), frag(16, false, 16, 3)]), [{ status: 'held' }, { status: 'dropped', reason: 'overlap' }], 'two ends');
  t.match(feed(re, [frag(16, false, 8, 4), frag(24, true, 8, 4)]), [{ status: 'held' }, { status: 'dropped', reason: 'overlap' }], 'data past the end');
  t.match(feed(re, [frag(65528, false, 16, 5)]), [{ status: 'dropped', reason: 'too-big' }]);
  t.match(feed(re, [frag(0, true, 16, 6), frag(0, true, 16, 6), frag(16, false, 8, 6)]), [{ status: 'held' }, { status: 'held' }, { status: 'complete' }], 'exact duplicate ignored');
  t.equal(re.stats().bytes, 0);
  // Timeout: a datagram and its tombstone go.
  t.equal(re.stats().datagrams, 5);
  re.sweep(30_000);
  t.equal(re.stats().datagrams, 0);
});

t.test('limits: datagrams, total bytes, fragments per datagram', async (t) => {
  const frag = (id: number, off: number, len: number): Buffer =>
    encodeEthernet(MAC, MAC, EtherType.IPv6, encodeIPv6({ src: SRC6, dst: DST6, nextHeader: 44 }, Buffer.concat([Buffer.from([17, 0, off >> 8, (off & 0xf8) | 1, 0, 0, id >> 8, id & 0xff]), Buffer.alloc(len)])));
  const re = new Reassembler({ maxDatagrams: 4, maxTotalBytes: 4096, maxFragments: 3 });
  for (let id = 0; id < 50; id++) feed(re, [frag(id, 0, 1000)]);
  t.match(re.stats(), { datagrams: 4, evicted: 46 });
  t.ok(re.stats().bytes <= 4096);
  feed(re, [frag(100, 0, 3000)]);
  t.ok(re.stats().bytes <= 4096, 'older datagrams make room');
  t.match(feed(re, [frag(200, 0, 8), frag(200, 8, 8), frag(200, 16, 8), frag(200, 24, 8)]).at(-1), { status: 'dropped', reason: 'too-many-fragments' });
  t.match(feed(new Reassembler({ maxTotalBytes: 100 }), [frag(1, 0, 200)]), [{ status: 'dropped', reason: 'no-room' }]);
});
