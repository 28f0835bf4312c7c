// Host-loopback aliases (docs/tsi-protocol.md §4.1): applied before the policy, the
// guest's getpeername() keeps the alias.
import t from 'tap';
import { Errno } from '../../proxies/protocol.js';
import { HostAliases } from '../../src/policy/host-aliases.js';
import { TsiCallError } from '../support/tsi/tsi-guest.js';
import { echo, rig, tcpServer } from './helpers.js';

const ALIASES = { '10.0.2.2': '127.0.0.1', 'fd00::2': '::1' };

for (const [family, alias, real] of [['ipv4', '10.0.2.2', '127.0.0.1'], ['ipv6', 'fd00::2', '::1']] as const) {
  t.test(`a connection to the ${family} alias reaches host ${real}; the peer stays the alias`, async (t) => {
    const srv = await tcpServer(t, echo, real);
    const { guest, host } = await rig(t, { hostAliases: ALIASES });
    const s = await guest.connect({ family, address: alias, port: srv.port });
    t.same(s.peer, { family, address: family === 'ipv6' ? 'fd00:0:0:0:0:0:0:2' : alias, port: srv.port }, 'getpeername() is the alias');
    const got = s.readAll();
    await s.write(Buffer.from('via alias'));
    s.end();
    t.equal((await got).toString(), 'via alias');
    t.equal(srv.connections(), 1);
    await new Promise((r) => setTimeout(r, 50));
    const rec = host.connections.recent.find((r) => r.kind === 'stream' && r.decision === 'allow');
    t.equal(rec?.dst, family === 'ipv6' ? `[0:0:0:0:0:0:0:1]:${srv.port}` : `127.0.0.1:${srv.port}`, 'the log names the real destination');
  });
}

t.test('the policy judges the real (aliased) destination', async (t) => {
  const srv = await tcpServer(t, echo, '127.0.0.1');
  // Allows only 10.0.2.0/24: an alias to 127.0.0.1 must NOT pass because of its guest address.
  const { guest } = await rig(t, { hostAliases: ALIASES, policy: { default: 'deny', rules: [{ action: 'allow', cidr: '10.0.2.0/24' }] } });
  const err = await guest.connect({ family: 'ipv4', address: '10.0.2.2', port: srv.port }).then(() => null, (e: unknown) => e);
  t.ok(err instanceof TsiCallError && err.errno === Errno.EACCES, 'EACCES', { err });
  t.equal(srv.connections(), 0, 'nothing reached the server');
});

t.test('without aliases 10.0.2.2 is an ordinary address (denied by the loopback-only policy)', async (t) => {
  const { guest } = await rig(t);
  const err = await guest.connect({ family: 'ipv4', address: '10.0.2.2', port: 80 }).then(() => null, (e: unknown) => e);
  t.ok(err instanceof TsiCallError && err.errno === Errno.EACCES, 'EACCES', { err });
});

t.test('HostAliases rejects non-addresses and mixed families', async (t) => {
  t.throws(() => new HostAliases([['10.0.2.2', '::1']]), { code: 'INVALID_ARGUMENT' });
  t.throws(() => new HostAliases([['host', '127.0.0.1']]), { code: 'INVALID_ARGUMENT' });
  const a = new HostAliases([['::ffff:10.0.2.2', '127.0.0.1'], ['FD00:0::2', '::1']]);
  t.equal(a.resolve('10.0.2.2'), '127.0.0.1', 'mapped IPv4 spelling is canonical');
  t.equal(a.resolve('fd00::2'), '0:0:0:0:0:0:0:1');
  t.equal(a.resolve('10.0.2.3'), undefined);
});

t.test('UDP to an alias reaches host loopback; the reply source is the alias', async (t) => {
  const { createSocket } = await import('node:dgram');
  const server = createSocket('udp4');
  let n = 0;
  server.on('message', (m, r) => { n++; server.send(Buffer.concat([Buffer.from('re:'), m]), r.port, r.address); });
  await new Promise<void>((r) => server.bind(0, '127.0.0.1', () => { r(); }));
  t.teardown(() => { server.close(); });
  const port = server.address().port;
  const { guest } = await rig(t, { hostAliases: ALIASES });
  const u = await guest.udp({ family: 'ipv4', address: '0.0.0.0', port: 0 });
  t.teardown(() => { u.close(); });
  const got = new Promise<[Buffer, unknown]>((res) => u.once('message', (m, src) => { res([m, src]); }));
  await u.send({ family: 'ipv4', address: '10.0.2.2', port }, Buffer.from('q'));
  const [msg, src] = await got;
  t.equal(msg.toString(), 're:q');
  t.same(src, { family: 'ipv4', address: '10.0.2.2', port }, 'source reported as the alias');
  t.equal(n, 1);
});
