// Regression tests for issue 13 (hostile guest) on the TSI paths: each case is a
// reproduction that got past the host before the fix. Targets are loopback only.
import t from 'tap';
import { createHash } from 'node:crypto';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  Errno, TsiOp, TsiPort, encodeConnect, encodeDgramOpen, encodeHello, encodeListen, SOCK_STREAM,
} from '../../proxies/protocol.js';
import { TsiFeature } from '../../proxies/listener.js';
import { TsiCallError } from '../support/tsi/tsi-guest.js';
import { PortMap } from '../../src/portmap/index.js';
import { memoryLogger, type LogLine } from '../helpers/memory-logger.js';
import { Policy } from '../../src/policy/index.js';
import { TsiHost } from '../../proxies/tsi.js';
import { GuestVsock } from '../support/vsock/guest.js';
import { rig, tcpServer, tempDir, udpSocket, until } from './helpers.js';

/** A full collection, so that heap numbers count what is kept, not garbage not yet collected. */
function collect(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

const DENY_LOOPBACK = { default: 'allow' as const, rules: [{ action: 'deny' as const, cidr: ['127.0.0.0/8', '::1/128'] }] };

t.test('unspecified destinations never reach host loopback (TCP)', async (t) => {
  const srv = await tcpServer(t, () => {});
  const srv6 = await tcpServer(t, () => {}, '::1');
  const { guest } = await rig(t, { policy: DENY_LOOPBACK });
  const spellings: Array<[string, 'ipv4' | 'ipv6', number]> = [
    ['0.0.0.0', 'ipv4', srv.port], ['0.1.2.3', 'ipv4', srv.port], ['::', 'ipv6', srv6.port],
    ['::ffff:0.0.0.0', 'ipv6', srv.port], ['::ffff:127.0.0.1', 'ipv6', srv.port], ['127.1.2.3', 'ipv4', srv.port],
  ];
  for (const [address, family, port] of spellings) {
    const err = await guest.connect({ family, address, port }).catch((e: unknown) => e);
    t.type(err, TsiCallError, `${address} refused`);
    t.ok(([Errno.EACCES, Errno.ENETUNREACH] as number[]).includes((err as TsiCallError).errno), `${address}: ${(err as Error).message}`);
  }
  t.equal(srv.connections(), 0, 'the IPv4 loopback server saw no connection');
  t.equal(srv6.connections(), 0, 'the IPv6 loopback server saw no connection');
});

t.test('unspecified destinations never reach host loopback (UDP)', async (t) => {
  const server = await udpSocket(t, 'udp4', '127.0.0.1');
  let got = 0;
  server.socket.on('message', () => { got++; });
  const { guest } = await rig(t, { policy: DENY_LOOPBACK });
  const u = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 0 });
  const errors: number[] = [];
  u.on('dgram-error', (e) => { errors.push(e); });
  for (const address of ['0.0.0.0', '0.255.0.1']) await u.send({ family: 'ipv4', address, port: server.port }, Buffer.from('x'));
  const u6 = await guest.udp({ family: 'ipv6', address: '::', port: 0 });
  u6.on('dgram-error', (e) => { errors.push(e); });
  for (const address of ['::', '::ffff:0.0.0.0', '::ffff:127.0.0.1']) await u6.send({ family: 'ipv6', address, port: server.port }, Buffer.from('y'));
  await until(() => errors.length === 5, 3000, 'five DGRAM_ERRORs');
  t.same(errors, Array(5).fill(Errno.EACCES));
  await new Promise((r) => setTimeout(r, 100));
  t.equal(got, 0, 'no datagram reached the loopback server');
});

t.test('IPv6 CIDR rules do not match IPv4 destinations (TSI)', async (t) => {
  const srv = await tcpServer(t, (s) => { s.end('hi'); });
  const allow6 = await rig(t, { policy: { default: 'deny', rules: [{ action: 'allow', cidr: '::/0' }] } });
  const err = await allow6.guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port }).catch((e: unknown) => e);
  t.equal((err as TsiCallError).errno, Errno.EACCES, 'allow ::/0 does not allow 127.0.0.1');
  const deny6 = await rig(t, { policy: { default: 'allow', rules: [{ action: 'deny', cidr: '::/0' }] } });
  const s = await deny6.guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port });
  t.equal((await s.readAll()).toString(), 'hi', 'deny ::/0 does not deny IPv4');
  t.equal(srv.connections(), 1);
});

t.test('unix targets are opt-in and judged on the canonical path', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'allowed'));
  mkdirSync(join(dir, 'secret'));
  const secret = join(dir, 'secret', 's.sock');
  let secretConnections = 0;
  const sockets = new Set<Socket>();
  const server = createServer((s) => { secretConnections++; sockets.add(s); s.end('secret'); });
  await new Promise<void>((r) => { server.listen(secret, r); });
  t.teardown(() => { for (const s of sockets) s.destroy(); server.close(); });
  symlinkSync(secret, join(dir, 'allowed', 'link.sock'));
  const policy = { default: 'deny' as const, rules: [{ action: 'allow' as const, protocol: 'unix' as const, path: `${join(dir, 'allowed')}/` }] };

  const off = await rig(t, { policy });
  const hello = await off.guest.hello(1000);
  t.equal(hello.features & TsiFeature.UNIX_STREAM, 0, 'HELLO does not offer unix streams by default');
  const e0 = await off.guest.connect({ family: 'unix', path: join(dir, 'allowed', 'link.sock') }).catch((e: unknown) => e);
  t.equal((e0 as TsiCallError).errno, Errno.EACCES, 'unix off → EACCES');

  const on = await rig(t, { policy, unixSockets: true });
  for (const path of [join(dir, 'allowed', '..', 'secret', 's.sock'), join(dir, 'allowed', 'link.sock'), `${dir}/allowed//../secret/s.sock`]) {
    const e = await on.guest.connect({ family: 'unix', path }).catch((x: unknown) => x);
    t.equal((e as TsiCallError).errno, Errno.EACCES, `${path} is judged as ${secret}`);
  }
  const rel = await on.guest.connect({ family: 'unix', path: 'allowed/link.sock' }).catch((x: unknown) => x);
  t.equal((rel as TsiCallError).errno, Errno.EINVAL, 'a relative path is refused');
  t.equal(secretConnections, 0, 'the secret socket saw no connection');
  const p2 = new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'unix', path: `${join(dir, 'secret')}/` }] });
  t.equal(p2.evaluate({ direction: 'outbound', protocol: 'unix', path: secret }).action, 'allow', 'control: the real path is allowed by a rule naming it');
});

t.test('a control session from an unprivileged guest port is refused and registers nothing', async (t) => {
  const portMap = new PortMap();
  portMap.add({ protocol: 'tcp', hostAddress: '127.0.0.1', hostPort: 0, guestPort: 80 });
  const lines: LogLine[] = [];
  const vsock = new GuestVsock();
  const host = new TsiHost({ device: vsock.device, policy: Policy.allowAll(), portMap, logger: memoryLogger(lines) });
  t.teardown(() => { host.close(); vsock.close(); });
  const c = await vsock.connect(TsiPort.CONTROL, 'seqpacket'); // an ephemeral port > 1023
  t.ok(c.localPort > 1023);
  void c.write(encodeHello(1)).catch(() => {});
  void c.write(encodeListen({ seq: 2, sockType: SOCK_STREAM, backlog: 1, vsockPort: 5000, bind: { family: 'ipv4', address: '0.0.0.0', port: 80 } })).catch(() => {});
  await until(() => c.state === 'closed', 3000, 'the session is ended');
  t.equal(lines.filter((l) => l['event'] === 'tsi.control.refused').length, 1, 'refusal logged');
  t.equal(host.listener.listeners, 0, 'no listener registered');
  t.equal(portMap.entries[0]?.boundPort ?? null, null, 'the published port was never bound');
  // The same requests from a reserved port (what the guest kernel uses) work.
  const { TsiGuest } = await import('../support/tsi/tsi-guest.js');
  const kernel = new TsiGuest(vsock);
  t.teardown(() => { kernel.close(); });
  await kernel.hello(1023);
  const l = await kernel.listen({ family: 'ipv4', address: '0.0.0.0', port: 80 }, () => {});
  t.equal(l.result, 0, 'a privileged session exposes the mapped port');
  t.ok((portMap.entries[0]?.boundPort ?? 0) > 0);
});

t.test('a guest that reads nothing cannot make the host queue replies without bound', async (t) => {
  const { vsock } = await rig(t, { hello: false });
  collect();
  const before = process.memoryUsage();
  // buf_alloc 0: the guest never accepts a byte of our replies.
  const control = await vsock.connect(TsiPort.CONTROL, 'seqpacket', { localPort: 900, bufAlloc: 0 });
  const dgram = await vsock.connect(TsiPort.DGRAM, 'seqpacket', { bufAlloc: 0 });
  await dgram.write(encodeDgramOpen({ family: 'ipv4', address: '0.0.0.0', port: 0 }));
  const hellos = Buffer.concat(Array.from({ length: 64 }, (_, i) => encodeHello(i)));
  const denied = Buffer.concat(Array.from({ length: 64 }, () => Buffer.from(encodeDgramLike())));
  const sent = { control: 0, dgram: 0 };
  const deadline = Date.now() + 3000;
  // Each write resolves when the device took it; when the host stops crediting us, it stalls.
  const flood = async (s: typeof control, msg: Buffer, k: keyof typeof sent): Promise<void> => {
    while (Date.now() < deadline) {
      const done = await Promise.race([s.write(msg).then(() => true), new Promise<boolean>((r) => setTimeout(() => { r(false); }, 200))]);
      if (!done) return;
      sent[k] += 64;
    }
  };
  await Promise.all([flood(control, hellos, 'control'), flood(dgram, denied, 'dgram')]);
  const stats = vsock.device.stats();
  t.ok(stats.bufferedToGuest <= 2 * (256 * 1024 + 64 * 40), `host holds ${stats.bufferedToGuest} bytes for the guest (bounded by two high-water marks)`);
  t.ok(sent.control < 200_000, `the control session got stuck after ${sent.control} requests (was unbounded)`);
  // A UDP socket is not paced by what the guest reads (as UDP): its send errors beyond
  // the queue are dropped, so the host's queue stays bounded while it keeps sending.
  t.comment(`datagram session: ${sent.dgram} denied datagrams taken`);
  collect();
  const grown = process.memoryUsage().heapUsed - before.heapUsed;
  t.ok(grown < 64 * 1024 * 1024, `heap grew ${(grown / 1048576).toFixed(1)} MiB`);
  t.equal(control.state, 'connected', 'the flooding session is merely stalled, not torn down');
  // The rest of the service still works.
  const srv = await tcpServer(t, (s) => { s.end('ok'); });
  const other = await rig(t);
  const s = await other.guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port });
  t.equal((await s.readAll()).toString(), 'ok');
});

/** A DGRAM to a denied destination (every one earns a DGRAM_ERROR reply). */
function encodeDgramLike(): Buffer {
  const b = Buffer.alloc(33);
  b.writeUInt16LE(0x4954, 0); b[2] = 1; b[3] = TsiOp.DGRAM; b.writeUInt32LE(33, 4);
  b.writeUInt16LE(2, 8); b.writeUInt16LE(9, 10); b[16] = 10; b[19] = 1; // 10.0.0.1:9, denied by LOOPBACK_ONLY
  return b;
}

t.test('denials are logged at a bounded rate with a summary of what was suppressed', async (t) => {
  const lines: LogLine[] = [];
  const vsock = new GuestVsock();
  const host = new TsiHost({ device: vsock.device, policy: Policy.denyAll(), logger: memoryLogger(lines), limits: { connectionsPerSecond: 1_000_000 } });
  t.teardown(() => { host.close(); vsock.close(); });
  const N = 1500;
  for (let i = 0; i < N; i += 100) {
    await Promise.all(Array.from({ length: 100 }, async () => {
      const s = await vsock.connect(TsiPort.STREAM);
      await s.write(encodeConnect({ family: 'ipv4', address: '10.0.0.1', port: 80 }));
      await until(() => s.state === 'closed' || s.heldBytes >= 0, 2000);
    }));
  }
  await until(() => host.connections.recent.length >= N, 10_000, 'all denials recorded');
  host.close();
  const conn = lines.filter((l) => l['event'] === 'tsi.connection');
  const summary = lines.filter((l) => l['event'] === 'log.suppressed');
  t.ok(conn.length <= 260, `${conn.length} connection lines for ${N} denials`);
  t.equal(summary.length >= 1, true, 'a log.suppressed line');
  const suppressed = summary.reduce((n, l) => n + Number((l['suppressed'] as Record<string, number>)['tsi.connection'] ?? 0), 0);
  t.equal(conn.length + suppressed, N, 'every line is either written or counted');
  t.equal(host.connections.recent.length, N, 'every record is still kept');
});

t.test('limits: connections, listeners across sessions, UDP sockets, connect rate', async (t) => {
  const srv = await tcpServer(t, (s) => { s.on('end', () => { s.end(); }); });
  const portMap = new PortMap();
  const { guest, vsock, host } = await rig(t, { portMap, limits: { maxConnections: 3, maxListeners: 2, maxUdpSockets: 2, connectionsPerSecond: 1_000_000 } });
  const to = { family: 'ipv4' as const, address: '127.0.0.1', port: srv.port };
  const open = [await guest.connect(to), await guest.connect(to), await guest.connect(to)];
  const over = await guest.connect(to).catch((e: unknown) => e);
  t.equal((over as TsiCallError).errno, Errno.ENOBUFS, 'the 4th concurrent connection gets ENOBUFS');
  open[0]!.close();
  await until(() => host.limits.connections === 2, 3000, 'slot released');
  open.push(await guest.connect(to));
  t.pass('a slot freed by close is usable again');

  const l1 = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 81 }, () => {});
  t.equal(l1.result, -Errno.EADDRNOTAVAIL, 'first listener registered (unmapped)');
  const { TsiGuest } = await import('../support/tsi/tsi-guest.js');
  const second = new TsiGuest(vsock);
  t.teardown(() => { second.close(); });
  await second.hello(1010);
  const l2 = await second.listen({ family: 'ipv4', address: '0.0.0.0', port: 82 }, () => {});
  t.equal(l2.result, -Errno.EADDRNOTAVAIL, 'second listener on another session');
  const l3 = await second.listen({ family: 'ipv4', address: '0.0.0.0', port: 83 }, () => {});
  t.equal(l3.result, -Errno.ENOBUFS, 'the limit counts listeners of all sessions');

  const u1 = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 0 });
  await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 0 });
  const u3 = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 0 }).catch((e: unknown) => e);
  t.equal((u3 as TsiCallError).errno, Errno.ENOBUFS, 'third UDP socket gets ENOBUFS');
  u1.close();
  await until(() => host.limits.udpSockets === 1, 3000, 'UDP slot released');

  const rated = await rig(t, { limits: { connectionsPerSecond: 5 } });
  const results = await Promise.all(Array.from({ length: 8 }, () => rated.guest.connect(to).then((s) => { s.close(); return 0; }, (e: TsiCallError) => e.errno)));
  t.equal(results.filter((r) => r === 0).length, 5, 'a burst of 5 passes');
  t.same(results.filter((r) => r !== 0), [Errno.EAGAIN, Errno.EAGAIN, Errno.EAGAIN], 'the rest get EAGAIN');
  t.equal(rated.host.limits.refused.connectionRate, 3);
});

t.test('a failed DGRAM_OPEN bind reports its errno before the connection ends', async (t) => {
  const taken = await udpSocket(t, 'udp4', '127.0.0.1');
  const portMap = new PortMap();
  portMap.add({ protocol: 'udp', hostAddress: '127.0.0.1', hostPort: taken.port, guestPort: 5353 });
  const { vsock } = await rig(t, { portMap });
  // From a reserved port, as the guest kernel opens a bound UDP socket.
  const sock = await vsock.connect(TsiPort.DGRAM, 'seqpacket', { localPort: 1021 });
  const reply = new Promise<Buffer>((r) => { sock.once('data', (d) => { r(d); }); });
  await sock.write(encodeDgramOpen({ family: 'ipv4', address: '0.0.0.0', port: 5353 }));
  t.equal((await reply).readInt32LE(8), -Errno.EADDRINUSE, 'EADDRINUSE reached the guest');
  await until(() => sock.state === 'closed', 3000, 'then the connection ends');
});

t.test('bytes sent right after CONNECT, before the host connect completes, all arrive', async (t) => {
  const received = createHash('sha256');
  let bytes = 0;
  let done!: () => void;
  const finished = new Promise<void>((r) => { done = r; });
  const srv = await tcpServer(t, (s) => {
    s.on('data', (d: Buffer) => { received.update(d); bytes += d.length; });
    s.on('end', () => { s.end(); done(); });
  });
  const { vsock } = await rig(t);
  const s = await vsock.connect(TsiPort.STREAM);
  const payload = Buffer.alloc(1024 * 1024);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
  // No wait for CONNECT_RESULT: CONNECT and 1 MiB (4x the host's buf_alloc) at once.
  await s.write(Buffer.concat([encodeConnect({ family: 'ipv4', address: '127.0.0.1', port: srv.port }), payload.subarray(0, 1000)]));
  await s.write(payload.subarray(1000));
  s.end();
  await finished;
  t.equal(bytes, payload.length, 'every byte arrived (credit for early bytes was returned)');
  t.equal(received.digest('hex'), createHash('sha256').update(payload).digest('hex'));
});

t.test('an IPv6 UDP socket talking to ::ffff:127.0.0.1 hears the replies', async (t) => {
  const server = await udpSocket(t, 'udp4', '127.0.0.1');
  server.socket.on('message', (m, r) => { server.socket.send(Buffer.concat([Buffer.from('re:'), m]), r.port, r.address); });
  const { guest } = await rig(t);
  const u = await guest.udp({ family: 'ipv6', address: '::', port: 0 });
  const got = new Promise<[Buffer, unknown]>((r) => { u.once('message', (m, from) => { r([m, from]); }); });
  await u.send({ family: 'ipv6', address: '::ffff:127.0.0.1', port: server.port }, Buffer.from('ping'));
  const [msg, from] = await got;
  t.equal(msg.toString(), 're:ping');
  t.match(from, { family: 'ipv6', port: server.port }, 'the source is an IPv6 (mapped) address');
  t.match((from as { address: string }).address, /ffff:7f00:1$/);
});

t.test('an unprivileged guest socket cannot claim a published UDP port', async (t) => {
  const portMap = new PortMap();
  portMap.add({ protocol: 'udp', hostAddress: '127.0.0.1', hostPort: 0, guestPort: 53 });
  const { guest, vsock } = await rig(t, { portMap });
  // What a raw AF_VSOCK process does: DGRAM_OPEN bound to :53 from an ephemeral vsock port.
  const rogue = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 53 }, { privileged: false });
  t.equal(rogue.exposed, false, 'not exposed from an unprivileged vsock port');
  t.equal(portMap.entries[0]!.boundPort, null, 'the published port is not bound for it');
  // The guest kernel opens it from a reserved port: exposed.
  const s = await vsock.connect(TsiPort.DGRAM, 'seqpacket', { localPort: 1022 });
  const reply = new Promise<Buffer>((r) => { s.once('data', (d) => { r(d); }); });
  await s.write(encodeDgramOpen({ family: 'ipv4', address: '0.0.0.0', port: 53 }));
  const res = await reply;
  t.equal(res.readInt32LE(8), 0, 'DGRAM_OPEN from a reserved port succeeds');
  t.equal(res.readUInt32LE(12) & 1, 1, 'and is EXPOSED');
  t.ok((portMap.entries[0]!.boundPort ?? 0) > 0, 'the published port is bound');
});

t.test('a LISTEN whose host bind fails holds its slot only under the id the guest got', async (t) => {
  const taken = await tcpServer(t, () => {});
  const portMap = new PortMap();
  portMap.add({ protocol: 'tcp', hostAddress: '127.0.0.1', hostPort: taken.port, guestPort: 80 });
  const { guest, host } = await rig(t, { portMap, limits: { maxListeners: 1 } });
  const r1 = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 80 }, () => {});
  // The entry left the map (test/tsi/publish-failure.test.ts): registered, unexposed.
  t.equal(r1.result, -Errno.EADDRNOTAVAIL);
  t.not(r1.listenerId, 0, 'the guest has an id to UNLISTEN with');
  t.equal(host.limits.listeners, 1);
  t.equal(await guest.unlisten(r1.listenerId), 0);
  t.equal(host.listener.listeners, 0, 'unregistered');
  t.equal(host.limits.listeners, 0, 'no slot held');
  const r2 = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 81 }, () => {});
  t.equal(r2.result, -Errno.EADDRNOTAVAIL, 'the one listener slot is free again');
});

t.test('unix: a denied path is EACCES whether or not it exists (no existence oracle)', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'allowed'));
  mkdirSync(join(dir, 'private'));
  writeFileSync(join(dir, 'private', 'id_rsa'), 'secret');
  const { guest } = await rig(t, { unixSockets: true, policy: { default: 'deny', rules: [{ action: 'allow', protocol: 'unix', path: `${join(dir, 'allowed')}/` }] } });
  const errnos: number[] = [];
  for (const p of ['private/id_rsa', 'private/absent', 'private/id_rsa/x', 'nodir/x']) {
    const e = await guest.connect({ family: 'unix', path: join(dir, p) }).catch((x: unknown) => x);
    errnos.push((e as TsiCallError).errno);
  }
  t.same(errnos, [Errno.EACCES, Errno.EACCES, Errno.EACCES, Errno.EACCES]);
  const e = await guest.connect({ family: 'unix', path: join(dir, 'allowed', 'absent.sock') }).catch((x: unknown) => x);
  t.equal((e as TsiCallError).errno, Errno.ENOENT, 'an allowed path that does not exist is ENOENT');
});

t.test('options that would be ignored are refused', async (t) => {
  const { resolveLimits } = await import('../../proxies/limits.js');
  t.throws(() => resolveLimits({ maxConnection: 5 } as never), { code: 'INVALID_ARGUMENT', message: /maxConnection is not a limit/ });
  t.throws(() => resolveLimits({ maxConnections: '5' } as never), { code: 'INVALID_ARGUMENT', message: /got "5"/ });
  const { checkPasstPolicy } = await import('../../src/engine/network-passt.js');
  t.throws(() => { checkPasstPolicy({ mode: 'passt', policy: Policy.allowAll(), unixSockets: true } as never); }, { code: 'INVALID_ARGUMENT', message: /TSI option/ });
  t.throws(() => { checkPasstPolicy({ mode: 'passt', policy: Policy.allowAll(), limits: {} } as never); }, { code: 'INVALID_ARGUMENT' });
});
