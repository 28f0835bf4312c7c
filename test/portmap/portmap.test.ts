import t from 'tap';
import { PortMap } from '../../src/portmap/index.js';

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
