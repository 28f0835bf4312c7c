import t from 'tap';
import { createServer, type AddressInfo } from 'node:net';
import { createSocket } from 'node:dgram';
import { PortMap, bindFailure, type PortMapping } from '../../src/portmap/index.js';
import { checkHostPorts } from '../../src/portmap/preflight.js';
import { TsiboxError } from '../../src/errors.js';

t.test('parse and add', (t) => {
  const m = new PortMap(['8080:80', '5353:53/udp', '0.0.0.0:9000:90', '[::1]:9001:91/tcp']);
  t.equal(m.entries.length, 4);
  t.same(m.lookupGuest('udp', 53), { protocol: 'udp', hostPort: 5353, guestPort: 53, hostAddress: '127.0.0.1', boundPort: null });
  t.equal(m.lookupGuest('tcp', 91)!.hostAddress, '::1');
  t.equal(m.lookupGuest('tcp', 53), undefined, 'per protocol');
  t.throws(() => PortMap.parse('80'), { code: 'INVALID_ARGUMENT' });
  t.throws(() => m.add({ protocol: 'tcp', hostPort: 1, guestPort: 0 }), { code: 'INVALID_ARGUMENT' });
  t.end();
});

t.test('conflicts are rejected with a clear error', (t) => {
  const m = new PortMap(['8080:80']);
  t.throws(() => m.add('8080:81'), { code: 'PORT_MAP_CONFLICT', message: /host port 127.0.0.1:8080 conflicts with 127.0.0.1:8080 → guest 80\/tcp/ });
  t.throws(() => m.add('8081:80'), { code: 'PORT_MAP_CONFLICT', message: /guest port 80 is already mapped/ });
  t.throws(() => m.add('0.0.0.0:8080:82'), { code: 'PORT_MAP_CONFLICT' }, 'a wildcard overlaps a specific address');
  m.add('8080:80/udp');
  t.pass('same ports on another protocol are fine');
  t.end();
});

t.test('add/remove at run time emit events', (t) => {
  const m = new PortMap();
  const seen: string[] = [];
  m.on('add', (e) => seen.push(`+${e.hostPort}`));
  m.on('remove', (e) => seen.push(`-${e.hostPort}`));
  m.add('1000:10');
  t.ok(m.remove('tcp', 10));
  t.notOk(m.remove('tcp', 10));
  m.add('1000:10');
  t.same(seen, ['+1000', '-1000', '+1000']);
  t.end();
});

t.test("fail(): the entry leaves the map, then 'failed'", (t) => {
  const m = new PortMap(['8080:80']);
  const events: string[] = [];
  m.on('remove', (e) => { events.push(`remove ${e.guestPort}`); });
  m.on('failed', (e, err) => { events.push(`failed ${e.guestPort} ${err.code} in-map=${m.entries.includes(e)}`); });
  const e = m.entries[0]!;
  t.equal(m.fail(e, new TsiboxError('PORT_MAP_BIND_FAILED', 'x')), true);
  t.same(events, ['remove 80', 'failed 80 PORT_MAP_BIND_FAILED in-map=false']);
  t.equal(m.fail(e, new TsiboxError('PORT_MAP_BIND_FAILED', 'x')), false, 'once out of the map, nothing more');
  t.equal(events.length, 2);
  m.add('8080:80');
  t.pass('the host port and guest port are free in the map again');
  t.end();
});

t.test('bindFailure names the mapping, the reason and the errno', (t) => {
  const spec = { protocol: 'tcp', hostAddress: '::1', hostPort: 80, guestPort: 8080 } as PortMapping;
  const e = bindFailure(spec, Object.assign(new Error('listen EACCES: permission denied ::1:80'), { code: 'EACCES', errno: -13 }));
  t.equal(e.code, 'PORT_MAP_BIND_FAILED');
  t.equal(e.errno, 13);
  t.equal(e.message, 'cannot publish tcp [::1]:80 → guest 8080: not permitted to listen on that host port (EACCES)');
  t.end();
});

t.test('checkHostPorts: taken TCP and UDP host ports are found before the start; port 0 is not tried', async (t) => {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => { srv.close(); });
  const tcpPort = (srv.address() as AddressInfo).port;
  const udp = createSocket('udp4');
  await new Promise<void>((r) => udp.bind(0, '127.0.0.1', r));
  t.teardown(() => { udp.close(); });
  const udpPort = udp.address().port;

  t.equal(await checkHostPorts(new PortMap(['127.0.0.1:0:80', '127.0.0.1:0:53/udp']).entries), null);
  const tcpErr = await checkHostPorts(new PortMap([`127.0.0.1:${tcpPort}:80`]).entries);
  t.match(tcpErr, { code: 'PORT_MAP_BIND_FAILED', errno: 98, message: `cannot publish tcp 127.0.0.1:${tcpPort} → guest 80: the host port is already in use (EADDRINUSE)` });
  const udpErr = await checkHostPorts(new PortMap([`127.0.0.1:${udpPort}:53/udp`]).entries);
  t.match(udpErr, { code: 'PORT_MAP_BIND_FAILED', errno: 98, message: /cannot publish udp 127\.0\.0\.1:\d+ → guest 53/ });
  // The check releases what it bound: the same ports twice in a row are still free.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const free = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => { r(); }));
  const map = new PortMap([`127.0.0.1:${free}:80`, `127.0.0.1:${free}:53/udp`]);
  t.equal(await checkHostPorts(map.entries), null);
  t.equal(await checkHostPorts(map.entries), null, 'nothing held after the check');
});
