/**
 * End to end: the egress policy on the virtio-net path (passt mode). Two host servers
 * on 127.0.0.1 (ports A and B); the policy allows 127.0.0.1:A only. The guest reaches
 * 10.0.2.2:A (passt maps the gateway to the host's 127.0.0.1; the filter judges
 * 127.0.0.1), its connect to 10.0.2.2:B fails at once with ECONNREFUSED (the filter's
 * RST) and server B sees no connection; denied UDP gets nothing to the host.
 * HOST SAFETY: the guest only targets the gateway alias, the servers listen on
 * 127.0.0.1 only, every guest command is bounded by the sandbox timeout.
 */
import t from 'tap';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { memoryLogger } from '../helpers/memory-logger.js';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Sandbox } from '../../src/index.js';
import { Policy } from '../../src/policy/index.js';

const GATEWAY = '10.0.2.2';
const { skip, tools } = await e2ePrerequisites(t, { tools: true, passt: true });

t.test('the policy applies to passt mode', { skip }, async (t) => {
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  const udps: UdpSocket[] = [];
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    for (const u of udps) u.close();
    await Promise.all(servers.map((s) => new Promise<void>((r) => { s.close(() => { r(); }); })));
  });
  const listen = (s: Server): Promise<number> => new Promise((resolve, reject) => {
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { resolve((s.address() as AddressInfo).port); });
  });
  const bindUdp = (u: UdpSocket, port: number): Promise<number> => new Promise((resolve, reject) => {
    u.once('error', reject);
    u.bind(port, '127.0.0.1', () => { resolve(u.address().port); });
  });

  const http = createHttpServer((_req, res) => { res.end('allowed A\n'); });
  servers.push(http);
  const portA = await listen(http);
  let connectionsB = 0;
  const b = createServer((s) => { connectionsB++; sockets.add(s); s.destroy(); });
  servers.push(b);
  const portB = await listen(b);
  // UDP: an echo on 127.0.0.1:A (allowed: the rule is tcp+udp on port A) and a counter
  // on another port (denied).
  const echo = createSocket('udp4');
  udps.push(echo);
  let udpA = 0;
  echo.on('message', (m, r) => { udpA++; echo.send(m, r.port, r.address); });
  let udpAPort: number | null = portA;
  try { await bindUdp(echo, portA); } catch { udpAPort = null; }
  const counter = createSocket('udp4');
  udps.push(counter);
  let udpC = 0;
  counter.on('message', () => { udpC++; });
  const portC = await bindUdp(counter, 0);

  const events: Array<Record<string, unknown>> = [];
  const logger = memoryLogger(events, (r) => r['event'] === 'net.flow');
  const policy = new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: ['tcp', 'udp'], cidr: '127.0.0.1/32', ports: portA, name: 'port A' }] });
  const r = await Sandbox.run({
    argv: ['sh', '-c', [
      `wget -q -O- http://${GATEWAY}:${portA}/; echo "wgetA=$?"`,
      `s=$(date +%s); tsibox-tcp ${GATEWAY} ${portB} </dev/null; echo "tcpB=$? in $(( $(date +%s) - s ))s"`,
      `wget -q -O- http://${GATEWAY}:${portB}/ 2>&1; echo "wgetB=$?"`,
      udpAPort === null ? 'true' : `printf ping | tsibox-tcp -u -c ${GATEWAY} ${udpAPort}; echo; echo "udpA=$?"`,
      `s=$(date +%s); printf nope | tsibox-tcp -u -c ${GATEWAY} ${portC}; echo "udpC=$? in $(( $(date +%s) - s ))s"`,
    ].join('\n')],
    extraArchives: [tools!],
    engine: E2E_ENGINE,
    network: { mode: 'passt', policy },
    logger,
    timeoutMs: 90_000,
  });
  const out = r.stdout!.toString();
  t.comment(out.trim());
  t.equal(r.exitCode, 0, `stderr: ${r.stderr?.toString()}`);
  t.match(out, /allowed A\nwgetA=0/, 'port A is reachable through the gateway');
  const m = /tcpB=(\d+) in (\d+)s/.exec(out);
  t.equal(m?.[1], '111', 'connect to B fails with ECONNREFUSED');
  t.ok(Number(m?.[2]) <= 1, 'and fails fast');
  t.match(out, /Connection refused[\s\S]*wgetB=1/, 'wget to B is refused');
  t.equal(connectionsB, 0, 'server B saw no connection');
  if (udpAPort !== null) {
    t.match(out, /ping\nudpA=0/, 'allowed UDP echoes');
    t.ok(udpA >= 1);
  }
  const u = /udpC=(\d+) in (\d+)s/.exec(out);
  t.not(u?.[1], '0', 'denied UDP gets no reply');
  t.ok(Number(u?.[2]) <= 2, 'and learns it fast (ICMP port unreachable)');
  t.equal(udpC, 0, 'denied UDP never reached the host');
  t.ok(events.some((e) => e['protocol'] === 'tcp' && e['decision'] === 'allow' && e['hostDst'] === '127.0.0.1' && Number(e['bytesToGuest']) > 0), 'an allowed tcp flow event with bytes');
  t.ok(events.some((e) => e['protocol'] === 'tcp' && e['decision'] === 'deny' && e['dst'] === `${GATEWAY}:${portB}`), 'a denied tcp flow event');
  t.ok(events.some((e) => e['protocol'] === 'udp' && e['decision'] === 'deny' && e['dst'] === `${GATEWAY}:${portC}`), 'a denied udp flow event');
});
