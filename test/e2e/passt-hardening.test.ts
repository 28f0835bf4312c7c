/**
 * End to end: a real guest through the frame filter and passt, on what a hostile guest
 * (or a plain one) does with fragments and DNS. The policy allows udp/tcp 127.0.0.1:P
 * only (a UDP echo on the host). The guest's eth0 has a 1500-byte MTU, so datagrams
 * above 1472 bytes leave it fragmented: the filter reassembles them, judges them whole
 * and gives passt one frame; the echo comes back as one frame from passt, which the
 * filter cuts to the guest's MTU. The largest datagram passt takes is 65493 bytes
 * (a 65535-byte frame); larger ones are dropped. DNS to passt's forwarder (10.0.2.3:53)
 * is judged as the host resolver, which this policy does not allow: refused at once.
 * HOST SAFETY: the echo listens on 127.0.0.1 only; the guest targets the gateway alias
 * and the forwarder, and nothing it sends to the forwarder passes the policy.
 */
import t from 'tap';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { memoryLogger } from '../helpers/memory-logger.js';
import { createSocket } from 'node:dgram';
import { readFileSync } from 'node:fs';
import { Sandbox } from '../../src/index.js';
import { passtDnsUpstream } from '../../src/engine/network-passt.js';
import { Policy } from '../../src/policy/index.js';

const GATEWAY = '10.0.2.2';
const SIZES = [1472, 1473, 4000, 30000, 65493];
const { skip, tools } = await e2ePrerequisites(t, { tools: true, passt: true });

t.test('fragmented datagrams pass whole both ways; DNS follows the policy', { skip }, async (t) => {
  const echo = createSocket('udp4');
  const received: number[] = [];
  echo.on('message', (m, r) => { received.push(m.length); echo.send(m, r.port, r.address); });
  await new Promise<void>((res) => { echo.bind(0, '127.0.0.1', res); });
  t.teardown(() => { echo.close(); });
  const port = echo.address().port;
  const events: Array<Record<string, unknown>> = [];
  const logger = memoryLogger(events, (r) => r['event'] === 'net.flow');
  const policy = new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: ['tcp', 'udp'], cidr: '127.0.0.1/32', ports: port, name: 'echo' }] });
  const r = await Sandbox.run({
    argv: ['sh', '-c', [
      'ip link show eth0 | grep -o "mtu [0-9]*"',
      ...[...SIZES, 65494].map((n) => `head -c ${n} /dev/urandom > /tmp/d; tsibox-tcp -u -c ${GATEWAY} ${port} < /tmp/d > /tmp/r; s=$?; cmp -s /tmp/d /tmp/r && same=yes || same=no; echo "udp${n}=$s back=$(wc -c < /tmp/r) same=$same"`),
      'printf query > /tmp/q',
      `s=$(date +%s); tsibox-tcp -u -c 10.0.2.3 53 < /tmp/q; echo "dnsudp=$? in $(( $(date +%s) - s ))s"`,
      `s=$(date +%s); tsibox-tcp 10.0.2.3 53 < /tmp/q; echo "dnstcp=$? in $(( $(date +%s) - s ))s"`,
    ].join('\n')],
    extraArchives: [tools!],
    engine: E2E_ENGINE,
    network: { mode: 'passt', policy },
    logger,
    timeoutMs: 120_000,
  });
  const out = r.stdout!.toString();
  t.comment(out.trim());
  t.equal(r.exitCode, 0, `stderr: ${r.stderr?.toString()}`);
  t.match(out, /mtu 1500/, 'the guest MTU is 1500');
  for (const n of SIZES) t.match(out, new RegExp(`udp${n}=0 back=${n} same=yes`), `${n} bytes: sent whole, echoed whole`);
  t.same(received, SIZES, 'the host got each datagram once, whole');
  t.match(out, /udp65494=110 back=0/, '65494 bytes (a frame above passt\'s 65535): dropped, no reply');
  const u = /dnsudp=(\d+) in (\d+)s/.exec(out);
  t.equal(u?.[1], '111', 'DNS over UDP to the forwarder: ECONNREFUSED (ICMP port unreachable)');
  t.ok(Number(u?.[2]) <= 2, 'at once');
  const c = /dnstcp=(\d+) in (\d+)s/.exec(out);
  t.equal(c?.[1], '111', 'DNS over TCP: refused (RST)');
  const resolver = passtDnsUpstream(readFileSync('/etc/resolv.conf', 'utf8'));
  t.ok(events.some((e) => e['protocol'] === 'udp' && e['decision'] === 'deny' && e['dst'] === '10.0.2.3:53' && e['hostDst'] === resolver), `the DNS query was judged as ${resolver}:53`);
  t.ok(events.some((e) => e['protocol'] === 'udp' && e['decision'] === 'allow' && e['rule'] === 'echo' && Number(e['bytesFromGuest']) > 65000), 'the echo flow counted the large datagrams');
});
