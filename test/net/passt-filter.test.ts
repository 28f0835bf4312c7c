// The frame filter in front of a REAL passt (no guest: crafted frames). Debian 12's
// passt does not reassemble fragments: it reads a later fragment's data as a transport
// header. These check what really reaches host sockets: a later fragment carrying a
// UDP header for a denied port delivers nothing there; a datagram above the MTU
// arrives whole, and its echo comes back cut to the guest's MTU; 0.0.0.0 (which passt
// delivers to the host's loopback) reaches nothing even under allow-all.
// HOST SAFETY: the servers listen on 127.0.0.1 only; every frame targets the gateway
// alias or 0.0.0.0.
import t, { type Test } from 'tap';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { pino } from 'pino';
import { decodeFrame, encodeUdp, IpProto, ipv4FromString, Reassembler } from '../../netstack/index.js';
import { findPasst, startPasst, type PasstProcess } from '../../proxies/passt.js';
import { FramePolicyFilter } from '../../src/frame-filter/frame-policy.js';
import { Policy } from '../../src/policy/index.js';
import { cut, frag4, GUEST, GW, udp } from '../helpers/frames.js';

const log = pino({ level: 'silent' });
const NET = { address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', mac: '02:00:00:00:00:0f', logger: log };

async function passtUnusable(): Promise<string | false> {
  if (findPasst() === undefined) return 'passt is not installed (Debian: apt-get install passt)';
  try {
    await (await startPasst(NET)).close();
    return false;
  } catch (e) {
    return `passt cannot run here: ${(e as Error).message}`;
  }
}
const skip = await passtUnusable();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Server { sock: UdpSocket; port: number; got: Buffer[] }

async function udpServer(echo: boolean): Promise<Server> {
  const sock = createSocket('udp4');
  const got: Buffer[] = [];
  sock.on('message', (m, r) => { got.push(m); if (echo) sock.send(m, r.port, r.address); });
  await new Promise<void>((res) => { sock.bind(0, '127.0.0.1', res); });
  return { sock, port: sock.address().port, got };
}

async function rig(t: Test, policy: Policy) {
  const passt: PasstProcess = await startPasst(NET);
  const filter = new FramePolicyFilter({ inner: passt.backend, policy, gateway: '10.0.2.2', guestAddress: '10.0.2.15', mapGatewayToHost: true });
  const toGuest: Buffer[] = [];
  filter.attach({ deliver: (f) => { toGuest.push(f); }, writable: () => {}, closed: () => {} });
  t.teardown(async () => { filter.close(); await passt.close(); });
  return { filter, toGuest };
}

t.test('a later fragment with a UDP header for a denied port delivers nothing there', { skip }, async (t) => {
  const a = await udpServer(false);
  const d = await udpServer(false);
  t.teardown(() => { a.sock.close(); d.sock.close(); });
  const r = await rig(t, new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'udp', cidr: '127.0.0.1', ports: a.port }] }));
  const first = encodeUdp(41000, a.port, Buffer.alloc(16, 1), GUEST, GW);
  const evil = encodeUdp(41001, d.port, Buffer.from('evil!'), GUEST, GW);
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 77, 0, true, first));
  r.filter.send(frag4(GUEST, GW, IpProto.UDP, 77, first.length, false, evil));
  await sleep(300);
  t.equal(d.got.length, 0, 'the denied port got nothing');
  t.equal(a.got.length, 1, 'the allowed port got the datagram');
});

t.test('an allowed datagram above the MTU arrives whole; its echo comes back cut to the guest MTU', { skip }, async (t) => {
  const a = await udpServer(true);
  t.teardown(() => { a.sock.close(); });
  const r = await rig(t, new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'udp', cidr: '127.0.0.1', ports: a.port }] }));
  const results: string[] = [];
  for (const size of [1473, 4000, 30000, 65493]) {
    a.got.length = 0;
    r.toGuest.length = 0;
    const msg = encodeUdp(42000, a.port, Buffer.alloc(size, size & 0xff), GUEST, GW);
    for (const [off, more, data] of cut(msg, 1480)) r.filter.send(frag4(GUEST, GW, IpProto.UDP, size & 0xffff, off, more, data));
    await sleep(200);
    t.same(a.got.map((g) => g.length), [size], `${size} bytes arrived as one datagram`);
    const re = new Reassembler();
    let back = -1;
    for (const f of r.toGuest) {
      if (f.length > 1514) t.fail(`a ${f.length}-byte frame for a guest with a 1500-byte MTU`);
      const dec = decodeFrame(f);
      if (!dec.ok || dec.value.kind !== 'ip') continue;
      const w = re.add(f, dec.value, 0);
      if (w.status !== 'complete') continue;
      const whole = decodeFrame(w.frame);
      if (whole.ok && whole.value.kind === 'ip' && whole.value.l4.kind === 'udp') back = whole.value.l4.udp.end - whole.value.l4.udp.payloadOffset;
    }
    t.equal(back, size, `its ${size}-byte echo came back in ${r.toGuest.length} frames`);
    results.push(`${size}: ${r.toGuest.length} frames back`);
  }
  t.comment(results.join(', '));
});

t.test('unspecified 0.0.0.0 reaches nothing, even under allow-all (passt would deliver it to loopback)', { skip }, async (t) => {
  const a = await udpServer(false);
  t.teardown(() => { a.sock.close(); });
  const r = await rig(t, Policy.allowAll());
  r.filter.send(udp(GUEST, 43000, ipv4FromString('0.0.0.0')!, a.port, Buffer.from('hi')));
  r.filter.send(udp(GUEST, 43000, GW, a.port, Buffer.from('via gw')));
  await sleep(300);
  t.same(a.got.map((g) => g.toString()), ['via gw'], 'only the gateway datagram arrived');
});

t.test('forged guest sources cannot redirect "gateway" traffic (passt addr_seen)', { skip }, async (t) => {
  // passt remembers the source of guest frames and, once a port looks "local", sends
  // later gateway traffic to that remembered address. A guest forging its source could
  // so reach 127.0.0.2:P while the filter judged 127.0.0.1:P.
  const allowed = createSocket('udp4');
  const gotAllowed: string[] = [];
  allowed.on('message', (m, r) => { gotAllowed.push(m.toString()); allowed.send(m, r.port, r.address); });
  await new Promise<void>((res) => { allowed.bind(0, '127.0.0.1', res); });
  const P = allowed.address().port;
  const denied = createSocket('udp4');
  const gotDenied: string[] = [];
  denied.on('message', (m) => { gotDenied.push(m.toString()); });
  await new Promise<void>((res) => { denied.bind(P, '127.0.0.2', res); });
  t.teardown(() => { allowed.close(); denied.close(); });
  const r = await rig(t, new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'udp', cidr: '127.0.0.1', ports: P }] }));
  r.filter.send(udp(GUEST, 40000, GW, P, Buffer.from('ping as the guest')));
  await sleep(300);
  r.filter.send(udp(ipv4FromString('127.0.0.1')!, 40001, GW, P, Buffer.from('ping as 127.0.0.1')));
  await sleep(300);
  r.filter.send(udp(ipv4FromString('127.0.0.2')!, 40002, GW, P, Buffer.from('exfiltration')));
  await sleep(300);
  t.same(gotDenied, [], 'the denied server got nothing');
  t.same(gotAllowed, ['ping as the guest'], 'only the genuine datagram reached the allowed server');
  t.equal(r.filter.stats().spoofed, 2, 'both forged frames counted as spoofed');
});
