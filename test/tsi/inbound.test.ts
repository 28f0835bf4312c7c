import t, { type Test } from 'tap';
import { connect, type Socket } from 'node:net';
import { Errno } from '../../proxies/protocol.js';
import { PortMap } from '../../src/portmap/index.js';
import { rig, tcpServer, until, udpSocket } from './helpers.js';
import type { TsiStream } from '../support/tsi/tsi-guest.js';

function hostConnect(t: Tap, port: number, host = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host }, () => { resolve(s); });
    s.once('error', reject);
    t.teardown(() => { s.destroy(); });
  });
}
type Tap = Test;

/** A free loopback port (bound then released). */
async function freePort(t: Tap): Promise<number> {
  const s = await tcpServer(t, () => {});
  await new Promise<void>((r) => s.server.close(() => r()));
  return s.port;
}

function serveUpper(s: TsiStream): void {
  s.on('data', (d) => { void s.write(Buffer.from(d.toString().toUpperCase())); });
  s.on('end', () => { s.end(); });
}

t.test('inbound through a port map; the guest sees the real client address', async (t) => {
  const hostPort = await freePort(t);
  const portMap = new PortMap([`${hostPort}:8080`]);
  const { guest } = await rig(t, { portMap });
  let accepted: TsiStream | null = null;
  const r = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 8080 }, (s) => { accepted = s; serveUpper(s); });
  t.equal(r.result, 0, 'exposed');
  t.same(r.host, { family: 'ipv4', address: '127.0.0.1', port: hostPort }, 'LISTEN_RESULT reports the real host port');
  t.equal(portMap.lookupGuest('tcp', 8080)!.boundPort, hostPort);
  const c = await hostConnect(t, hostPort);
  const reply = new Promise<string>((resolve) => c.once('data', (d) => resolve(d.toString())));
  c.write('hello');
  t.equal(await reply, 'HELLO');
  await until(() => accepted !== null);
  t.same(accepted!.peer, { family: 'ipv4', address: '127.0.0.1', port: c.localPort }, 'accept() peer = real client');
  t.equal(accepted!.local.family === 'ipv4' && accepted!.local.port, 8080);
});

t.test('host port 0 in the map: the OS picks, LISTEN_RESULT and the map report it', async (t) => {
  const portMap = new PortMap([{ protocol: 'tcp', hostPort: 0, guestPort: 9000 }]);
  const { guest } = await rig(t, { portMap });
  const r = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 9000 }, serveUpper);
  t.equal(r.result, 0);
  const port = r.host.family === 'ipv4' ? r.host.port : 0;
  t.ok(port > 0, `host port ${port}`);
  t.equal(portMap.lookupGuest('tcp', 9000)!.boundPort, port);
  const c = await hostConnect(t, port);
  c.write('x');
  t.equal(await new Promise<string>((res) => c.once('data', (d) => res(d.toString()))), 'X');
});

t.test('an unmapped guest listener is unreachable from the host', async (t) => {
  const { guest, host } = await rig(t);
  const r = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 7070 }, serveUpper);
  t.equal(r.result, -Errno.EADDRNOTAVAIL, 'LISTEN_RESULT -EADDRNOTAVAIL: registered, not exposed');
  t.ok(r.listenerId > 0);
  t.equal(host.listener.listeners, 1);
  // Nothing listens on the host for it: connecting to 7070 on loopback is refused
  // (unless something unrelated on this machine owns 7070, which we then do not touch).
  const e = await hostConnect(t, 7070).then((s) => { s.destroy(); return null; }, (err: NodeJS.ErrnoException) => err.code);
  t.ok(e === 'ECONNREFUSED' || e === null, 'no tsibox listener on 7070');
  t.equal(host.connections.recent.filter((x) => x.kind === 'listener').length, 0, 'no inbound connection reached the proxy');
  // Adding a mapping at run time exposes it.
  const hostPort = await freePort(t);
  host.portMap.add({ protocol: 'tcp', hostPort, guestPort: 7070 });
  await until(() => host.portMap.lookupGuest('tcp', 7070)!.boundPort === hostPort, 2000, 'exposure');
  const c = await hostConnect(t, hostPort);
  c.write('late');
  t.equal(await new Promise<string>((res) => c.once('data', (d) => res(d.toString()))), 'LATE');
});

t.test('removing a map at run time stops new connections; open ones continue', async (t) => {
  const hostPort = await freePort(t);
  const portMap = new PortMap([`${hostPort}:8081`]);
  const { guest } = await rig(t, { portMap });
  await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 8081 }, serveUpper);
  const c = await hostConnect(t, hostPort);
  t.ok(portMap.remove('tcp', 8081));
  await new Promise((r) => setTimeout(r, 20));
  const e = await hostConnect(t, hostPort).then(() => null, (err: NodeJS.ErrnoException) => err.code);
  t.equal(e, 'ECONNREFUSED', 'new connections refused after removal');
  c.write('still here');
  t.equal(await new Promise<string>((res) => c.once('data', (d) => res(d.toString()))), 'STILL HERE', 'the open connection continues');
});

t.test('inbound policy denies a client before the guest sees it', async (t) => {
  const hostPort = await freePort(t);
  const portMap = new PortMap([`${hostPort}:8082`]);
  const { guest, host } = await rig(t, { portMap, policy: { default: 'allow', rules: [{ action: 'deny', direction: 'inbound', ports: 8082 }] } });
  let accepts = 0;
  await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 8082 }, () => { accepts++; });
  const c = await hostConnect(t, hostPort);
  await new Promise<void>((r) => { c.once('close', () => r()); c.resume(); });
  t.equal(accepts, 0);
  t.equal(host.connections.recent.at(-1)!.decision, 'deny');
});

t.test('control channel: duplicate listeners, bad requests, session cleanup', async (t) => {
  const hostPort = await freePort(t);
  const portMap = new PortMap([`${hostPort}:8083`]);
  const { guest, host } = await rig(t, { portMap });
  const a = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 8083 }, serveUpper);
  t.equal(a.result, 0);
  const b = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 8083 }, serveUpper);
  t.equal(b.result, -Errno.EADDRINUSE);
  const z = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 0 }, serveUpper);
  t.equal(z.result, -Errno.EINVAL, 'port 0: the guest must bind first and send the real port');
  t.equal(await guest.unlisten(9999), -Errno.ENOENT);
  t.equal(await guest.unlisten(a.listenerId), 0);
  t.equal(portMap.lookupGuest('tcp', 8083)!.boundPort, null, 'host listener closed');
  await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 8083 }, serveUpper);
  t.equal(host.listener.listeners, 1);
  guest.close(); // the control connection goes away → its listeners go too
  await until(() => host.listener.listeners === 0, 2000, 'cleanup');
  t.pass('listeners dropped with their session');
});

t.test('UDP query/reply carries the real source address (v4 and v6)', async (t) => {
  const { guest } = await rig(t);
  for (const [type, address] of [['udp4', '127.0.0.1'], ['udp6', '::1']] as const) {
    const a = await udpSocket(t, type, address);
    const b = await udpSocket(t, type, address);
    // Server a answers from server b's socket: a different source than the destination.
    a.socket.on('message', (msg, rinfo) => { b.socket.send(Buffer.from(`re:${msg}`), rinfo.port, rinfo.address); });
    const u = await guest.udp({ family: type === 'udp4' ? 'ipv4' : 'ipv6', address: type === 'udp4' ? '0.0.0.0' : '::', port: 0 });
    t.equal(u.exposed, false);
    // b must be a known peer for its reply to pass: the guest sends to both.
    const family = type === 'udp4' ? 'ipv4' : 'ipv6';
    await u.send({ family, address, port: b.port }, Buffer.from('prime'));
    const got = new Promise<[Buffer, unknown]>((res) => u.once('message', (m, src) => res([m, src])));
    await u.send({ family, address, port: a.port }, Buffer.from('q'));
    const [msg, src] = await got;
    t.equal(msg.toString(), 're:q');
    t.same(src, { family, address: family === 'ipv4' ? address : '0:0:0:0:0:0:0:1', port: b.port }, `${type}: source is the replying socket, not the last destination`);
    u.close();
  }
});

t.test('UDP from an unknown peer to an unexposed socket is dropped; denied destinations get EACCES', async (t) => {
  const { guest } = await rig(t);
  const stranger = await udpSocket(t, 'udp4', '127.0.0.1');
  const u = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 0 });
  let got = 0;
  u.on('message', () => { got++; });
  const port = u.local.family === 'ipv4' ? u.local.port : 0;
  t.ok(port > 0);
  stranger.socket.send('hi', port, '127.0.0.1');
  const err = new Promise<number>((res) => u.once('dgram-error', (e) => res(e)));
  await u.send({ family: 'ipv4', address: '10.1.2.3', port: 53 }, Buffer.from('x'));
  t.equal(await err, Errno.EACCES, 'policy denial reported as DGRAM_ERROR -EACCES (nothing sent)');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(got, 0, 'stranger datagram dropped');
});

t.test('a guest UDP server reached through a UDP port map', async (t) => {
  const probe = await udpSocket(t, 'udp4', '127.0.0.1');
  const hostPort = probe.port;
  probe.socket.close();
  const portMap = new PortMap([`${hostPort}:5353/udp`]);
  const { guest } = await rig(t, { portMap });
  const u = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 5353 });
  t.equal(u.exposed, true);
  t.same(u.local, { family: 'ipv4', address: '127.0.0.1', port: hostPort });
  u.on('message', (m, src) => { void u.send(src, Buffer.from(`dns:${m}`)); });
  const client = await udpSocket(t, 'udp4', '127.0.0.1');
  const reply = new Promise<[string, number]>((res) => client.socket.once('message', (m, r) => res([m.toString(), r.port])));
  client.socket.send('query', hostPort, '127.0.0.1');
  const [text, from] = await reply;
  t.equal(text, 'dns:query');
  t.equal(from, hostPort, 'the reply comes from the mapped port');
});

t.test('mirror mode (an OCI container\'s namespace): a guest listener or UDP port is published on the same host port', async (t) => {
  const port = await freePort(t);
  const udpProbe = await udpSocket(t, 'udp4', '127.0.0.1');
  const udpPort = udpProbe.port;
  udpProbe.socket.close();
  const held = await freePort(t);
  // An explicit entry holds host port `held`: a guest listener on `held` is not mirrored over it.
  const portMap = new PortMap([{ protocol: 'tcp', hostPort: held, guestPort: 7, hostAddress: '127.0.0.1' }], { mirrorAddress: '127.0.0.1' });
  t.equal(portMap.mirrorAddress, '127.0.0.1');
  const added: number[] = [];
  portMap.on('add', (m) => { added.push(m.guestPort); });
  const { guest } = await rig(t, { portMap });
  const r = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port }, serveUpper);
  t.equal(r.result, 0, 'exposed without an entry of its own');
  t.same(r.host, { family: 'ipv4', address: '127.0.0.1', port }, 'on the same port');
  t.same(added, [port], "the mirrored entry is an ordinary one ('add')");
  t.equal(portMap.lookupGuest('tcp', port)!.boundPort, port);
  const c = await hostConnect(t, port);
  c.write('mirror');
  t.equal(await new Promise<string>((res) => c.once('data', (d) => res(d.toString()))), 'MIRROR');
  const blocked = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: held }, serveUpper);
  t.equal(blocked.result, -Errno.EADDRNOTAVAIL, "a host port another entry holds is not taken");
  const u = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: udpPort });
  t.equal(u.exposed, true, 'a bound UDP port is mirrored too');
  t.same(u.local, { family: 'ipv4', address: '127.0.0.1', port: udpPort });
  t.throws(() => new PortMap([], { mirrorAddress: 'any' }), { code: 'INVALID_ARGUMENT' });
  t.equal(new PortMap().mirror('tcp', 80), null, 'no mirror mode: nothing added');
});
