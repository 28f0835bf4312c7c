/**
 * End to end (issue 14 item 4): a `--publish` whose host port another process holds is
 * never silent. At start the numbered host ports are tried before the VM boots: a
 * taken one is an error line on stderr and exit status 1, and the guest never runs.
 * Lost later (the port taken between the start and the guest's listen()): the error
 * line, the sandbox stopped, exit 1 — or, with `--on-publish-error warn`, the line and
 * the program runs on without that mapping. The other process never hears from the
 * sandbox. Host servers listen on 127.0.0.1 only.
 */
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';

const { skip } = await e2ePrerequisites(t);

// The CLI of this build (dist/ or wherever the tests were compiled to).
const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** Another process's server: counts connections, never answers. */
interface Holder { server: Server; port: number; connections: number }
async function holder(t: Tap, port = 0): Promise<Holder> {
  const sockets = new Set<Socket>();
  const h: Holder = { server: createServer((s) => { h.connections++; sockets.add(s); s.on('close', () => sockets.delete(s)); }), port: 0, connections: 0 };
  await new Promise<void>((resolve, reject) => { h.server.once('error', reject); h.server.listen({ port, host: '127.0.0.1', exclusive: true }, resolve); });
  h.port = (h.server.address() as AddressInfo).port;
  t.teardown(() => new Promise<void>((r) => { for (const s of sockets) s.destroy(); h.server.close(() => { r(); }); }));
  return h;
}
type Tap = Test;

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => { r(); }));
  return port;
}

interface Run { code: Promise<number | null>; stdout: () => string; stderr: () => string; sawStdout: (re: RegExp, ms: number) => Promise<boolean> }
function tsibox(t: Tap, args: string[]): Run {
  const child = spawn(process.execPath, [MAIN, 'run', '--engine', E2E_ENGINE, '--timeout', '90', '--net', 'tsi', '--allow', '127.0.0.1', ...args],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const code = new Promise<number | null>((resolve) => child.on('close', (c) => { resolve(c); }));
  t.teardown(() => { child.kill('SIGKILL'); });
  return {
    code, stdout: () => stdout, stderr: () => stderr,
    sawStdout: async (re, ms) => {
      for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) if (re.test(stdout)) return true;
      return false;
    },
  };
}

t.test('a --publish host port held by another server fails the start: stderr names it, exit 1, the guest never runs', { skip }, async (t) => {
  const other = await holder(t);
  const started = Date.now();
  const r = tsibox(t, ['--publish', `127.0.0.1:${other.port}:8080`, '--', 'sh', '-c', 'echo guest-ran; httpd -f -p 8080']);
  const code = await r.code;
  t.equal(code, 1, 'exit status 1', { stderr: r.stderr() });
  t.match(r.stderr(), new RegExp(`^tsibox: cannot publish tcp 127\\.0\\.0\\.1:${other.port} → guest 8080: the host port is already in use \\(EADDRINUSE\\) \\[PORT_MAP_BIND_FAILED\\]$`, 'm'));
  t.notMatch(r.stdout(), /guest-ran/, 'the VM did not boot');
  t.ok(Date.now() - started < 30_000, 'fast: before any boot');
  t.equal(other.connections, 0, 'the other server got no connection from the sandbox');
});

t.test('lost after the start (taken before the guest listens): stderr names it, the sandbox is stopped, exit 1', { skip }, async (t) => {
  const port = await freePort();
  const r = tsibox(t, ['--publish', `127.0.0.1:${port}:8080`, '--', 'sh', '-c', 'echo booted; sleep 3; echo listening; httpd -f -p 8080; echo httpd-ended']);
  t.ok(await r.sawStdout(/booted/, 60_000), 'the guest runs', { stderr: r.stderr() });
  const other = await holder(t, port); // the start's check passed long ago
  const code = await r.code;
  t.equal(code, 1, 'exit status 1 although httpd -f never ends', { stderr: r.stderr() });
  t.match(r.stderr(), new RegExp(`^tsibox: cannot publish tcp 127\\.0\\.0\\.1:${port} → guest 8080: the host port is already in use \\(EADDRINUSE\\); the sandbox was stopped .*\\[PORT_MAP_BIND_FAILED\\]$`, 'm'));
  t.match(r.stdout(), /listening/, 'the guest had reached listen()');
  t.equal(other.connections, 0, 'the other server got no connection from the sandbox');
});

t.test('--on-publish-error warn: the lines on stderr, the program runs on without those mappings', { skip }, async (t) => {
  const atStart = await holder(t);
  const port = await freePort();
  const r = tsibox(t, ['--on-publish-error', 'warn', '--publish', `127.0.0.1:${atStart.port}:9090`, '--publish', `127.0.0.1:${port}:8080`, '--',
    'sh', '-c', 'echo booted; sleep 3; mkdir -p /w && echo page > /w/index.html && httpd -p 8080 -h /w && sleep 2 && wget -q -O- http://127.0.0.1:8080/ && echo guest-local-ok; exit 7']);
  t.ok(await r.sawStdout(/booted/, 60_000), 'the guest runs despite the mapping dropped at start', { stderr: r.stderr() });
  const later = await holder(t, port);
  const code = await r.code;
  t.equal(code, 7, "the program's own exit status", { stderr: r.stderr() });
  t.match(r.stderr(), new RegExp(`^tsibox: cannot publish tcp 127\\.0\\.0\\.1:${atStart.port} → guest 9090: the host port is already in use \\(EADDRINUSE\\) \\[PORT_MAP_BIND_FAILED\\]; running without it$`, 'm'));
  t.match(r.stderr(), new RegExp(`^tsibox: cannot publish tcp 127\\.0\\.0\\.1:${port} → guest 8080: the host port is already in use \\(EADDRINUSE\\) \\[PORT_MAP_BIND_FAILED\\]; running without it$`, 'm'));
  t.match(r.stdout(), /guest-local-ok/, 'the guest listener still serves guest clients');
  t.equal(atStart.connections + later.connections, 0, 'the other servers got no connection from the sandbox');
});
