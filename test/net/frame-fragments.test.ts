// Fragments through the frame policy filter: only whole datagrams are judged and
// forwarded (passt does not reassemble: it reads a later fragment's data as a transport
// header), allowed datagrams larger than the guest's MTU arrive whole, overlapping
// fragments drop the datagram, and packets toward the guest are cut to its MTU.
import t, { type Test } from 'tap';
import {
  decodeFrame, encodeTcp, encodeUdp, IpProto, Reassembler, TcpFlag, type IpFrame,
} from '../../netstack/index.js';
import { Policy } from '../../src/policy/index.js';
import { cut, frag4, frag6, GUEST, GUEST6, GW, PEER6, rig, udp } from '../helpers/frames.js';

const A = 8000;
const D = 9999;
const allowA = (): Policy => new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: ['tcp', 'udp'], cidr: '127.0.0.1/32', ports: A, name: 'A' }] });

/** Every frame `sent` decodes, none is a fragment, and each goes to `port`. */
function wholeTo(t: Test, sent: Buffer[], port: number): void {
  for (const f of sent) {
    const d = decodeFrame(f);
    t.ok(d.ok, 'forwarded frame decodes');
    if (!d.ok || d.value.kind !== 'ip') continue;
    t.equal(d.value.ip.fragment, null, 'forwarded frame is not a fragment');
    const l4 = d.value.l4;
    t.equal(l4.kind === 'udp' ? l4.udp.dstPort : l4.kind === 'tcp' ? l4.tcp.dstPort : -1, port, `forwarded to port ${port}`);
  }
}

t.test('a later fragment that looks like a UDP header for a denied port never reaches the backend as such', async (t) => {
  const r = rig(allowA());
  // First fragment: a UDP header for A (length covering only itself), more fragments.
  const first = encodeUdp(5000, A, Buffer.alloc(16, 1), GUEST, GW);
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 77, 0, true, first));
  // Later fragment: its data starts like a UDP header for D.
  const evil = encodeUdp(5001, D, Buffer.from('evil!'), GUEST, GW);
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 77, first.length, false, evil));
  t.equal(r.inner.sent.length, 1, 'one frame: the whole datagram');
  wholeTo(t, r.inner.sent, A);
  const d = decodeFrame(r.inner.sent[0]!);
  t.equal(d.ok && d.value.kind === 'ip' ? d.value.ip.end - d.value.ip.payloadOffset : 0, first.length + evil.length, 'with every byte of both fragments');
  t.equal(r.filter.stats().reassembled, 1);
});

t.test('the same with a TCP SYN: nothing for D is ever forwarded', async (t) => {
  const r = rig(allowA());
  // (an MSS option makes the first fragment 24 bytes: non-last fragments carry multiples of 8)
  const syn = encodeTcp({ srcPort: 40000, dstPort: A, seq: 1, ack: 0, flags: TcpFlag.SYN, options: Buffer.from('020405b4', 'hex') }, Buffer.alloc(0), GUEST, GW);
  const evil = encodeTcp({ srcPort: 40001, dstPort: D, seq: 1, ack: 0, flags: TcpFlag.SYN }, Buffer.alloc(0), GUEST, GW);
  r.filter.send(frag4(GUEST, GW, IpProto.TCP, 78, 0, true, syn));
  r.filter.send(frag4(GUEST, GW, IpProto.TCP, 78, syn.length, false, evil));
  wholeTo(t, r.inner.sent, A);
  t.equal(r.inner.sent.length, 1);
  // An orphan later fragment (its first never comes) is held, never forwarded, then forgotten.
  r.filter.send(frag4(GUEST, GW, IpProto.TCP, 79, 24, false, evil));
  t.equal(r.inner.sent.length, 1);
  t.equal(r.filter.reassemblyStats().fromGuest.datagrams, 1);
  r.advance(30_000);
  r.filter.sweep();
  t.match(r.filter.reassemblyStats().fromGuest, { datagrams: 0, bytes: 0, timedOut: 1 });
});

t.test('a datagram to a denied port passes in no part, and is refused once whole', async (t) => {
  const r = rig(allowA());
  const msg = encodeUdp(5000, D, Buffer.alloc(3000, 2), GUEST, GW);
  for (const [off, more, data] of cut(msg, 1480)) r.filter.send(frag4(GUEST, GW, IpProto.UDP, 80, off, more, data));
  t.equal(r.inner.sent.length, 0);
  t.equal(r.toGuest.length, 1, 'one ICMP port unreachable');
  t.match(decodeFrame(r.toGuest[0]!), { ok: true, value: { l4: { kind: 'icmp', icmp: { type: 3, code: 3 } } } });
});

t.test('allowed datagrams above the MTU arrive whole: 1473 bytes, in any order, up to what passt takes', async (t) => {
  const r = rig(allowA());
  for (const size of [1472, 1473, 4000, 65493]) {
    const msg = encodeUdp(5000 + (size % 1000), A, Buffer.alloc(size, size & 0xff), GUEST, GW);
    const pieces = cut(msg, 1480);
    if (size === 4000) pieces.reverse();
    const before = r.inner.sent.length;
    for (const [off, more, data] of pieces) r.filter.send(frag4(GUEST, GW, IpProto.UDP, size, off, more, data));
    t.equal(r.inner.sent.length, before + 1, `${size} bytes: one frame`);
    const d = decodeFrame(r.inner.sent.at(-1)!);
    t.match(d, { ok: true, value: { ip: { fragment: null }, l4: { kind: 'udp', udp: { dstPort: A } } } });
    if (d.ok && d.value.kind === 'ip' && d.value.l4.kind === 'udp') t.equal(d.value.l4.udp.end - d.value.l4.udp.payloadOffset, size, `${size} payload bytes`);
  }
  t.ok(r.inner.sent.every((f) => f.length <= 65535), 'no frame above passt\'s 65535');
  // 65494 bytes: a frame of 65536, more than passt takes: dropped, counted.
  const big = encodeUdp(6000, A, Buffer.alloc(65494), GUEST, GW);
  const n = r.inner.sent.length;
  for (const [off, more, data] of cut(big, 1480)) r.filter.send(frag4(GUEST, GW, IpProto.UDP, 9, off, more, data));
  t.equal(r.inner.sent.length, n);
  t.equal(r.filter.stats().tooBig, 1);
});

t.test('overlapping fragments drop the whole datagram and its later fragments; an exact duplicate is ignored', async (t) => {
  const r = rig(allowA());
  const msg = encodeUdp(5000, A, Buffer.alloc(40, 3), GUEST, GW);
  // Overlap: [0,24) then [16,48): dropped, and [24,48) after it is discarded too.
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 90, 0, true, msg.subarray(0, 24)));
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 90, 16, false, msg.subarray(16, 48)));
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 90, 24, false, msg.subarray(24, 48)));
  t.equal(r.inner.sent.length, 0);
  t.match(r.filter.reassemblyStats().fromGuest, { dropped: 1, discardedFragments: 1, bytes: 0 });
  // A later fragment rewriting the first one's header (offset 0 again, other bytes): overlap.
  const evil = encodeUdp(5000, D, Buffer.alloc(16), GUEST, GW);
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 91, 0, true, msg.subarray(0, 16)));
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 91, 0, true, evil.subarray(0, 8)));
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 91, 16, false, msg.subarray(16)));
  t.equal(r.inner.sent.length, 0);
  // Exact duplicate: the first copy is kept.
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 92, 0, true, msg.subarray(0, 24)));
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 92, 0, true, evil.subarray(0, 24)));
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 92, 24, false, msg.subarray(24)));
  t.equal(r.inner.sent.length, 1);
  wholeTo(t, r.inner.sent, A);
  // Non-last fragment not a multiple of 8: dropped.
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 93, 0, true, msg.subarray(0, 20)));
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 93, 20, false, msg.subarray(20)));
  t.equal(r.inner.sent.length, 1);
});

t.test('IPv6 fragment headers: reassembled, judged whole, forwarded without the fragment header', async (t) => {
  const r = rig(new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: 'fd00::/8', ports: 443 }] }));
  const first = encodeUdp(5000, 443, Buffer.alloc(16, 1), GUEST6, PEER6);
  const evil = encodeUdp(5001, 444, Buffer.alloc(8), GUEST6, PEER6);
  r.filter.send(frag6(GUEST6, PEER6, IpProto.UDP, 0xabcdef01, 0, true, first));
  r.filter.send(frag6(GUEST6, PEER6, IpProto.UDP, 0xabcdef01, first.length, false, evil));
  t.equal(r.inner.sent.length, 1);
  wholeTo(t, r.inner.sent, 443);
  const d = decodeFrame(r.inner.sent[0]!);
  t.match(d, { ok: true, value: { ip: { family: 6, protocol: IpProto.UDP, fragment: null } } });
  t.equal(r.inner.sent[0]!.readUInt16BE(14 + 4), first.length + evil.length, 'payload length rewritten');
  // Large allowed v6 datagram in 1232-byte pieces, and a denied one.
  const big = encodeUdp(5002, 443, Buffer.alloc(5000, 7), GUEST6, PEER6);
  for (const [off, more, data] of cut(big, 1232)) r.filter.send(frag6(GUEST6, PEER6, IpProto.UDP, 7, off, more, data));
  t.equal(r.inner.sent.length, 2);
  const denied = encodeUdp(5003, 444, Buffer.alloc(3000), GUEST6, PEER6);
  for (const [off, more, data] of cut(denied, 1232)) r.filter.send(frag6(GUEST6, PEER6, IpProto.UDP, 8, off, more, data));
  t.equal(r.inner.sent.length, 2);
  t.match(decodeFrame(r.toGuest.at(-1)!), { ok: true, value: { ip: { family: 6 }, l4: { kind: 'icmp', icmp: { type: 1, code: 4 } } } });
});

t.test('reassembly is bounded: datagrams in progress, bytes, fragments per datagram', async (t) => {
  const r = rig(allowA(), { reassembly: { maxDatagrams: 8, maxTotalBytes: 16 * 1024, maxFragments: 16 } });
  for (let id = 0; id < 100; id++) r.filter.send(frag4(GUEST, GW, IpProto.UDP, id, 0, true, Buffer.alloc(1480)));
  const s = r.filter.reassemblyStats().fromGuest;
  t.ok(s.datagrams <= 8, `${s.datagrams} datagrams held`);
  t.ok(s.bytes <= 16 * 1024, `${s.bytes} bytes held`);
  t.ok(s.evicted >= 92);
  // 17 fragments of 8 bytes: the 17th drops the datagram.
  for (let i = 0; i < 17; i++) r.filter.send(frag4(GUEST, GW, IpProto.UDP, 500, 8 * i, true, Buffer.alloc(8)));
  t.ok(r.filter.reassemblyStats().fromGuest.dropped >= 1);
  t.equal(r.inner.sent.length, 0);
});

t.test('toward the guest: a datagram above its MTU is cut to 1500-byte packets that reassemble to it', async (t) => {
  const r = rig(allowA());
  r.filter.send(udp(GUEST, 5000, GW, A, Buffer.from('hi')));
  const reply = udp(GW, A, GUEST, 5000, Buffer.alloc(4000, 9), 'host');
  r.inner.port.deliver(reply);
  t.equal(r.toGuest.length, 3, '4028 bytes of IP in 3 fragments');
  t.ok(r.toGuest.every((f) => f.length <= 1514), 'each fits the guest\'s 1500-byte MTU');
  const re = new Reassembler();
  let whole: Buffer | null = null;
  for (const f of r.toGuest) {
    const d = decodeFrame(f);
    t.ok(d.ok && d.value.kind === 'ip' && d.value.ip.fragment !== null);
    const out = re.add(f, (d as { value: IpFrame }).value, 0);
    if (out.status === 'complete') whole = out.frame;
  }
  t.ok(whole !== null);
  t.same(whole?.subarray(14 + 20).toString('hex'), reply.subarray(14 + 20).toString('hex'), 'same UDP datagram');
  t.match(r.filter.stats(), { fragmentedToGuest: 1, fragmentFramesToGuest: 3 });
  // Small replies pass as they are; a reply of a denied flow is dropped whole.
  r.inner.port.deliver(udp(GW, A, GUEST, 5000, Buffer.alloc(100), 'host'));
  t.equal(r.toGuest.length, 4);
  r.inner.port.deliver(udp(GW, D, GUEST, 5000, Buffer.alloc(4000), 'host'));
  t.equal(r.toGuest.length, 4);
});

t.test('fragments from the host are reassembled and judged whole too', async (t) => {
  const r = rig(allowA());
  r.filter.send(udp(GUEST, 5000, GW, A, Buffer.from('hi')));
  const msg = encodeUdp(A, 5000, Buffer.alloc(2000, 4), GW, GUEST);
  for (const [off, more, data] of cut(msg, 1480)) r.inner.port.deliver(frag4(GW, GUEST, IpProto.UDP, 5, off, more, data, 'host'));
  t.equal(r.toGuest.length, 2, 'judged whole, cut again to the guest MTU');
  const denied = encodeUdp(D, 5000, Buffer.alloc(2000, 4), GW, GUEST);
  for (const [off, more, data] of cut(denied, 1480)) r.inner.port.deliver(frag4(GW, GUEST, IpProto.UDP, 6, off, more, data, 'host'));
  t.equal(r.toGuest.length, 2, 'nothing of a denied flow');
});
