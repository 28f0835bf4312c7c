// A port mapping the host cannot listen for is never silent (issue 14 item 4): the
// entry leaves the map, the map emits 'failed' (PORT_MAP_BIND_FAILED with the errno),
// a rate-limited `tsi.publish.failed` line is logged, and the guest listener stays
// registered but unexposed, so a corrected entry exposes it. Real loopback sockets.
import t, { type Test } from 'tap';
import { connect, type Socket } from 'node:net';
import { Errno, encodeDgramOpen, TsiPort } from '../../proxies/protocol.js';
import { PortMap, type PortMapping } from '../../src/portmap/index.js';
import { TsiboxError } from '../../src/errors.js';
import { VsockDevice } from '../../src/virtio/vsock/device.js';
import { startTsiNetwork } from '../../src/engine/network-tsi.js';
import { Policy } from '../../src/policy/index.js';
import { RateLimitedLog } from '../../src/log-rate.js';
import { silentLogger } from '../../src/log.js';
import { memoryLogger, type LogLine } from '../helpers/memory-logger.js';
import type { TsiStream } from '../support/tsi/tsi-guest.js';
import { rig, tcpServer, until, udpSocket } from './helpers.js';

function serveUpper(s: TsiStream): void {
  s.on('data', (d) => { void s.write(Buffer.from(d.toString().toUpperCase())); });
  s.on('end', () => { s.end(); });
}

function failures(map: PortMap): Array<{ mapping: PortMapping; err: TsiboxError }> {
  const out: Array<{ mapping: PortMapping; err: TsiboxError }> = [];
  map.on('failed', (mapping, err) => { out.push({ mapping, err }); });
  return out;
}

async function roundTrip(t: Tap, port: number, text: string): Promise<string> {
  const c: Socket = connect({ port, host: '127.0.0.1' });
  t.teardown(() => { c.destroy(); });
  await new Promise<void>((resolve, reject) => { c.once('connect', resolve); c.once('error', reject); });
  const reply = new Promise<string>((resolve) => c.once('data', (d) => resolve(d.toString())));
  c.write(text);
  return reply;
}
type Tap = Test;

t.test('a LISTEN whose host port is taken: reported, entry out of the map, listener registered unexposed', async (t) => {
  const taken = await tcpServer(t, () => {});
  const portMap = new PortMap([`127.0.0.1:${taken.port}:8080`]);
  const failed = failures(portMap);
  const removed: PortMapping[] = [];
  portMap.on('remove', (m) => { removed.push(m); });
  const lines: LogLine[] = [];
  const { guest, host } = await rig(t, { portMap, logger: memoryLogger(lines, (l) => l['event'] === 'tsi.publish.failed'), limits: { maxListeners: 1 } });
  const r = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 8080 }, serveUpper);
  t.equal(r.result, -Errno.EADDRNOTAVAIL, 'registered, not exposed (the guest keeps its listener, as for an unmapped port)');
  t.not(r.listenerId, 0, 'the guest got an id: it will UNLISTEN, nothing leaks');
  t.equal(host.listener.listeners, 1);

  t.equal(failed.length, 1, "one 'failed' event");
  const f = failed[0]!;
  t.equal(f.mapping.guestPort, 8080);
  t.ok(f.err instanceof TsiboxError);
  t.equal(f.err.code, 'PORT_MAP_BIND_FAILED');
  t.equal(f.err.errno, Errno.EADDRINUSE);
  t.match(f.err.message, new RegExp(`cannot publish tcp 127\\.0\\.0\\.1:${taken.port} → guest 8080: the host port is already in use \\(EADDRINUSE\\)`));
  t.same(removed, [f.mapping], "a 'remove' came first");
  t.equal(portMap.lookupGuest('tcp', 8080), undefined, 'the entry left the map');
  t.equal(f.mapping.boundPort, null, 'boundPort stays null');

  await until(() => lines.length > 0, 2000, 'the log line');
  t.match(lines[0], {
    event: 'tsi.publish.failed', level: 40, code: 'PORT_MAP_BIND_FAILED', errno: 'EADDRINUSE', protocol: 'tcp',
    hostAddress: '127.0.0.1', hostPort: taken.port, guestPort: 8080,
  });
  t.equal(taken.connections(), 0, 'nothing reached the other server from the sandbox');

  // The user fixes it: a new entry for the same guest port exposes the listener.
  const fixed = portMap.add('127.0.0.1:0:8080');
  await until(() => fixed.boundPort !== null, 3000, 'exposed on the corrected entry');
  t.equal(await roundTrip(t, fixed.boundPort!, 'hi'), 'HI', 'a host client reaches the guest listener');
  t.equal(await guest.unlisten(r.listenerId), 0);
  t.equal(host.limits.listeners, 0, 'its slot is given back');
});

t.test('a run-time add() on a taken port for a registered listener is reported the same way', async (t) => {
  const taken = await tcpServer(t, () => {});
  const portMap = new PortMap();
  const failed = failures(portMap);
  const { guest } = await rig(t, { portMap });
  const r = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 9090 }, serveUpper);
  t.equal(r.result, -Errno.EADDRNOTAVAIL, 'unmapped');
  const m = portMap.add({ protocol: 'tcp', hostPort: taken.port, guestPort: 9090 });
  await until(() => failed.length > 0, 3000, "'failed'");
  t.equal(failed[0]!.mapping, m);
  t.equal(failed[0]!.err.code, 'PORT_MAP_BIND_FAILED');
  t.equal(portMap.entries.length, 0, 'out of the map');
  t.equal(m.boundPort, null);
});

t.test('an address the host does not have: EADDRNOTAVAIL, named', async (t) => {
  const portMap = new PortMap(['192.0.2.1:0:7070']);
  const failed = failures(portMap);
  const { guest } = await rig(t, { portMap });
  const r = await guest.listen({ family: 'ipv4', address: '0.0.0.0', port: 7070 }, serveUpper);
  t.equal(r.result, -Errno.EADDRNOTAVAIL);
  t.equal(failed.length, 1);
  t.equal(failed[0]!.err.errno, Errno.EADDRNOTAVAIL);
  t.match(failed[0]!.err.message, /cannot publish tcp 192\.0\.2\.1:0 → guest 7070: the host has no such address \(EADDRNOTAVAIL\)/);
});

t.test('a published UDP port that is taken: the guest gets EADDRINUSE, the map reports it', async (t) => {
  const taken = await udpSocket(t, 'udp4', '127.0.0.1');
  const portMap = new PortMap([`127.0.0.1:${taken.port}:5353/udp`]);
  const failed = failures(portMap);
  const { vsock } = await rig(t, { portMap });
  const sock = await vsock.connect(TsiPort.DGRAM, 'seqpacket', { localPort: 1021 });
  const reply = new Promise<Buffer>((r) => { sock.once('data', (d) => { r(d); }); });
  await sock.write(encodeDgramOpen({ family: 'ipv4', address: '0.0.0.0', port: 5353 }));
  t.equal((await reply).readInt32LE(8), -Errno.EADDRINUSE, 'EADDRINUSE reached the guest');
  await until(() => failed.length > 0, 3000, "'failed'");
  t.equal(failed[0]!.err.code, 'PORT_MAP_BIND_FAILED');
  t.match(failed[0]!.err.message, /cannot publish udp 127\.0\.0\.1:\d+ → guest 5353: the host port is already in use/);
  t.equal(portMap.lookupGuest('udp', 5353), undefined, 'out of the map');
});

t.test('the sandbox start: a taken numbered host port fails before the guest boots; later failures reach onPortMapError', async (t) => {
  const taken = await tcpServer(t, () => {});
  const policy = Policy.allowAll();
  const guestLog = new RateLimitedLog(silentLogger);
  const device = new VsockDevice({ guestCid: 3 });
  const err = await startTsiNetwork({ mode: 'tsi', policy, portMap: new PortMap([`127.0.0.1:0:80`, `127.0.0.1:${taken.port}:8080`]) }, device, silentLogger, guestLog)
    .catch((e: unknown) => e);
  t.ok(err instanceof TsiboxError && err.code === 'PORT_MAP_BIND_FAILED' && err.errno === Errno.EADDRINUSE, `rejected: ${String(err)}`);
  t.match((err as Error).message, new RegExp(`tcp 127\\.0\\.0\\.1:${taken.port} → guest 8080`));

  const map = new PortMap(['127.0.0.1:0:80']);
  const seen: Array<[string, number]> = [];
  const net = await startTsiNetwork({ mode: 'tsi', policy, portMap: map, onPortMapError: (e, m) => { seen.push([e.code, m.guestPort]); } }, device, silentLogger, guestLog);
  const m = map.add('127.0.0.1:1:81');
  map.fail(m, new TsiboxError('PORT_MAP_BIND_FAILED', 'test'));
  t.same(seen, [['PORT_MAP_BIND_FAILED', 81]], 'onPortMapError heard it');
  await net.close();
  const m2 = map.add('127.0.0.1:1:82');
  map.fail(m2, new TsiboxError('PORT_MAP_BIND_FAILED', 'test'));
  t.equal(seen.length, 1, 'not after close()');
});
