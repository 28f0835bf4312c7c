/**
 * End to end: TSI under QEMU (TCG here) with our patched guest kernel
 * (native/kernel/patches/0001-tsi.patch). A guest program's ordinary TCP connect()
 * to a non-local address goes over vsock to the host's TsiHost, which makes the host
 * connection. Host servers listen ONLY on 127.0.0.1 / ::1; the guest names them
 * through the host-loopback aliases 10.0.2.2 and fd00::2, and the policy allows only
 * 127.0.0.0/8 and ::1, so nothing can leave this machine even if the alias logic
 * were wrong.
 */
import t from 'tap';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { memoryLogger } from '../helpers/memory-logger.js';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer as createHttpServer, get as httpGet, type Server as HttpServer } from 'node:http';
import { createServer, connect as netConnect, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Sandbox } from '../../src/index.js';
import { Policy } from '../../src/policy/index.js';
import { PortMap } from '../../src/portmap/index.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

const { skip, tools } = await e2ePrerequisites(t, { tools: true });

const BIN = join(PACKAGE_ROOT, 'bin', 'tsibox.js');
const ALIAS4 = '10.0.2.2';
const ALIAS6 = 'fd00::2';
const BODY = 'hello from a host loopback server\n';
const ECHO_BYTES = 4 * 1024 * 1024;

/** A TCP echo server on `host` that counts connections and hashes what it got. */
interface Echo { server: Server; port: number; connections: number; received: number; sha: string | undefined; ms: number | undefined }
async function echoServer(host: string, sockets: Set<Socket>): Promise<Echo> {
  const e: Echo = { server: createServer({ allowHalfOpen: true }), port: 0, connections: 0, received: 0, sha: undefined, ms: undefined };
  e.server.on('connection', (s) => {
    e.connections++;
    sockets.add(s);
    const h = createHash('sha256');
    const started = performance.now();
    s.on('error', () => { /* checked through the data */ });
    s.on('data', (d: Buffer) => { e.received += d.length; h.update(d); s.write(d); });
    s.on('end', () => { e.sha = h.digest('hex'); s.end(); });
    s.on('close', () => { e.ms = performance.now() - started; sockets.delete(s); });
  });
  await new Promise<void>((resolve, reject) => { e.server.once('error', reject); e.server.listen(0, host, resolve); });
  e.port = (e.server.address() as AddressInfo).port;
  return e;
}

t.test('TSI under QEMU', { skip }, async (t) => {
  const sockets = new Set<Socket>();
  const servers: Array<Server | HttpServer> = [];
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await Promise.all(servers.map((s) => new Promise<void>((r) => { s.close(() => { r(); }); })));
  });

  let httpRequests = 0;
  const http = createHttpServer((req, res) => { httpRequests++; res.end(req.url === '/' ? BODY : `path ${req.url}\n`); });
  servers.push(http);
  await new Promise<void>((resolve, reject) => { http.once('error', reject); http.listen(0, '127.0.0.1', resolve); });
  const httpPort = (http.address() as AddressInfo).port;
  const echo4 = await echoServer('127.0.0.1', sockets);
  const echo6 = await echoServer('::1', sockets);
  const denied = await echoServer('127.0.0.1', sockets); // allowed by CIDR, denied by the port rule below
  servers.push(echo4.server, echo6.server, denied.server);
  // UDP echo servers on host loopback (replies prefixed, counted).
  const udpEcho = async (type: 'udp4' | 'udp6', host: string): Promise<{ socket: UdpSocket; port: number; count: () => number }> => {
    let n = 0;
    const socket = createSocket({ type, ...(type === 'udp6' ? { ipv6Only: true } : {}) });
    socket.on('message', (m, rinfo) => { n++; socket.send(Buffer.concat([Buffer.from('echo:'), m]), rinfo.port, rinfo.address); });
    await new Promise<void>((resolve, reject) => { socket.once('error', reject); socket.bind(0, host, () => { resolve(); }); });
    return { socket, port: socket.address().port, count: () => n };
  };
  const udp4 = await udpEcho('udp4', '127.0.0.1');
  const udp6 = await udpEcho('udp6', '::1');
  const udpDenied = await udpEcho('udp4', '127.0.0.1');
  t.teardown(() => { udp4.socket.close(); udp6.socket.close(); udpDenied.socket.close(); });
  // A port nobody listens on: bind, note the port, close.
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const closedPort = (closed.address() as AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => { r(); }));

  const script = [
    `head -c ${ECHO_BYTES} /dev/urandom > /tmp/sent`,
    'sha256sum /tmp/sent',
    `time wget -q -O- http://${ALIAS4}:${httpPort}/ > /tmp/body; echo wget=$?`,
    'cat /tmp/body',
    `tsibox-tcp -v ${ALIAS4} ${echo4.port} < /tmp/sent > /tmp/echo4; echo echo4=$?`,
    'sha256sum /tmp/echo4',
    `echo six | tsibox-tcp -v ${ALIAS6} ${echo6.port}; echo echo6=$?`,
    `wget -q -O- "http://[${ALIAS6}]:${httpPort}/" ; echo wget6=$?`,
    `tsibox-tcp ${ALIAS4} ${closedPort} < /dev/null; echo refused=$?`,
    `tsibox-tcp ${ALIAS4} ${denied.port} < /dev/null; echo denied=$?`,
    'tsibox-tcp 192.0.2.1 80 < /dev/null; echo external=$?',
    `echo ping4 | tsibox-tcp -u -v ${ALIAS4} ${udp4.port}; echo udp4=$?`,
    `echo ping6 | tsibox-tcp -u -c -v ${ALIAS6} ${udp6.port}; echo udp6=$?`,
    `echo nope | tsibox-tcp -u ${ALIAS4} ${udpDenied.port}; echo udpdenied=$?`,
    // Guest loopback stays in the guest: nothing listens there.
    `tsibox-tcp 127.0.0.1 ${echo4.port} < /dev/null; echo guestlocal=$?`,
  ].join('\n');

  const logLines: Array<Record<string, unknown>> = [];
  const started = performance.now();
  const r = await Sandbox.run({
    engine: E2E_ENGINE,
    argv: ['sh', '-c', script],
    extraArchives: [tools!],
    network: {
      mode: 'tsi',
      policy: new Policy({
        default: 'deny',
        rules: [
          { action: 'deny', protocol: 'tcp', cidr: '127.0.0.1', ports: denied.port, name: 'the denied test port' },
          { action: 'deny', protocol: 'udp', cidr: '127.0.0.1', ports: udpDenied.port, name: 'the denied UDP port' },
          { action: 'allow', protocol: ['tcp', 'udp'], direction: 'outbound', cidr: ['127.0.0.0/8', '::1/128'], name: 'host loopback only' },
        ],
      }),
      hostLoopbackAlias: ALIAS4,
      hostLoopbackAlias6: ALIAS6,
    },
    logger: memoryLogger(logLines),
    timeoutMs: 90_000,
  });
  const ms = performance.now() - started;
  const out = r.stdout!.toString();
  const err = r.stderr?.toString() ?? '';
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: err });
  const sums = new Map<string, string>();
  for (const m of out.matchAll(/^([0-9a-f]{64})\s+(\S+)$/gm)) sums.set(m[2]!, m[1]!);

  await t.test('busybox wget reaches a host 127.0.0.1 HTTP server through the alias', async (t) => {
    t.match(out, /^wget=0$/m, 'wget exits 0');
    t.ok(out.includes(BODY), 'the body arrives');
    const wall = /real\s+(\d+)m\s*([\d.]+)s/.exec(err);
    if (wall) t.comment(`wget inside the guest (TCG): ${(Number(wall[1]) * 60 + Number(wall[2])) * 1000} ms`);
  });

  await t.test('TCP echo over IPv4: 4 MiB, same sha256 on both sides; getpeername shows the alias', async (t) => {
    t.match(out, /^echo4=0$/m);
    t.equal(echo4.connections, 1, 'one host connection');
    t.equal(echo4.received, ECHO_BYTES, 'the host got every byte');
    t.equal(echo4.sha, sums.get('/tmp/sent'), 'guest → host sha256');
    t.equal(sums.get('/tmp/echo4'), sums.get('/tmp/sent'), 'host → guest sha256 (echoed)');
    t.match(err, new RegExp(`^peer ${ALIAS4.replace(/\./g, '\\.')}:${echo4.port}$`, 'm'), 'getpeername() is the alias and port');
    // The guest-side address of a TSI connection (docs/tsi-protocol.md §11), never the
    // host socket's 127.0.0.1 beside a peer of 10.0.2.2.
    t.match(err, /^local 10\.0\.2\.15:\d+$/m, 'getsockname() is the guest\'s TSI address');
    t.notMatch(err, /^local 127\./m, 'no host loopback address as the local address');
    if (echo4.ms !== undefined) t.comment(`echo: ${(2 * ECHO_BYTES / 1048576 / (echo4.ms / 1000)).toFixed(1)} MiB/s both ways together (${ECHO_BYTES} bytes each way in ${echo4.ms.toFixed(0)} ms, TCG)`);
  });

  await t.test('IPv6: fd00::2 reaches a host ::1 server', async (t) => {
    t.match(out, /^six$/m, 'echoed over IPv6');
    t.match(out, /^echo6=0$/m);
    t.equal(echo6.connections, 1);
    t.match(err, new RegExp(`^peer \\[${ALIAS6}\\]:${echo6.port}$`, 'm'), 'getpeername() is the IPv6 alias');
    t.match(out, /^wget6=1$/m, 'the HTTP server listens on 127.0.0.1 only, so fd00::2 (→ ::1) is refused');
  });

  await t.test('connection refused on the host surfaces as ECONNREFUSED in the guest', async (t) => {
    t.match(out, /^refused=111$/m, 'tsibox-tcp exits with errno 111');
    t.match(err, /tsibox-tcp: connect: Connection refused/);
  });

  await t.test('a policy-denied destination never reaches the host server; the guest sees EACCES', async (t) => {
    t.match(out, /^denied=13$/m, 'EACCES (13) for the denied port');
    t.equal(denied.connections, 0, 'the denied server counted zero connections');
    t.match(out, /^external=13$/m, 'a non-loopback destination is denied too (default deny)');
    const events = logLines.filter((l) => l['event'] === 'tsi.connection' && l['decision'] === 'deny');
    t.ok(events.some((e) => e['dst'] === `127.0.0.1:${denied.port}` && e['rule'] === 'the denied test port'), 'the denial is logged with its rule', { events });
  });

  await t.test('UDP over IPv4 (sendto) and IPv6 (connect + send): replies carry the alias as their source', async (t) => {
    t.match(out, /^udp4=0$/m);
    t.match(out, /^echo:ping4$/m, 'IPv4 reply');
    t.match(err, new RegExp(`^from ${ALIAS4.replace(/\./g, '\\.')}:${udp4.port}$`, 'm'), 'recvfrom() reports the alias and the server port');
    t.match(out, /^udp6=0$/m);
    t.match(out, /^echo:ping6$/m, 'IPv6 reply');
    t.match(err, new RegExp(`^from \\[${ALIAS6}\\]:${udp6.port}$`, 'm'), 'recvfrom() reports the IPv6 alias');
    t.equal(udp4.count(), 1);
    t.equal(udp6.count(), 1);
  });

  await t.test('a policy-denied UDP destination gets nothing; the guest reads EACCES', async (t) => {
    t.match(out, /^udpdenied=13$/m, 'EACCES (13) from recv (DGRAM_ERROR)');
    t.equal(udpDenied.count(), 0, 'the denied UDP server got no datagram');
  });

  await t.test('guest loopback stays in the guest', async (t) => {
    t.match(out, /^guestlocal=111$/m, '127.0.0.1 in the guest is the guest itself (refused there)');
  });

  t.equal(httpRequests, 1, 'exactly one HTTP request reached the host (IPv4 wget)');
  t.comment(`one sandbox run: ${ms.toFixed(0)} ms`);
});

/** Resolves with `f()` once it returns non-undefined; polls every 50 ms, at most `ms`. */
async function until<T>(f: () => T | undefined, ms: number): Promise<T | undefined> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) {
    const v = f();
    if (v !== undefined) return v;
  }
  return undefined;
}

/** One TCP exchange: send `data`, half-close, collect the reply until the peer closes. */
function exchange(port: number, data: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const c = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true });
    const chunks: Buffer[] = [];
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('error', reject);
    c.on('close', () => { resolve(Buffer.concat(chunks)); });
    c.end(data);
  });
}

t.test('guest listeners through the port map', { skip }, async (t) => {
  // The guest signals "done" by connecting here; we end that connection when the host side is finished.
  const doneSockets: Socket[] = [];
  const done = createServer({ allowHalfOpen: true }, (s) => { s.on('error', () => { /* ignore */ }); doneSockets.push(s); });
  await new Promise<void>((r) => done.listen(0, '127.0.0.1', r));
  t.teardown(() => { for (const s of doneSockets) s.destroy(); done.close(); });
  const donePort = (done.address() as AddressInfo).port;

  const portMap = new PortMap(['127.0.0.1:0:7070', '127.0.0.1:0:8080']);
  const fromHost = randomBytes(512 * 1024);
  const script = [
    'mkdir -p /tmp/www && echo guest-page > /tmp/www/index.html',
    'httpd -p 8080 -h /tmp/www; echo httpd=$?',
    'head -c 262144 /dev/urandom > /tmp/g; sha256sum /tmp/g',
    'tsibox-tcp -l -6 -v 7070 < /tmp/g > /tmp/h; echo listen=$?',
    'sha256sum /tmp/h',
    // An unmapped listener stays guest-local and still works for guest clients.
    'tsibox-tcp -l 7999 < /dev/null > /tmp/o & sleep 0.3; echo hi-local | tsibox-tcp 127.0.0.1 7999; wait; cat /tmp/o',
    // The TSI listener still serves guest clients through the guest stack.
    'wget -q -O- http://127.0.0.1:8080/index.html | sed s/^/local-/',
    `tsibox-tcp ${ALIAS4} ${donePort} < /dev/null; echo done=$?`,
  ].join('\n');
  const hostSide = (async () => {
    const p7070 = await until(() => portMap.lookupGuest('tcp', 7070)?.boundPort ?? undefined, 30_000);
    const reply = p7070 === undefined ? undefined : await exchange(p7070, fromHost);
    const p8080 = portMap.lookupGuest('tcp', 8080)?.boundPort ?? undefined;
    const page = p8080 === undefined ? undefined : await new Promise<string>((resolve, reject) => {
      httpGet(`http://127.0.0.1:${p8080}/index.html`, (res) => { let b = ''; res.setEncoding('utf8').on('data', (d: string) => (b += d)).on('end', () => { resolve(b); }); }).on('error', reject);
    });
    await until(() => (doneSockets.length > 0 ? true : undefined), 30_000);
    for (const s of doneSockets) s.end();
    return { p7070, reply, p8080, page };
  })();
  const logLines: Array<Record<string, unknown>> = [];
  const r = await Sandbox.run({
    engine: E2E_ENGINE, argv: ['sh', '-c', script], extraArchives: [tools!], timeoutMs: 60_000, logger: memoryLogger(logLines),
    network: {
      mode: 'tsi', portMap, hostLoopbackAlias: ALIAS4,
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: ['127.0.0.0/8', '::1/128'], name: 'host loopback only' }] }),
    },
  }).finally(() => { for (const s of doneSockets) s.destroy(); });
  const host = await hostSide;
  const out = r.stdout!.toString();
  const err = r.stderr?.toString() ?? '';
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: err });
  const sums = new Map<string, string>();
  for (const m of out.matchAll(/^([0-9a-f]{64})\s+(\S+)$/gm)) sums.set(m[2]!, m[1]!);

  await t.test('a host client reaches a guest [::]:7070 listener through 127.0.0.1:<mapped>; data both ways intact', async (t) => {
    t.ok(host.p7070 !== undefined && host.p7070 > 0, 'the host listens on the mapped port (boundPort)');
    t.match(out, /^listen=0$/m);
    t.equal(sums.get('/tmp/h'), createHash('sha256').update(fromHost).digest('hex'), 'host → guest sha256');
    t.equal(host.reply ? createHash('sha256').update(host.reply).digest('hex') : undefined, sums.get('/tmp/g'), 'guest → host sha256');
    t.match(err, /^peer \[::ffff:127\.0\.0\.1\]:\d+$/m, 'accept()/getpeername() report the real client address');
  });

  await t.test('busybox httpd in the guest serves a host client through the port map', async (t) => {
    t.match(out, /^httpd=0$/m);
    t.equal(host.page, 'guest-page\n');
    t.match(out, /^local-guest-page$/m, 'and guest clients through the guest stack');
  });

  await t.test('an unmapped listener stays guest-local', async (t) => {
    t.match(out, /^hi-local$/m);
    t.equal(portMap.lookupGuest('tcp', 7999), undefined);
  });
  t.ok(logLines.some((l) => l['event'] === 'tsi.connection' && l['direction'] === 'inbound' && l['decision'] === 'allow'), 'inbound connections are logged');
});

t.test('without network the patched kernel falls back to the guest stack (ENETUNREACH)', { skip }, async (t) => {
  const r = await Sandbox.run({
    engine: E2E_ENGINE, extraArchives: [tools!], timeoutMs: 60_000,
    argv: ['sh', '-c', `tsibox-tcp ${ALIAS4} 80 < /dev/null; echo nonet=$?`],
  });
  t.equal(r.exitCode, 0);
  t.match(r.stdout!.toString(), /^nonet=101$/m, 'ENETUNREACH (101): no route, no TSI service', { stderr: r.stderr?.toString() });
});

t.test('tsibox run --net tsi', { skip }, async (t) => {
  let requests = 0;
  const http = createHttpServer((_req, res) => { requests++; res.end(BODY); });
  t.teardown(() => new Promise<void>((r) => { http.close(() => { r(); }); }));
  await new Promise<void>((resolve, reject) => { http.once('error', reject); http.listen(0, '127.0.0.1', resolve); });
  const port = (http.address() as AddressInfo).port;
  const run = (extra: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> => new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'run', '--engine', E2E_ENGINE, '--timeout', '60', '--net', 'tsi', '--host-alias', ALIAS4, ...extra,
      '--', 'wget', '-q', '-O-', `http://${ALIAS4}:${port}/`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => { resolve({ code, stdout, stderr }); });
  });
  const ok = await run(['--allow', `127.0.0.1:${port}`]);
  t.equal(ok.code, 0, 'wget through --allow 127.0.0.1:PORT exits 0', ok);
  t.equal(ok.stdout, BODY, 'the body arrives on stdout');
  const no = await run([]);
  t.not(no.code, 0, 'without --allow the connection is denied (wget fails)');
  t.equal(requests, 1, 'only the allowed run reached the server');
});

t.test('tsibox run --net tsi --publish', { skip }, async (t) => {
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const hostPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => { r(); }));
  // The guest's last command is an HTTP GET here (busybox wget; the CLI root has no
  // guest tools); we answer it once we have fetched the page.
  const waiting: Array<(body: string) => void> = [];
  const done = createHttpServer((_req, res) => { waiting.push((b) => { res.end(b); }); });
  await new Promise<void>((r) => done.listen(0, '127.0.0.1', r));
  t.teardown(() => { done.closeAllConnections(); done.close(); });
  const donePort = (done.address() as AddressInfo).port;
  const child = spawn(process.execPath, [BIN, 'run', '--engine', E2E_ENGINE, '--timeout', '60', '--net', 'tsi', '--allow', '127.0.0.1',
    '--host-alias', ALIAS4, '--publish', `127.0.0.1:${hostPort}:8080`, '--',
    'sh', '-c', `mkdir -p /tmp/w && echo published > /tmp/w/index.html && httpd -p 8080 -h /tmp/w && wget -q -O- http://${ALIAS4}:${donePort}/`],
  { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => { resolve(code); }));
  t.teardown(() => { child.kill('SIGKILL'); });
  let page: string | undefined;
  for (const end = Date.now() + 40_000; page === undefined && Date.now() < end;) {
    page = await new Promise<string | undefined>((resolve) => {
      httpGet(`http://127.0.0.1:${hostPort}/index.html`, (res) => { let b = ''; res.setEncoding('utf8').on('data', (d: string) => (b += d)).on('end', () => { resolve(b); }); })
        .on('error', () => { setTimeout(() => { resolve(undefined); }, 100); });
    });
  }
  await until(() => (waiting.length > 0 ? true : undefined), 30_000);
  for (const w of waiting) w('bye\n');
  t.equal(page, 'published\n', 'the host fetched the guest page through --publish', { stderr });
  t.equal(await exited, 0, 'tsibox run exits 0', { stderr });
});

