// The named states of TSI flows (proxies/stream.ts OutboundStream, proxies/datagram.ts
// UdpFlow), watched on their diagnostics channel while a simulated guest drives them.
import t, { type Test } from 'tap';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { FLOW_STATE_CHANNEL, type FlowTransition } from '../../proxies/flow-state.js';
import { Errno, TsiPort, encodeConnect, encodeDgramOpen, SOCK_STREAM } from '../../proxies/protocol.js';
import { PortMap } from '../../src/portmap/index.js';
import { TsiCallError } from '../support/tsi/tsi-guest.js';
import { echo, rig, tcpServer, udpSocket, until } from './helpers.js';

/** Records the transitions of one kind of flow for the rest of the test. */
function watch(t: Test, kind: FlowTransition['kind']): FlowTransition[] {
  const seen: FlowTransition[] = [];
  const onMessage = (m: unknown): void => {
    const tr = m as FlowTransition;
    if (tr.kind === kind) seen.push(tr);
  };
  subscribe(FLOW_STATE_CHANNEL, onMessage);
  t.teardown(() => { unsubscribe(FLOW_STATE_CHANNEL, onMessage); });
  return seen;
}

/** The states visited, first one included. */
function path(seen: FlowTransition[]): string[] {
  return seen.length === 0 ? [] : [seen[0]!.from, ...seen.map((s) => s.to)];
}

t.test('UDP: open, then the guest closes with a datagram in flight: draining, then closed', async (t) => {
  const seen = watch(t, 'udp');
  const server = await udpSocket(t, 'udp4', '127.0.0.1');
  const got = new Promise<Buffer>((r) => { server.socket.once('message', (m) => { r(m); }); });
  const { guest, host } = await rig(t);
  const u = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 0 });
  t.same(path(seen), ['binding', 'open'], 'bound: open');
  // Send and close in one go (a reply, then exit): the host sees both in one pass.
  void u.send({ family: 'ipv4', address: '127.0.0.1', port: server.port }, Buffer.from('last words'));
  u.close();
  t.equal((await got).toString(), 'last words', 'the datagram in flight still went out');
  await until(() => seen.length === 3, 3000, 'closed');
  t.same(path(seen), ['binding', 'open', 'draining', 'closed']);
  t.equal(new Set(seen.map((s) => s.guestPort)).size, 1, 'one flow');
  t.equal(host.datagram.openSockets, 0, 'the host socket is gone');
  const rec = host.connections.recent.find((r) => r.kind === 'datagram');
  t.match(rec?.closeReason, /\(datagrams out 1, in 0, dropped 0, denied 0\)$/, 'the record counts the drained datagram');
});

t.test('UDP: closed while open with nothing in flight goes straight to closed', async (t) => {
  const seen = watch(t, 'udp');
  const { guest, host } = await rig(t);
  const u = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 0 });
  u.close();
  await until(() => seen.length === 2, 3000, 'closed');
  t.same(path(seen), ['binding', 'open', 'closed']);
  t.equal(host.datagram.openSockets, 0);
});

t.test('UDP: a bind that fails goes from binding to closed, and the guest gets the errno', async (t) => {
  const seen = watch(t, 'udp');
  const taken = await udpSocket(t, 'udp4', '127.0.0.1');
  const portMap = new PortMap([`127.0.0.1:${taken.port}:5353/udp`]);
  const { vsock, host } = await rig(t, { portMap });
  const sock = await vsock.connect(TsiPort.DGRAM, 'seqpacket', { localPort: 1021 });
  const reply = new Promise<Buffer>((r) => { sock.once('data', (d) => { r(d); }); });
  await sock.write(encodeDgramOpen({ family: 'ipv4', address: '0.0.0.0', port: 5353 }));
  t.equal((await reply).readInt32LE(8), -Errno.EADDRINUSE, 'EADDRINUSE reached the guest');
  t.same(path(seen), ['binding', 'closed']);
  const rec = host.connections.recent.find((r) => r.kind === 'datagram');
  t.match(rec?.closeReason, /^bind failed: EADDRINUSE/);
});

t.test('stream: refused by the policy', async (t) => {
  const seen = watch(t, 'stream');
  const srv = await tcpServer(t, echo);
  const { guest, host } = await rig(t, { policy: { default: 'deny', rules: [] } });
  const e = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port }).catch((x: unknown) => x);
  t.equal((e as TsiCallError).errno, Errno.EACCES);
  t.same(path(seen), ['awaiting-request', 'judging', 'refused']);
  t.equal(srv.connections(), 0, 'nothing reached the host');
  t.match(host.connections.recent[0], { decision: 'deny', closeReason: /^denied: policy / });
});

t.test('stream: a malformed CONNECT is refused before judging', async (t) => {
  const seen = watch(t, 'stream');
  const { vsock } = await rig(t);
  const s = await vsock.connect(TsiPort.STREAM, 'stream');
  const reply = new Promise<Buffer>((r) => { s.once('data', (d) => { r(d); }); });
  const bad = encodeConnect({ family: 'ipv4', address: '127.0.0.1', port: 80 }, SOCK_STREAM);
  bad[3] = 0xee; // not CONNECT
  await s.write(bad);
  t.ok((await reply).length > 0, 'an answer came back');
  t.same(path(seen), ['awaiting-request', 'refused']);
});

t.test('stream: the host refuses the connect', async (t) => {
  const seen = watch(t, 'stream');
  const srv = await tcpServer(t, () => {});
  await new Promise<void>((r) => srv.server.close(() => r()));
  const { guest, host } = await rig(t);
  const e = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port }).catch((x: unknown) => x);
  t.equal((e as TsiCallError).errno, Errno.ECONNREFUSED);
  t.same(path(seen), ['awaiting-request', 'judging', 'connecting', 'failed']);
  t.match(host.connections.recent[0], { decision: 'allow', errno: -Errno.ECONNREFUSED, closeReason: 'connect failed: ECONNREFUSED' });
  t.equal(host.stream.openSockets, 0);
});

t.test('stream: connected, piped, then closed', async (t) => {
  const seen = watch(t, 'stream');
  const srv = await tcpServer(t, echo);
  const { guest, host } = await rig(t);
  const s = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port });
  t.same(path(seen), ['awaiting-request', 'judging', 'connecting', 'piping']);
  const got = s.readAll();
  await s.write(Buffer.from('ping'));
  s.end();
  t.equal((await got).toString(), 'ping');
  s.close();
  await until(() => seen.length === 4, 3000, 'closed');
  t.same(path(seen), ['awaiting-request', 'judging', 'connecting', 'piping', 'closed']);
  t.match(host.connections.recent[0], { decision: 'allow', bytesFromGuest: 4, bytesToGuest: 4 });
  t.equal(host.stream.openSockets, 0);
});

t.test('stream: no CONNECT in time', async (t) => {
  const seen = watch(t, 'stream');
  const { vsock } = await rig(t, { timeoutMs: 50 });
  const s = await vsock.connect(TsiPort.STREAM, 'stream');
  await new Promise<void>((r) => { s.once('close', () => { r(); }); });
  t.same(path(seen), ['awaiting-request', 'closed']);
});

t.test('stream: the guest goes away while the host connect is in progress: the attempt keeps its record', async (t) => {
  const seen = watch(t, 'stream');
  const srv = await tcpServer(t, () => {});
  const { vsock, host } = await rig(t);
  const s = await vsock.connect(TsiPort.STREAM, 'stream');
  // CONNECT and the RST go out in one kick: the host judges, starts connecting, and
  // sees the guest gone before its connect() can complete.
  void s.write(encodeConnect({ family: 'ipv4', address: '127.0.0.1', port: srv.port })).catch(() => {});
  s.reset();
  await until(() => host.connections.recent.length === 1, 3000, 'a record');
  t.same(path(seen), ['awaiting-request', 'judging', 'connecting', 'closed']);
  t.match(host.connections.recent[0], { kind: 'stream', decision: 'allow', closeReason: 'guest closed before connected' });
  await until(() => host.stream.openSockets === 0, 3000, 'the host socket is gone');
});
