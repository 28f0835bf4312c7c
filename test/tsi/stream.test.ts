import t from 'tap';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createUnixServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { Errno } from '../../proxies/protocol.js';
import { TsiCallError } from '../support/tsi/tsi-guest.js';
import { echo, rig, tcpServer, tempDir } from './helpers.js';

t.test('HTTP GET against a local HTTP server', async (t) => {
  const http = createHttpServer((req, res) => { res.end(`hello ${req.url}`); });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  t.teardown(() => { http.closeAllConnections(); http.close(); });
  const port = (http.address() as { port: number }).port;
  const { guest, host } = await rig(t);
  const s = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port });
  t.same(s.peer, { family: 'ipv4', address: '127.0.0.1', port }, 'getpeername is the real peer');
  t.equal(s.local.family, 'ipv4');
  t.ok(s.local.family === 'ipv4' && s.local.port > 0, 'getsockname is the host socket');
  const body = s.readAll();
  await s.write(Buffer.from(`GET /tsi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
  const text = (await body).toString();
  t.match(text, /^HTTP\/1.1 200 OK/);
  t.match(text, /hello \/tsi$/);
  s.close();
  await new Promise((r) => setTimeout(r, 50));
  const rec = host.connections.recent.find((r) => r.kind === 'stream' && r.decision === 'allow');
  t.ok(rec, 'one connection event');
  t.equal(rec!.dst, `127.0.0.1:${port}`);
  t.ok(rec!.bytesFromGuest > 30 && rec!.bytesToGuest > 30, 'bytes counted both ways');
});

for (const [family, address] of [['ipv4', '127.0.0.1'], ['ipv6', '::1']] as const) {
  t.test(`TCP echo over ${family}`, async (t) => {
    const srv = await tcpServer(t, echo, address);
    const { guest } = await rig(t);
    const s = await guest.connect({ family, address, port: srv.port });
    t.equal(s.peer.family, family);
    const data = Buffer.alloc(300_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    const got = s.readAll();
    await s.write(data);
    s.end();
    t.ok((await got).equals(data), '300 KB echoed intact (more than one credit window)');
  });
}

t.test('unix stream echo', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'echo.sock');
  const sockets = new Set<Socket>();
  const server = createUnixServer({ allowHalfOpen: true }, (s) => { sockets.add(s); s.pipe(s); });
  await new Promise<void>((r) => server.listen(path, r));
  t.teardown(() => { for (const s of sockets) s.destroy(); server.close(); });
  const { guest } = await rig(t, { unixSockets: true });
  const s = await guest.connect({ family: 'unix', path });
  t.same(s.peer, { family: 'unix', path: '' }, 'peer reported as AF_UNIX');
  const got = s.readAll();
  await s.write(Buffer.from('over unix'));
  s.end();
  t.equal((await got).toString(), 'over unix');
});

t.test('connection refused and unreachable destinations surface the right errno', async (t) => {
  // A loopback port with nothing listening: bind, read the port, close.
  const srv = await tcpServer(t, () => {});
  const port = srv.port;
  await new Promise<void>((r) => srv.server.close(() => r()));
  const dir = tempDir(t);
  const { guest } = await rig(t, { unixSockets: true });
  const refused = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port }).catch((e: unknown) => e);
  t.type(refused, TsiCallError);
  t.equal((refused as TsiCallError).errno, Errno.ECONNREFUSED);
  // Multicast and broadcast are unreachable for TCP: the proxy answers ENETUNREACH
  // without any host syscall, so nothing leaves the machine.
  for (const address of ['224.0.0.1', '255.255.255.255']) {
    const e = await guest.connect({ family: 'ipv4', address, port: 80 }).catch((x: unknown) => x);
    t.equal((e as TsiCallError).errno, Errno.ENETUNREACH, `${address} → ENETUNREACH`);
  }
  const e6 = await guest.connect({ family: 'ipv6', address: 'ff02::1', port: 80 }).catch((x: unknown) => x);
  t.equal((e6 as TsiCallError).errno, Errno.ENETUNREACH, 'ff02::1 → ENETUNREACH');
  const noent = await guest.connect({ family: 'unix', path: join(dir, 'missing.sock') }).catch((x: unknown) => x);
  t.equal((noent as TsiCallError).errno, Errno.ENOENT, 'missing unix socket → ENOENT');
});

t.test('a denied destination never reaches the host', async (t) => {
  const srv = await tcpServer(t, echo);
  const { guest, host } = await rig(t, {
    policy: { default: 'allow', rules: [{ action: 'deny', protocol: 'tcp', cidr: '127.0.0.0/8', ports: srv.port, name: 'no-echo' }] },
  });
  for (let i = 0; i < 5; i++) {
    const e = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port }).catch((x: unknown) => x);
    t.equal((e as TsiCallError).errno, Errno.EACCES);
  }
  // IPv4-mapped IPv6 is the same destination.
  const e = await guest.connect({ family: 'ipv6', address: '::ffff:127.0.0.1', port: srv.port }).catch((x: unknown) => x);
  t.equal((e as TsiCallError).errno, Errno.EACCES, 'IPv4-mapped address is denied too');
  await new Promise((r) => setTimeout(r, 50));
  t.equal(srv.connections(), 0, 'the target server counted zero connections');
  const denied = host.connections.recent.filter((r) => r.decision === 'deny');
  t.equal(denied.length, 6);
  t.equal(denied[0]!.rule, 'no-echo');
});

t.test('half-close in both directions', async (t) => {
  // Server: reads until EOF, then answers with the byte count and closes its side.
  const srv = await tcpServer(t, (s) => {
    let n = 0;
    s.on('data', (d: Buffer) => { n += d.length; });
    s.on('end', () => { s.end(`got ${n}`); });
  });
  const { guest } = await rig(t);
  const s = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port });
  const got = s.readAll();
  await s.write(Buffer.alloc(100_000, 1));
  s.end(); // guest → host half-close: server sees EOF but can still write
  t.equal((await got).toString(), 'got 100000', 'host → guest data after the guest half-closed, then EOF');

  // The other way: the server half-closes first and keeps reading.
  const srv2 = await tcpServer(t, (s) => {
    s.end('early bye');
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.on('end', () => { received = Buffer.concat(parts).toString(); });
  });
  let received: string | null = null;
  const s2 = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv2.port });
  const early = s2.readAll();
  t.equal((await early).toString(), 'early bye', 'guest saw EOF');
  await s2.write(Buffer.from('still talking'));
  s2.end();
  const end = Date.now() + 3000;
  while (received === null && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  t.equal(received, 'still talking', 'guest → host data after the host half-closed');
});
