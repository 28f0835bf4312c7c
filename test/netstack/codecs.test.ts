// netstack codecs: known-answer checksums, hostile headers (every bound), fragments,
// IPv6 extension header walk, replies; plus the seeded property/fuzz target.
import t from 'tap';
import {
  checksum, decodeFrame, encodeEthernet, encodeIcmp, encodeIPv4, encodeIPv6, encodeTcp, encodeUdp, EtherType, formatIPv6,
  IpProto, parseIPv4, parseIPv6, parseTcp, parseUdp, parseEthernet, tcpReset, TcpFlag, unreachable, ipv4FromString,
  MAX_EXTENSION_HEADERS,
} from '../../netstack/index.js';
import { Prng } from '../support/prng.js';
import { netstackTarget } from '../support/net/fuzz-netstack.js';

const A = ipv4FromString('10.0.2.15')!;
const B = ipv4FromString('10.0.2.2')!;
const M1 = Buffer.from('020000000001', 'hex');
const M2 = Buffer.from('020000000002', 'hex');

t.test('checksum: RFC 1071 example and a real IPv4 header', async (t) => {
  t.equal(checksum(Buffer.from('0001f203f4f5f6f7', 'hex'), 0, 8), ~0xddf2 & 0xffff);
  const h = Buffer.from('450000730000400040110000c0a80001c0a800c7', 'hex');
  t.equal(checksum(h, 0, 20), 0xb861);
});

t.test('ethernet: runt, 802.3 length, one VLAN tag skipped, stacked tags refused', async (t) => {
  t.notOk(parseEthernet(Buffer.alloc(13)).ok);
  const f = encodeEthernet(M1, M2, 0x0500, Buffer.alloc(10));
  t.match(parseEthernet(f), { ok: false, error: /802\.3/ });
  const tagged = Buffer.from('0200000000010200000000028100006408000000', 'hex');
  t.match(parseEthernet(tagged), { ok: true, value: { vlan: 100, etherType: 0x0800, payloadOffset: 18 } });
  const stacked = Buffer.from('020000000001020000000002810000648100000a0800', 'hex');
  t.match(parseEthernet(stacked), { ok: false, error: /stacked/ });
  t.notOk(parseEthernet(tagged.subarray(0, 16)).ok);
});

t.test('ipv4: every bound is checked', async (t) => {
  const good = encodeIPv4({ src: A, dst: B, protocol: IpProto.UDP, options: Buffer.from([1, 1, 1, 0]) }, Buffer.alloc(8));
  t.match(parseIPv4(good, 0), { ok: true, value: { headerLength: 24, optionsLength: 4, totalLength: 32, protocol: 17 } });
  const bad = (mut: (b: Buffer) => void, re: RegExp): void => {
    const b = Buffer.from(good);
    mut(b);
    t.match(parseIPv4(b, 0), { ok: false, error: re });
  };
  bad((b) => { b[0] = 0x65; }, /version/);
  bad((b) => { b[0] = 0x44; }, /header length 16/);
  bad((b) => { b[0] = 0x4f; }, /options past the frame/);
  bad((b) => { b.writeUInt16BE(10, 2); }, /below header length/);
  bad((b) => { b.writeUInt16BE(33, 2); }, /past the frame/);
  bad((b) => { b[8] ^= 1; }, /checksum/);
  t.notOk(parseIPv4(good.subarray(0, 19), 0).ok);
  // Ethernet padding after the packet is not part of it.
  const padded = Buffer.concat([good, Buffer.alloc(10)]);
  t.match(parseIPv4(padded, 0), { ok: true, value: { end: 32 } });
  // Fragments.
  const frag = encodeIPv4({ src: A, dst: B, protocol: IpProto.UDP, id: 77, moreFragments: true }, Buffer.alloc(16));
  t.match(parseIPv4(frag, 0), { ok: true, value: { moreFragments: true, fragmentOffset: 0, id: 77 } });
  const later = encodeIPv4({ src: A, dst: B, protocol: IpProto.UDP, id: 77, fragmentOffset: 1480 }, Buffer.alloc(16));
  t.match(parseIPv4(later, 0), { ok: true, value: { moreFragments: false, fragmentOffset: 1480 } });
});

t.test('ipv6: extension header walk is bounded and checked', async (t) => {
  const src = Buffer.alloc(16); src[15] = 1;
  const dst = Buffer.alloc(16); dst[0] = 0xfd; dst[15] = 2;
  t.equal(formatIPv6(dst), 'fd00::2');
  t.equal(formatIPv6(Buffer.from('20010db8000000010000000000000001', 'hex')), '2001:db8:0:1::1');
  const udp = encodeUdp(1, 2, Buffer.from('x'), src, dst);
  const ext = (next: number, len8 = 0): Buffer => { const e = Buffer.alloc(8 * (len8 + 1)); e[0] = next; e[1] = len8; return e; };
  const p = encodeIPv6({ src, dst, nextHeader: 0 }, Buffer.concat([ext(60, 1), ext(17), udp]));
  t.match(parseIPv6(p, 0), { ok: true, value: { protocol: 17, extensionHeaders: 2, payloadOffset: 40 + 16 + 8 } });
  // hop-by-hop not first
  t.match(parseIPv6(encodeIPv6({ src, dst, nextHeader: 60 }, Buffer.concat([ext(0), ext(17), udp])), 0), { ok: false, error: /hop-by-hop/ });
  // too many
  const many = Buffer.concat([...Array.from({ length: MAX_EXTENSION_HEADERS + 1 }, () => ext(60)), udp]);
  t.match(parseIPv6(encodeIPv6({ src, dst, nextHeader: 60 }, many), 0), { ok: false, error: /too many/ });
  // a header claiming more than the packet
  const liar = ext(17); liar[1] = 200;
  t.match(parseIPv6(encodeIPv6({ src, dst, nextHeader: 60 }, Buffer.concat([liar, udp])), 0), { ok: false, error: /past the packet/ });
  // payload length past the frame
  const short = Buffer.from(p); short.writeUInt16BE(999, 4);
  t.match(parseIPv6(short, 0), { ok: false, error: /past the frame/ });
  // fragment header: first and later fragments
  const fh = (off: number, more: boolean): Buffer => { const e = Buffer.alloc(8); e[0] = 17; e.writeUInt16BE(off | (more ? 1 : 0), 2); e.writeUInt32BE(0xdeadbeef, 4); return e; };
  t.match(parseIPv6(encodeIPv6({ src, dst, nextHeader: 44 }, Buffer.concat([fh(0, true), udp])), 0), { ok: true, value: { protocol: 17, fragment: { offset: 0, more: true, id: 0xdeadbeef } } });
  t.match(parseIPv6(encodeIPv6({ src, dst, nextHeader: 44 }, Buffer.concat([fh(1448, false), Buffer.alloc(8)])), 0), { ok: true, value: { fragment: { offset: 1448, more: false } } });
});

t.test('tcp/udp: header and length bounds', async (t) => {
  const seg = encodeTcp({ srcPort: 40000, dstPort: 80, seq: 1, ack: 0, flags: TcpFlag.SYN, options: Buffer.from([2, 4, 5, 0xb4]) }, Buffer.alloc(0), A, B);
  t.match(parseTcp(seg, 0, seg.length), { ok: true, value: { srcPort: 40000, dstPort: 80, flags: TcpFlag.SYN, headerLength: 24 } });
  const b = Buffer.from(seg); b[12] = 0x40;
  t.match(parseTcp(b, 0, b.length), { ok: false, error: /data offset 16/ });
  b[12] = 0xf0;
  t.match(parseTcp(b, 0, b.length), { ok: false, error: /data offset 60/ });
  t.notOk(parseTcp(seg, 0, 19).ok);
  t.notOk(parseTcp(seg, 0, seg.length + 1).ok, 'end past the buffer');
  const u = encodeUdp(5353, 53, Buffer.from('abc'), A, B);
  t.match(parseUdp(u, 0, u.length), { ok: true, value: { length: 11 } });
  const u2 = Buffer.from(u); u2.writeUInt16BE(12, 4);
  t.match(parseUdp(u2, 0, u2.length), { ok: false, error: /length 12/ });
  u2.writeUInt16BE(7, 4);
  t.notOk(parseUdp(u2, 0, u2.length).ok);
});

t.test('replies: RST for a SYN and ICMP unreachable for UDP quote the right things', async (t) => {
  const syn = encodeTcp({ srcPort: 40000, dstPort: 81, seq: 1000, ack: 0, flags: TcpFlag.SYN }, Buffer.alloc(0), A, B);
  const frame = encodeEthernet(M1, M2, EtherType.IPv4, encodeIPv4({ src: A, dst: B, protocol: IpProto.TCP }, syn));
  const d = decodeFrame(frame);
  if (!d.ok || d.value.kind !== 'ip' || d.value.l4.kind !== 'tcp') throw new Error('decode');
  const rst = decodeFrame(tcpReset(d.value, d.value.l4.tcp)!);
  t.match(rst, { ok: true, value: { kind: 'ip', ip: { family: 4 }, l4: { kind: 'tcp', tcp: { srcPort: 81, dstPort: 40000, seq: 0, ack: 1001, flags: TcpFlag.RST | TcpFlag.ACK } } } });
  if (rst.ok) {
    t.same([...rst.value.eth.dst], [...M2], 'to the sender MAC');
    t.same([...(rst.value as { ip: { dst: Uint8Array } }).ip.dst], [...A]);
  }
  const udp = encodeEthernet(M1, M2, EtherType.IPv4, encodeIPv4({ src: A, dst: B, protocol: IpProto.UDP }, encodeUdp(4000, 9, Buffer.alloc(1000), A, B)));
  const du = decodeFrame(udp);
  if (!du.ok || du.value.kind !== 'ip') throw new Error('decode');
  const icmp = decodeFrame(unreachable(udp, du.value, 'port'));
  t.match(icmp, { ok: true, value: { l4: { kind: 'icmp', icmp: { type: 3, code: 3 } } } });
  if (icmp.ok && icmp.value.kind === 'ip') t.ok(icmp.value.ip.end - icmp.value.ip.offset <= 576, 'within 576 bytes');
  t.equal(tcpReset(d.value, { ...d.value.l4.tcp, flags: TcpFlag.RST }), null, 'a RST is never answered');
  const icmpSum = encodeIcmp(8, 0, 0x12340001, Buffer.from('ping'));
  t.equal(checksum(icmpSum, 0, icmpSum.length), 0);
});

t.test('property: random and mutated frames (seeded fuzz target)', async (t) => {
  const target = netstackTarget();
  const rng = new Prng(20240601);
  let failures = 0;
  const first: string[] = [];
  for (let i = 0; i < 5000; i++) {
    const f = await target.iterate(rng);
    if (f !== null) { failures++; if (first.length < 3) first.push(f); }
  }
  target.close();
  t.equal(failures, 0, first.join('\n'));
});
