/**
 * End to end: real programs from a real distribution in the guest. The guest's root is
 * the Debian test root (scripts/build-test-root.sh: Debian 12 minbase with python3,
 * curl and iperf3) over virtio-fs; python3, curl and Python's urllib talk to host
 * loopback servers through TSI and through passt.
 *
 * The test root is a shared cache: it is ALWAYS mounted read-only here (python would
 * otherwise write .pyc files into it), and writes go to a temporary `mounts` entry.
 * This test does not build the root: that takes a minute or two, root, debootstrap and
 * the Debian archive, which a test run should not pull in behind the user's back;
 * .ci/run builds it before `npm test`, and without it the tests skip saying how to build
 * it. Runs under either engine (TSIBOX_E2E_ENGINE). HOST SAFETY: the guest only targets the host-loopback alias / passt's gateway,
 * the servers listen on 127.0.0.1 only, and there is no DNS (IP addresses only).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox } from '../../src/index.js';
import { Policy } from '../../src/policy/index.js';
import { findVirtiofsd } from '../../src/engine/virtiofsd.js';
import { testRootPath } from '../../src/guest/test-root.js';
import { E2E_ENGINE, e2ePrerequisites } from './prerequisites.js';

const BIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const ALIAS = '10.0.2.2'; // TSI's host-loopback alias, and passt's gateway (→ host 127.0.0.1)

const root = testRootPath();
const pre = await e2ePrerequisites(t);
const skip = pre.skip !== false ? pre.skip
  : findVirtiofsd() === undefined ? 'virtiofsd is not installed (Debian: qemu-system-common)'
    : process.getuid?.() !== 0 ? 'a directory root needs root (virtiofsd)'
      : root === undefined ? 'the Debian test root is not built: run `sudo bash scripts/build-test-root.sh` (about a minute; needs debootstrap and the Debian archive; .ci/run does it)'
        : false;
const passtSkip = skip !== false ? skip : (await e2ePrerequisites(t, { passt: true })).skip;

const work = mkdtempSync(join(tmpdir(), 'tsibox-debian-root-test-'));
t.teardown(() => { rmSync(work, { recursive: true, force: true }); });

const text = (b: Buffer | undefined): string => b?.toString('utf8') ?? '';

/** What must not change in the shared root: its top level and python's (absent) byte-code caches. */
function rootFingerprint(r: string): string {
  const lib = readdirSync(join(r, 'usr', 'lib')).find((d) => /^python3\.\d+$/.test(d)) ?? 'python3';
  return JSON.stringify({ top: readdirSync(r).sort(), mtime: statSync(r).mtimeMs, pycache: existsSync(join(r, 'usr', 'lib', lib, '__pycache__')) });
}
const before = root !== undefined ? rootFingerprint(root) : '';

/** An HTTP server on 127.0.0.1 that records each request's User-Agent. */
async function httpServer(servers: Array<Server | HttpServer>): Promise<{ port: number; agents: string[] }> {
  const agents: string[] = [];
  const http = createHttpServer((req, res) => { agents.push(req.headers['user-agent'] ?? ''); res.end(`hello ${req.url ?? ''}\n`); });
  servers.push(http);
  await new Promise<void>((resolve, reject) => { http.once('error', reject); http.listen(0, '127.0.0.1', resolve); });
  return { port: (http.address() as AddressInfo).port, agents };
}

/** A TCP server on 127.0.0.1 that only counts connections (must stay at zero). */
async function countingServer(servers: Array<Server | HttpServer>, sockets: Set<Socket>): Promise<{ port: number; connections: () => number }> {
  let n = 0;
  const s = createServer((c) => { n++; sockets.add(c); c.on('close', () => sockets.delete(c)); c.destroy(); });
  servers.push(s);
  await new Promise<void>((resolve, reject) => { s.once('error', reject); s.listen(0, '127.0.0.1', resolve); });
  return { port: (s.address() as AddressInfo).port, connections: () => n };
}

function closeAll(servers: Array<Server | HttpServer>, sockets: Set<Socket>): Promise<void> {
  for (const s of sockets) s.destroy();
  return Promise.all(servers.map((s) => new Promise<void>((r) => { s.close(() => { r(); }); }))).then(() => undefined);
}

/** A python program: urllib GET of `ok`, then `denied` by urllib and by a bare connect; prints what it saw. */
function pythonClient(okUrl: string, deniedHost: string, deniedPort: number): string {
  return [
    'import socket, urllib.request, urllib.error',
    `print("urllib:", urllib.request.urlopen("${okUrl}", timeout=30).read().decode().strip())`,
    'try:',
    `    urllib.request.urlopen("http://${deniedHost}:${deniedPort}/", timeout=30)`,
    '    print("denied-urllib: connected")',
    'except urllib.error.URLError as e:',
    '    print("denied-urllib:", type(e.reason).__name__, getattr(e.reason, "errno", None))',
    's = socket.socket()',
    's.settimeout(30)',
    'try:',
    `    s.connect(("${deniedHost}", ${deniedPort}))`,
    '    print("denied-connect: connected")',
    'except OSError as e:',
    '    print("denied-connect:", type(e).__name__, e.errno)',
  ].join('\n');
}

t.test('python3 from the Debian root: Sandbox.run and tsibox run', { skip }, async (t) => {
  const r = await Sandbox.run({ engine: E2E_ENGINE, root: root!, rootReadOnly: true, argv: ['python3', '-c', 'print(42)'], timeoutMs: 120_000 });
  t.equal(r.exitCode, 0, `exit 0 (stderr: ${text(r.stderr)})`);
  t.equal(text(r.stdout), '42\n');
  const cli = spawnSync(process.execPath, [BIN, 'run', '--engine', E2E_ENGINE, '--root', root!, '--root-read-only', '--', 'python3', '-c', 'print(42)'], { encoding: 'utf8', timeout: 120_000 });
  t.equal(cli.status, 0, `tsibox run exits 0 (stderr: ${cli.stderr})`);
  t.equal(cli.stdout, '42\n');
});

t.test('guest writes reach a host directory; the read-only root refuses them with EROFS', { skip }, async (t) => {
  const out = join(work, 'out');
  mkdirSync(out);
  const r = await Sandbox.run({
    engine: E2E_ENGINE, root: root!, rootReadOnly: true, timeoutMs: 120_000,
    mounts: [{ hostPath: out, guestPath: '/mnt' }],
    argv: ['python3', '-c', [
      'import os',
      'open("/mnt/from-guest.txt", "w").write("written by python in the guest\\n")',
      'os.makedirs("/mnt/sub/dir")',
      'open("/mnt/sub/dir/f", "w").write("nested\\n")',
      'try:',
      '    open("/guest-root-write.txt", "w")',
      '    print("root-write: ok")',
      'except OSError as e:',
      '    print("root-write:", e.errno, e.strerror)',
    ].join('\n')],
  });
  t.equal(r.exitCode, 0, `exit 0 (stderr: ${text(r.stderr)})`);
  t.equal(readFileSync(join(out, 'from-guest.txt'), 'utf8'), 'written by python in the guest\n', 'the file is in the host directory');
  t.equal(readFileSync(join(out, 'sub', 'dir', 'f'), 'utf8'), 'nested\n', 'directories made in the guest too');
  t.match(text(r.stdout), /^root-write: 30 Read-only file system$/m, 'a write to / fails with OSError errno 30 (EROFS)');
  t.notOk(existsSync(join(root!, 'guest-root-write.txt')), 'nothing reached the shared root');
});

t.test('curl and urllib reach a host loopback server through TSI; the denied port is refused', { skip }, async (t) => {
  const servers: Array<Server | HttpServer> = [];
  const sockets = new Set<Socket>();
  t.teardown(() => closeAll(servers, sockets));
  const ok = await httpServer(servers);
  const denied = await countingServer(servers, sockets);
  const r = await Sandbox.run({
    engine: E2E_ENGINE, root: root!, rootReadOnly: true, timeoutMs: 120_000,
    network: {
      mode: 'tsi', hostLoopbackAlias: ALIAS,
      policy: new Policy({ default: 'deny', rules: [
        { action: 'deny', protocol: 'tcp', cidr: '127.0.0.1', ports: denied.port, name: 'the denied test port' },
        { action: 'allow', protocol: 'tcp', direction: 'outbound', cidr: '127.0.0.1', ports: ok.port, name: 'the test server' },
      ] }),
    },
    argv: ['sh', '-c', [
      `curl -sS -m 30 http://${ALIAS}:${ok.port}/curl; echo curl=$?`,
      `curl -sS -m 30 http://${ALIAS}:${denied.port}/; echo curl-denied=$?`,
      `python3 -c '${pythonClient(`http://${ALIAS}:${ok.port}/urllib`, ALIAS, denied.port)}'`,
    ].join('; ')],
  });
  const out = text(r.stdout);
  t.equal(r.exitCode, 0, `exit 0 (stdout: ${out}, stderr: ${text(r.stderr)})`);
  t.match(out, /^hello \/curl\ncurl=0$/m, 'curl fetched the page');
  t.match(out, /^urllib: hello \/urllib$/m, 'urllib fetched the page');
  t.match(ok.agents, [/^curl\//, /^Python-urllib\//], 'the requests came from the real curl and Python');
  t.match(out, /^curl-denied=7$/m, 'curl: exit 7 (could not connect) for the denied port');
  t.match(text(r.stderr), /curl: \(7\) Failed to connect/);
  // TSI refuses a denied connect() with EACCES (the proxy's verdict), not ECONNREFUSED.
  t.match(out, /^denied-urllib: PermissionError 13$/m, 'urllib: URLError(PermissionError EACCES)');
  t.match(out, /^denied-connect: PermissionError 13$/m, 'connect(): PermissionError errno 13 (EACCES)');
  t.equal(denied.connections(), 0, 'the denied server saw no connection');
});

t.test('urllib reaches a host loopback server through passt (virtio-net) with the Debian root', { skip: passtSkip }, async (t) => {
  const servers: Array<Server | HttpServer> = [];
  const sockets = new Set<Socket>();
  t.teardown(() => closeAll(servers, sockets));
  const ok = await httpServer(servers);
  const denied = await countingServer(servers, sockets);
  const r = await Sandbox.run({
    engine: E2E_ENGINE, root: root!, rootReadOnly: true, timeoutMs: 120_000,
    network: { mode: 'passt', policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: '127.0.0.1', ports: ok.port }] }) },
    argv: ['python3', '-c', pythonClient(`http://${ALIAS}:${ok.port}/passt`, ALIAS, denied.port)],
  });
  const out = text(r.stdout);
  t.equal(r.exitCode, 0, `exit 0 (stdout: ${out}, stderr: ${text(r.stderr)})`);
  t.match(out, /^urllib: hello \/passt$/m, 'urllib fetched the page through passt');
  t.match(ok.agents, [/^Python-urllib\//]);
  // On the virtio-net path the frame filter answers a denied SYN with a RST.
  t.match(out, /^denied-urllib: ConnectionRefusedError 111$/m, 'urllib: ConnectionRefusedError (the filter\'s RST)');
  t.match(out, /^denied-connect: ConnectionRefusedError 111$/m);
  t.equal(denied.connections(), 0, 'the denied server saw no connection');
});

t.test('the shared test root was not written', { skip }, async (t) => {
  t.equal(rootFingerprint(root!), before, 'same top level, mtime, and still no python byte-code cache');
});
