// A hostile guest on the frame path: DNS to passt's forwarder follows the policy,
// unspecified destinations (which reach the host's loopback) are never judged as text,
// DHCP's exemption is only DHCP, and a flood of denied SYNs cannot flood the log.
import t from 'tap';
import { decodeFrame, encodeEthernet, encodeIPv6, encodeUdp, EtherType, IpProto, ipv4FromString, TcpFlag } from '../../netstack/index.js';
import { RateLimitedLog } from '../../src/log-rate.js';
import { Policy } from '../../src/policy/index.js';
import { passtDnsUpstream } from '../../src/engine/network-passt.js';
import { memoryLogger, type LogLine } from '../helpers/memory-logger.js';
import { DNS, GMAC, GUEST, GUEST6, GW, OUT, PMAC, RESOLVER, rig, tcp, udp } from '../helpers/frames.js';

t.test('DNS to the forwarder under deny-all: dropped, ICMP unreachable / RST, judged as the host resolver', async (t) => {
  const r = rig(Policy.denyAll());
  r.filter.send(udp(GUEST, 5353, DNS, 53, Buffer.from('query')));
  r.filter.send(tcp(GUEST, 40000, DNS, 53, TcpFlag.SYN));
  t.equal(r.inner.sent.length, 0, 'no DNS reaches passt');
  t.match(decodeFrame(r.toGuest[0]!), { ok: true, value: { l4: { kind: 'icmp', icmp: { type: 3, code: 3 } } } });
  t.match(decodeFrame(r.toGuest[1]!), { ok: true, value: { l4: { kind: 'tcp', tcp: { flags: TcpFlag.RST | TcpFlag.ACK, srcPort: 53 } } } });
  t.match(r.filter.recent.find((x) => x.protocol === 'tcp'), { decision: 'deny', dst: '10.0.2.3:53', hostDst: RESOLVER, rule: 'default' });
});

t.test('DNS to the forwarder passes when the policy allows the resolver, and only port 53 is the resolver', async (t) => {
  const r = rig(new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: ['udp', 'tcp'], cidr: RESOLVER, ports: 53, name: 'dns' }] }));
  r.filter.send(udp(GUEST, 5353, DNS, 53, Buffer.from('query')));
  r.filter.send(tcp(GUEST, 40000, DNS, 53, TcpFlag.SYN));
  t.equal(r.inner.sent.length, 2);
  r.inner.port.deliver(udp(DNS, 53, GUEST, 5353, Buffer.from('answer'), 'host'));
  t.equal(r.toGuest.length, 1, 'the answer reaches the guest');
  r.filter.send(udp(GUEST, 5353, DNS, 54, Buffer.from('not dns')));
  t.equal(r.inner.sent.length, 2, 'port 54 of the forwarder is judged as 10.0.2.3 itself: denied');
  // Without a forwarder (dns: false, or custom servers), 10.0.2.3:53 is just an address.
  const plain = rig(new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: RESOLVER }] }), { dnsForward: undefined });
  plain.filter.send(udp(GUEST, 5353, DNS, 53, Buffer.from('query')));
  t.equal(plain.inner.sent.length, 0);
  t.equal(plain.filter.recent.length, 0, 'UDP flows log on idle');
  plain.filter.close();
  t.match(plain.filter.recent[0], { hostDst: '10.0.2.3', decision: 'deny' });
});

t.test('where passt forwards DNS: the first IPv4 nameserver of the host, as passt reads resolv.conf', async (t) => {
  t.equal(passtDnsUpstream('nameserver 10.255.255.53\n'), '10.255.255.53');
  t.equal(passtDnsUpstream('# x\nnameserver fd00::1\nnameserver 192.0.2.2\nnameserver 127.0.0.1\n'), '192.0.2.2');
  t.equal(passtDnsUpstream('nameserver 127.0.0.53\n'), '127.0.0.53', 'loopback resolvers stay loopback');
  t.equal(passtDnsUpstream('nameserver fd00::1\n'), '127.0.0.1', 'no IPv4 server: passt writes to 0.0.0.0, the host loopback');
  t.equal(passtDnsUpstream(''), '127.0.0.1');
  t.equal(passtDnsUpstream('nameserver 0.0.0.0\n'), '127.0.0.1');
  t.equal(passtDnsUpstream(' nameserver 192.0.2.9\nnameserver 192.0.2.2 # comment\nnameserver 192.0.2.3\n'), '192.0.2.3', 'lines passt skips are skipped');
});

t.test('unspecified destinations reach the host loopback: denied even by an allow-all policy', async (t) => {
  const r = rig(Policy.allowAll());
  for (const dst of ['0.0.0.0', '0.0.0.1', '0.1.2.3']) {
    const d = ipv4FromString(dst)!;
    r.filter.send(tcp(GUEST, 40000, d, 8000, TcpFlag.SYN));
    r.filter.send(udp(GUEST, 5000, d, 8000, Buffer.from('x')));
  }
  const six = (dst: Buffer): Buffer => encodeEthernet(PMAC, GMAC, EtherType.IPv6, encodeIPv6({ src: GUEST6, dst, nextHeader: IpProto.UDP }, encodeUdp(5000, 8000, Buffer.from('x'), GUEST6, dst)));
  r.filter.send(six(Buffer.alloc(16)));
  r.filter.send(six(Buffer.from('00000000000000000000ffff00000000', 'hex')));
  r.filter.send(six(Buffer.from('00000000000000000000ffff00010203', 'hex')));
  r.filter.send(six(Buffer.from('0000000000000000000000007f000001', 'hex')));
  t.equal(r.inner.sent.length, 0, 'nothing to 0.0.0.0/8, ::, ::ffff:0.0.0.0/104, ::127.0.0.1');
  t.equal(r.toGuest.length, 10, 'each refused at once (RST / ICMP)');
  r.filter.close();
  t.ok(r.filter.recent.length === 10 && r.filter.recent.every((x) => x.decision === 'deny' && x.rule === 'unspecified'));
  // ::1 is loopback, not unspecified: judged as itself.
  const one = rig(new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: '::1' }] }));
  one.filter.send(six(Buffer.from('00000000000000000000000000000001', 'hex')));
  t.equal(one.inner.sent.length, 1);
  // Loopback spellings that are addresses are judged as what they are.
  const l = rig(new Policy({ default: 'allow', rules: [{ action: 'deny', cidr: '127.0.0.0/8' }] }));
  l.filter.send(tcp(GUEST, 40000, ipv4FromString('127.0.0.1')!, 8000, TcpFlag.SYN));
  l.filter.send(tcp(GUEST, 40001, GW, 8000, TcpFlag.SYN));
  l.filter.send(tcp(GUEST, 40002, ipv4FromString('127.1.2.3')!, 8000, TcpFlag.SYN));
  l.filter.send(tcp(GUEST, 40003, OUT, 8000, TcpFlag.SYN));
  t.equal(l.inner.sent.length, 1, 'only the non-loopback destination passes');
});

t.test('DHCP is exempt only when it is DHCP to passt (to the broadcast address or the gateway)', async (t) => {
  const r = rig(Policy.denyAll());
  r.filter.send(udp(ipv4FromString('0.0.0.0')!, 68, ipv4FromString('255.255.255.255')!, 67, Buffer.alloc(300)));
  r.filter.send(udp(GUEST, 68, GW, 67, Buffer.alloc(300)));
  t.equal(r.inner.sent.length, 2);
  r.filter.send(udp(GUEST, 68, OUT, 67, Buffer.alloc(300)));
  r.filter.send(udp(GUEST, 68, DNS, 67, Buffer.alloc(300)));
  t.equal(r.inner.sent.length, 2, 'udp 68→67 elsewhere is judged like any UDP');
});

t.test('100,000 denied SYNs: every record kept (capped), log lines rate-limited with one summary', async (t) => {
  const lines: LogLine[] = [];
  const logger = memoryLogger(lines);
  // The log's clock stands still: the burst is all there is.
  const log = new RateLimitedLog(logger, { perSecond: 50, burst: 200, now: () => 0 });
  const r = rig(new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: '127.0.0.1', ports: 8000 }] }), { log, logger });
  const N = 100_000;
  const started = performance.now();
  for (let i = 0; i < N; i++) {
    r.filter.send(tcp(GUEST, 40000 + (i % 20000), GW, 9000 + (i % 1000), TcpFlag.SYN));
  }
  t.comment(`${N} denied SYNs in ${(performance.now() - started).toFixed(0)} ms`);
  t.equal(r.toGuest.length, N, 'each refused with a RST');
  r.filter.close(); // flushes the summary
  await new Promise((res) => setImmediate(res));
  const flows = lines.filter((l) => l['event'] === 'net.flow');
  const summaries = lines.filter((l) => l['event'] === 'log.suppressed');
  t.equal(flows.length, 200, `${flows.length} net.flow lines (burst 200)`);
  t.equal(summaries.length, 1, 'one log.suppressed line');
  t.equal((summaries[0]?.['suppressed'] as Record<string, number> | undefined)?.['net.flow'], N - flows.length, 'counting every suppressed line');
  t.equal(r.filter.recent.length, 2000, 'records are kept, capped');
});

t.test('without a shared log the filter builds its own rate limit from `logger`', async (t) => {
  const lines: LogLine[] = [];
  const r = rig(Policy.denyAll(), { logger: memoryLogger(lines) });
  for (let i = 0; i < 5000; i++) r.filter.send(tcp(GUEST, 40000 + i, GW, 9000, TcpFlag.SYN));
  r.filter.close();
  await new Promise((res) => setImmediate(res));
  const flows = lines.filter((l) => l['event'] === 'net.flow').length;
  const summaries = lines.filter((l) => l['event'] === 'log.suppressed');
  t.ok(flows < 400, `${flows} lines: bounded`);
  t.ok(summaries.length >= 1);
  t.equal(flows + summaries.reduce((n, l) => n + ((l['suppressed'] as Record<string, number>)['net.flow'] ?? 0), 0), 5000, 'every line logged or counted');
});

t.test('guest frames from addresses that are not the guest\'s are dropped before anything else', async (t) => {
  const { rig, udp, tcp, GW, GUEST } = await import('../helpers/frames.js');
  const { Policy } = await import('../../src/policy/index.js');
  const { encodeArp, encodeEthernet, EtherType, ipv4FromString, TcpFlag } = await import('../../netstack/index.js');
  const r = rig(Policy.allowAll());
  const other = ipv4FromString('127.0.0.1')!;
  r.filter.send(udp(other, 1000, GW, 53, Buffer.from('x')));
  r.filter.send(tcp(ipv4FromString('10.0.2.16')!, 1000, GW, 80, TcpFlag.SYN));
  t.equal(r.inner.sent.length, 0, 'nothing forged reached passt');
  t.equal(r.filter.stats().spoofed, 2);
  r.filter.send(udp(GUEST, 1000, GW, 53, Buffer.from('x')));
  t.equal(r.inner.sent.length, 1, 'the genuine source passes');
  const mac = Buffer.from('02000000000f', 'hex');
  const arp = (sender: Uint8Array): Buffer => encodeEthernet(Buffer.alloc(6, 0xff), mac, EtherType.ARP, encodeArp({ op: 1, senderMac: mac, senderIp: sender, targetMac: Buffer.alloc(6), targetIp: GW }));
  r.filter.send(arp(other));
  t.equal(r.inner.sent.length, 1, 'ARP with a forged sender address is dropped');
  r.filter.send(arp(GUEST));
  r.filter.send(arp(Buffer.alloc(4)));
  t.equal(r.inner.sent.length, 3, 'ARP from the guest, and an ARP probe (0.0.0.0), pass');
  t.equal(r.filter.stats().spoofed, 3);
});
