// The frame policy filter with crafted frames (no network): decisions, replies, the
// gateway alias, DNS/ARP/DHCP, flow table bounds and idle, logging. Fragments:
// frame-fragments.test.ts; hostile-guest cases: frame-hostile.test.ts.
import t from 'tap';
import { rig } from '../helpers/frames.js';
import {
  decodeFrame, encodeArp, encodeEthernet, encodeIcmp, encodeIPv4, encodeIPv6, encodeTcp, encodeUdp, EtherType, IpProto,
  ipv4FromString, TcpFlag,
} from '../../netstack/index.js';
import { Policy } from '../../src/policy/index.js';

const GUEST = ipv4FromString('10.0.2.15')!;
const GW = ipv4FromString('10.0.2.2')!;
const DNS = ipv4FromString('10.0.2.3')!;
const OUT = ipv4FromString('93.184.216.34')!;
const GMAC = Buffer.from('02000000000f', 'hex');
const PMAC = Buffer.from('9a55aa55aa55', 'hex');

const v4 = (src: Uint8Array, dst: Uint8Array, proto: number, l4: Buffer, from: 'guest' | 'host' = 'guest', ip: Partial<Parameters<typeof encodeIPv4>[0]> = {}): Buffer =>
  encodeEthernet(from === 'guest' ? PMAC : GMAC, from === 'guest' ? GMAC : PMAC, EtherType.IPv4, encodeIPv4({ src, dst, protocol: proto, ...ip }, l4));
const tcp = (src: Uint8Array, sp: number, dst: Uint8Array, dp: number, flags: number, payload = Buffer.alloc(0), from: 'guest' | 'host' = 'guest'): Buffer =>
  v4(src, dst, IpProto.TCP, encodeTcp({ srcPort: sp, dstPort: dp, seq: 100, ack: 200, flags }, payload, src, dst), from);
const udp = (src: Uint8Array, sp: number, dst: Uint8Array, dp: number, payload: Buffer, from: 'guest' | 'host' = 'guest'): Buffer =>
  v4(src, dst, IpProto.UDP, encodeUdp(sp, dp, payload, src, dst), from);

const allowA = (): Policy => new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: ['tcp', 'udp'], cidr: '127.0.0.1/32', ports: 8000, name: 'A' }] });

t.test('TCP: the gateway alias is judged as 127.0.0.1; denied SYN gets a RST, allowed flow passes both ways', async (t) => {
  const r = rig(allowA());
  t.equal(r.filter.send(tcp(GUEST, 40000, GW, 8000, TcpFlag.SYN)), true);
  t.equal(r.inner.sent.length, 1, 'allowed SYN passed');
  // host→guest SYN-ACK and data of the allowed flow
  r.inner.port.deliver(tcp(GW, 8000, GUEST, 40000, TcpFlag.SYN | TcpFlag.ACK, Buffer.alloc(0), 'host'));
  r.inner.port.deliver(tcp(GW, 8000, GUEST, 40000, TcpFlag.ACK, Buffer.alloc(50), 'host'));
  t.equal(r.toGuest.length, 2);
  r.filter.send(tcp(GUEST, 40000, GW, 8000, TcpFlag.ACK, Buffer.alloc(10)));
  t.equal(r.inner.sent.length, 2);

  // port B: denied, answered with RST|ACK acking the SYN
  r.filter.send(tcp(GUEST, 40001, GW, 8001, TcpFlag.SYN));
  t.equal(r.inner.sent.length, 2, 'denied SYN did not reach the backend');
  const rst = decodeFrame(r.toGuest[2]!);
  t.match(rst, { ok: true, value: { l4: { kind: 'tcp', tcp: { srcPort: 8001, dstPort: 40001, flags: TcpFlag.RST | TcpFlag.ACK, ack: 101 } } } });
  t.match(r.lines.find((l) => l['decision'] === 'deny'), { event: 'net.flow', kind: 'frame', protocol: 'tcp', direction: 'outbound', src: '10.0.2.15:40001', dst: '10.0.2.2:8001', hostDst: '127.0.0.1', rule: 'default', closeReason: 'denied' });

  // A host→guest segment of a flow that does not exist is dropped.
  r.inner.port.deliver(tcp(GW, 8001, GUEST, 40001, TcpFlag.ACK, Buffer.alloc(5), 'host'));
  t.equal(r.toGuest.length, 3);

  // FIN both ways ends the flow with one event carrying the byte counts.
  r.filter.send(tcp(GUEST, 40000, GW, 8000, TcpFlag.FIN | TcpFlag.ACK));
  r.inner.port.deliver(tcp(GW, 8000, GUEST, 40000, TcpFlag.FIN | TcpFlag.ACK, Buffer.alloc(0), 'host'));
  const done = r.lines.filter((l) => l['decision'] === 'allow');
  t.equal(done.length, 1);
  t.match(done[0], { protocol: 'tcp', rule: 'A', bytesFromGuest: 10, bytesToGuest: 50, closeReason: 'fin', dst: '10.0.2.2:8000', hostDst: '127.0.0.1' });
  // the last ACK still passes (linger), then the flow is forgotten
  r.filter.send(tcp(GUEST, 40000, GW, 8000, TcpFlag.ACK));
  t.equal(r.inner.sent.length, 4);
  r.advance(6000);
  r.filter.sweep();
  t.equal(r.filter.stats().flows, 0);
  r.filter.send(tcp(GUEST, 40000, GW, 8000, TcpFlag.ACK));
  t.equal(r.inner.sent.length, 4, 'a segment of no flow is dropped');
  t.match(decodeFrame(r.toGuest.at(-1)!), { ok: true, value: { l4: { tcp: { flags: TcpFlag.RST } } } }, '... and reset');
});

t.test('without the gateway mapping the gateway is judged as itself', async (t) => {
  const r = rig(allowA(), { mapGatewayToHost: false });
  r.filter.send(tcp(GUEST, 40000, GW, 8000, TcpFlag.SYN));
  t.equal(r.inner.sent.length, 0);
  t.match(r.lines[0], { hostDst: '10.0.2.2', decision: 'deny' });
});

t.test('UDP: denied gets ICMP port unreachable and nothing passes; DNS to the forwarder is judged as the host resolver', async (t) => {
  const r = rig(new Policy({ default: 'deny', rules: [
    { action: 'allow', protocol: ['tcp', 'udp'], cidr: '127.0.0.1/32', ports: 8000, name: 'A' },
    { action: 'allow', protocol: 'udp', cidr: '192.0.2.53', ports: 53, name: 'resolver' },
  ] }));
  r.filter.send(udp(GUEST, 5000, GW, 9999, Buffer.from('hello')));
  r.filter.send(udp(GUEST, 5000, GW, 9999, Buffer.from('again')));
  t.equal(r.inner.sent.length, 0);
  t.equal(r.toGuest.length, 2);
  t.match(decodeFrame(r.toGuest[0]!), { ok: true, value: { l4: { kind: 'icmp', icmp: { type: 3, code: 3 } } } });
  // nothing from the host side of that flow reaches the guest either
  r.inner.port.deliver(udp(GW, 9999, GUEST, 5000, Buffer.from('sneaky'), 'host'));
  t.equal(r.toGuest.length, 2);

  r.filter.send(udp(GUEST, 5001, DNS, 53, Buffer.from('query')));
  t.equal(r.inner.sent.length, 1);
  r.inner.port.deliver(udp(DNS, 53, GUEST, 5001, Buffer.from('answer!'), 'host'));
  t.equal(r.toGuest.length, 3);
  r.advance(61_000);
  r.filter.sweep();
  t.match(r.lines.find((l) => l['rule'] === 'resolver'), { protocol: 'udp', decision: 'allow', dst: '10.0.2.3:53', hostDst: '192.0.2.53', bytesFromGuest: 5, bytesToGuest: 7, closeReason: 'idle' });
  t.match(r.lines.find((l) => l['protocol'] === 'udp' && l['decision'] === 'deny'), { bytesFromGuest: 10, closeReason: 'idle' });
  // allowed UDP to A
  r.filter.send(udp(GUEST, 5002, GW, 8000, Buffer.from('x')));
  t.equal(r.inner.sent.length, 2);
});

t.test('ARP and DHCP pass; VLAN-tagged, malformed and other protocols are dropped', async (t) => {
  const r = rig(Policy.denyAll());
  const arp = encodeEthernet(Buffer.alloc(6, 0xff), GMAC, EtherType.ARP, encodeArp({ op: 1, senderMac: GMAC, senderIp: GUEST, targetMac: Buffer.alloc(6), targetIp: GW }));
  r.filter.send(arp);
  r.filter.send(udp(ipv4FromString('0.0.0.0')!, 68, ipv4FromString('255.255.255.255')!, 67, Buffer.alloc(300)));
  t.equal(r.inner.sent.length, 2);
  r.inner.port.deliver(arp);
  r.inner.port.deliver(udp(GW, 67, GUEST, 68, Buffer.alloc(300), 'host'));
  t.equal(r.toGuest.length, 2);
  const tagged = Buffer.concat([arp.subarray(0, 12), Buffer.from('81000005', 'hex'), arp.subarray(12)]);
  r.filter.send(tagged);
  r.filter.send(arp.subarray(0, 20));
  r.filter.send(v4(GUEST, GW, 47, Buffer.alloc(20)));
  const bad = tcp(GUEST, 1, GW, 2, TcpFlag.SYN); bad[14 + 10] ^= 0xff; // IPv4 header checksum
  r.filter.send(bad);
  t.equal(r.inner.sent.length, 2);
  t.equal(r.filter.stats().droppedFromGuest, 4);
  t.equal(r.filter.stats().malformed, 2);
});

t.test('ICMP echo: policy protocol icmp; denied gets admin prohibited', async (t) => {
  const r = rig(new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'icmp', cidr: '127.0.0.1' }] }));
  const ping = (dst: Uint8Array): Buffer => v4(GUEST, dst, IpProto.ICMP, encodeIcmp(8, 0, (7 << 16) | 1, Buffer.from('ping')));
  r.filter.send(ping(GW));
  t.equal(r.inner.sent.length, 1);
  r.inner.port.deliver(v4(GW, GUEST, IpProto.ICMP, encodeIcmp(0, 0, (7 << 16) | 1, Buffer.from('ping')), 'host'));
  t.equal(r.toGuest.length, 1);
  r.filter.send(ping(OUT));
  t.equal(r.inner.sent.length, 1);
  t.match(decodeFrame(r.toGuest[1]!), { ok: true, value: { l4: { kind: 'icmp', icmp: { type: 3, code: 13 } } } });
});

t.test('IPv6: decided on the destination; denied TCP gets a v6 RST', async (t) => {
  const r = rig(new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: 'fd00::/8', ports: 443 }] }));
  // (not fd00::/64: a test host may own addresses there, which the policy judges as loopback)
  const src = Buffer.from('fd000001000000000000000000000015', 'hex');
  const dst = Buffer.from('fd000001000000000000000000000002', 'hex');
  const f = (dp: number): Buffer => encodeEthernet(PMAC, GMAC, EtherType.IPv6, encodeIPv6({ src, dst, nextHeader: IpProto.TCP }, encodeTcp({ srcPort: 1234, dstPort: dp, seq: 5, ack: 0, flags: TcpFlag.SYN }, Buffer.alloc(0), src, dst)));
  r.filter.send(f(443));
  r.filter.send(f(444));
  t.equal(r.inner.sent.length, 1);
  t.match(decodeFrame(r.toGuest[0]!), { ok: true, value: { ip: { family: 6 }, l4: { tcp: { flags: TcpFlag.RST | TcpFlag.ACK, ack: 6 } } } });
  t.match(r.lines[0], { dst: '[fd00:1::2]:444', decision: 'deny' });
});

t.test('inbound (passt port forwards): a host SYN is judged as inbound', async (t) => {
  const r = rig(new Policy({ default: 'deny', rules: [{ action: 'allow', direction: 'inbound', protocol: 'tcp', cidr: '127.0.0.1' }] }));
  r.inner.port.deliver(tcp(GW, 50000, GUEST, 80, TcpFlag.SYN, Buffer.alloc(0), 'host'));
  t.equal(r.toGuest.length, 1);
  r.filter.send(tcp(GUEST, 80, GW, 50000, TcpFlag.SYN | TcpFlag.ACK));
  t.equal(r.inner.sent.length, 1, 'the guest answer passes');
  r.inner.port.deliver(tcp(OUT, 50000, GUEST, 80, TcpFlag.SYN, Buffer.alloc(0), 'host'));
  t.equal(r.toGuest.length, 1, 'other sources denied');
});

t.test('the flow table is bounded (LRU) and idle flows are forgotten', async (t) => {
  const r = rig(Policy.allowAll(), { maxFlows: 8 });
  for (let p = 0; p < 20; p++) r.filter.send(tcp(GUEST, 30000 + p, GW, 8000, TcpFlag.SYN));
  t.equal(r.filter.stats().flows, 8);
  t.equal(r.filter.stats().evicted, 12);
  t.equal(r.lines.filter((l) => l['closeReason'] === 'evicted').length, 12);
  r.advance(600_001);
  r.filter.sweep();
  t.equal(r.filter.stats().flows, 0);
  r.filter.close();
  t.equal(r.lines.length, 20);
});

t.test('cost per frame (allowed established TCP flow)', async (t) => {
  const r = rig(allowA());
  r.filter.send(tcp(GUEST, 40000, GW, 8000, TcpFlag.SYN));
  const data = tcp(GUEST, 40000, GW, 8000, TcpFlag.ACK, Buffer.alloc(1400));
  const N = 50_000;
  const t0 = performance.now();
  for (let i = 0; i < N; i++) r.filter.send(data);
  const us = ((performance.now() - t0) * 1000) / N;
  t.comment(`filter: ${us.toFixed(2)} µs per 1454-byte frame of an established flow`);
  t.equal(r.inner.sent.length, N + 1);
});
