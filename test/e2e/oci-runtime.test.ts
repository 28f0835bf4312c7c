/**
 * End to end: `tsibox-oci` as a container engine drives it, without the engine — the
 * runtime's own conformance checks (runtime-spec runtime.md "Lifecycle", "Operations"):
 * state in every phase, the pid file naming a process that lives exactly as long as the
 * container, the exit status through waitpid (this test is a child subreaper, as conmon
 * and containerd's shim are), stdio inherited from create, kill before and after start,
 * delete --force of a running container, and networking in a network namespace the test
 * makes (guest listeners published in it and not on the host; the io.tsibox.policy file
 * deciding egress). The root is the Debian test root, read-only. Runs under either engine
 * (TSIBOX_E2E_ENGINE → the io.tsibox.engine annotation).
 *
 * HOST SAFETY: servers listen in network namespaces the test makes (two, joined by a
 * veth pair: 10.213.0.2 the container's, 10.213.0.1 its peer's) or nowhere; every container is deleted with --force in teardown; the
 * namespace is removed; processes are ended by PID.
 */
import t, { type Test } from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, readlinkSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { testRootPath } from '../../src/guest/test-root.js';
import { findVirtiofsd } from '../../src/engine/virtiofsd.js';
import { E2E_ENGINE, e2ePrerequisites } from './prerequisites.js';
import { becomeSubreaper, reap } from '../support/subreaper.js';

const RUNTIME = fileURLToPath(new URL('../../../bin/tsibox-oci.js', import.meta.url));
const root = testRootPath();
const pre = await e2ePrerequisites(t);
const skip = pre.skip !== false ? pre.skip
  : process.getuid?.() !== 0 ? 'the OCI runtime needs root (virtiofsd, network namespaces)'
    : findVirtiofsd() === undefined ? 'virtiofsd is not installed (Debian: qemu-system-common)'
      : root === undefined ? 'the Debian test root is not built: run `sudo bash scripts/build-test-root.sh` (.ci/run does it)'
        : !existsSync('/usr/bin/nsenter') ? 'nsenter is not installed (Debian: util-linux)'
          : false;
if (skip === false) becomeSubreaper();

t.setTimeout(15 * 60_000);
const work = mkdtempSync(join(tmpdir(), 'tsibox-oci-e2e-'));
const stateRoot = join(work, 'state');
t.teardown(() => { rmSync(work, { recursive: true, force: true }); });

interface Config {
  args: string[];
  mounts?: Array<{ destination: string; type: string; source: string; options: string[] }>;
  netns?: string;
  annotations?: Record<string, string>;
  hostname?: string;
}

/** A bundle whose config.json runs `args` in the Debian test root (read-only). */
function bundle(name: string, c: Config): string {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify({
    ociVersion: '1.0.2',
    root: { path: root, readonly: true },
    process: { args: c.args, env: ['PATH=/usr/local/bin:/usr/bin:/bin', 'PYTHONDONTWRITEBYTECODE=1'], cwd: '/', user: { uid: 0, gid: 0 } },
    hostname: c.hostname ?? name,
    mounts: [{ destination: '/proc', type: 'proc', source: 'proc' }, ...c.mounts ?? []],
    annotations: { 'io.tsibox.engine': E2E_ENGINE, ...c.annotations },
    linux: { namespaces: [{ type: 'pid' }, { type: 'mount' }, ...(c.netns !== undefined ? [{ type: 'network', path: c.netns }] : [{ type: 'network' }])] },
  }));
  return dir;
}

interface Run { code: number | null; stdout: string; stderr: string }

function rt(args: string[], input?: string): Run {
  const r = spawnSync(process.execPath, [RUNTIME, '--root', stateRoot, ...args], { encoding: 'utf8', timeout: 120_000, ...(input !== undefined ? { input } : {}) });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function state(id: string): { status: string; pid?: number } | null {
  const r = rt(['state', id]);
  return r.code === 0 ? JSON.parse(r.stdout) as { status: string; pid?: number } : null;
}

/** A container created with piped stdio: `create` exits, the monitor keeps the pipes. */
async function create(t: Test, id: string, dir: string): Promise<{ pid: number; stdin: (text: string) => void; out: () => string; err: () => string }> {
  t.teardown(() => { rt(['delete', '--force', id]); });
  const pidFile = join(dir, 'pid');
  // stdin: a FIFO we hold open read-write (Node closes a child's stdin pipe when the
  // child exits, and `create` exits long before the workload reads).
  const fifo = join(dir, 'stdin');
  spawnSync('mkfifo', [fifo]);
  const stdinFd = openSync(fifo, 'r+');
  t.teardown(() => { closeSync(stdinFd); });
  const child = spawn(process.execPath, [RUNTIME, '--root', stateRoot, 'create', '--bundle', dir, '--pid-file', pidFile, id], { stdio: [stdinFd, 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const code = await new Promise<number | null>((res) => child.once('exit', res));
  if (code !== 0) throw new Error(`create ${id} failed (${code}): ${err}`);
  return { pid: Number(readFileSync(pidFile, 'utf8')), stdin: (text) => { writeSync(stdinFd, text); }, out: () => out, err: () => err };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function until(what: string, cond: () => boolean | Promise<boolean>, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

t.test('create, start, state, exit status, delete: one container\'s whole life', { skip }, async (t) => {
  const id = `life-${randomBytes(3).toString('hex')}`;
  const resolv = join(work, `${id}-resolv.conf`);
  writeFileSync(resolv, 'nameserver 10.1.2.3\n');
  const secret = join(work, `${id}-secret`);
  writeFileSync(secret, 's3cret');
  const dir = bundle(id, {
    args: ['python3', '-c', [
      'import socket,sys',
      'l=sys.stdin.readline()',
      'print(l.strip().upper(), socket.gethostname(), open("/etc/resolv.conf").read().split()[1], open("/run/secrets/token").read())',
      'try: open("/run/secrets/token", "w")',
      'except OSError as e: print("ro:", e.errno, file=sys.stderr)',
      'sys.exit(3)',
    ].join('\n')],
    hostname: 'box1',
    // File binds, as podman gives /etc/resolv.conf (over a file the read-only root has) and secrets (a new path on init's /run).
    mounts: [
      { destination: '/etc/resolv.conf', type: 'bind', source: resolv, options: ['rbind', 'rw'] },
      { destination: '/run/secrets/token', type: 'bind', source: secret, options: ['rbind', 'ro'] },
    ],
  });
  const c = await create(t, id, dir);
  t.equal(state(id)?.status, 'created');
  t.equal(state(id)?.pid, c.pid, 'state names the pid file\'s process');
  t.ok(alive(c.pid), 'the container process waits between create and start');
  t.match(readFileSync(`/proc/${c.pid}/cmdline`, 'utf8'), /monitor-main/);
  t.not(readlinkSync(`/proc/${c.pid}/ns/net`), readlinkSync('/proc/self/ns/net'), 'a network namespace without a path: the container gets a new one, as with runc');
  t.match(rt(['create', '--bundle', dir, id]).stderr, /already exists \[INVALID_STATE\]/);
  const started = Date.now();
  t.equal(rt(['start', id]).code, 0);
  t.comment(`start returned in ${Date.now() - started} ms`);
  t.ok(['running', 'stopped'].includes(state(id)!.status));
  t.match(rt(['start', id]).stderr, /cannot start container .*\[INVALID_STATE\]/, 'start twice');
  c.stdin('hello\n');
  const status = await reap(c.pid, 120_000);
  t.equal(status, 3, 'the container process exits with the workload\'s status');
  await until('the output', () => c.out().includes('\n') && c.err().includes('\n'), 5_000).catch(() => {});
  t.equal(c.out(), 'HELLO box1 10.1.2.3 s3cret\n', 'stdout inherited from create; stdin reached the workload; hostname and file binds in place');
  t.equal(c.err(), 'ro: 30\n', 'a read-only file bind is read-only (EROFS) in the guest');
  t.same(state(id), { ociVersion: '1.0.2', id, status: 'stopped', pid: 0, bundle: dir, annotations: { 'io.tsibox.engine': E2E_ENGINE } });
  t.equal(rt(['delete', id]).code, 0);
  t.equal(state(id), null);
  t.notOk(existsSync(join(stateRoot, id)), 'nothing left of it');
});

t.test('kill before start ends the container unstarted; kill TERM and KILL end a running one', { skip }, async (t) => {
  const early = `early-${randomBytes(3).toString('hex')}`;
  const e = await create(t, early, bundle(early, { args: ['sleep', '1000'] }));
  t.equal(rt(['kill', early, 'TERM']).code, 0);
  t.equal(await reap(e.pid, 30_000), 143);
  t.equal(state(early)?.status, 'stopped');
  t.match(rt(['start', early]).stderr, /\[INVALID_STATE\]/, 'a stopped container cannot start');
  t.match(rt(['kill', early, '9']).stderr, /\[INVALID_STATE\]/, 'nor be signalled');

  for (const [sig, expect] of [['TERM', 143], ['KILL', 137]] as const) {
    const id = `kill${expect}-${randomBytes(3).toString('hex')}`;
    const c = await create(t, id, bundle(id, { args: ['sleep', '1000'] }));
    t.equal(rt(['start', id]).code, 0);
    // Let the workload start (the VM boots after start returns).
    await until('the workload to run', () => c.err() === '' && Date.now() > 0 && state(id)?.status === 'running', 10_000);
    await new Promise((r) => setTimeout(r, E2E_ENGINE === 'qemu' ? 4000 : 2000));
    const t0 = Date.now();
    t.equal(rt(['kill', id, sig]).code, 0, `kill ${sig}`);
    t.equal(await reap(c.pid, 30_000), expect, `SIG${sig} → ${expect}`);
    t.comment(`SIG${sig}: container gone ${Date.now() - t0} ms after kill`);
    t.equal(rt(['delete', id]).code, 0);
  }
});

t.test('delete --force of a running container leaves nothing', { skip }, async (t) => {
  const id = `force-${randomBytes(3).toString('hex')}`;
  const c = await create(t, id, bundle(id, { args: ['sleep', '1000'] }));
  t.equal(rt(['start', id]).code, 0);
  t.match(rt(['delete', id]).stderr, /cannot delete container .* it is running/);
  const reaped = reap(c.pid, 30_000);
  t.equal(rt(['delete', '--force', id]).code, 0);
  t.equal(await reaped, 137);
  t.equal(state(id), null);
  t.notOk(existsSync(join(stateRoot, id)));
  t.notOk(existsSync(join(stateRoot, `${id}.lock`)));
  t.equal(rt(['delete', '--force', id]).code, 0, 'again: --force of a missing container succeeds');
});

t.test('networking in the container\'s namespace: listeners published there only; the policy file decides egress', { skip }, async (t) => {
  // The container's namespace (10.213.0.2) and a peer namespace (10.213.0.1) joined by a
  // veth pair, as podman's bridge joins a container to the host.
  const ns = `tsibox-oci-${randomBytes(3).toString('hex')}`;
  const peer = `${ns}-peer`;
  const ip = (...a: string[]): void => {
    const r = spawnSync('ip', a, { encoding: 'utf8', timeout: 10_000 });
    if (r.status !== 0) throw new Error(`ip ${a.join(' ')}: ${r.stderr}`);
  };
  ip('netns', 'add', ns);
  t.teardown(() => { spawnSync('ip', ['netns', 'del', ns], { timeout: 10_000 }); });
  ip('netns', 'add', peer);
  t.teardown(() => { spawnSync('ip', ['netns', 'del', peer], { timeout: 10_000 }); });
  const veth = spawnSync('ip', ['link', 'add', 'tsbx0', 'netns', ns, 'type', 'veth', 'peer', 'name', 'tsbx1', 'netns', peer], { encoding: 'utf8', timeout: 10_000 });
  if (veth.status !== 0) {
    // The nested test host has no modprobe to load veth with.
    t.comment(`SKIP: this kernel cannot make a veth pair: ip link add ... type veth: ${veth.stderr.trim()}`);
    t.pass(`skipped: no veth pair here`);
    return;
  }
  for (const [n, dev, addr] of [[ns, 'tsbx0', '10.213.0.2/24'], [peer, 'tsbx1', '10.213.0.1/24']] as const) {
    ip('-n', n, 'link', 'set', 'lo', 'up');
    ip('-n', n, 'addr', 'add', addr, 'dev', dev);
    ip('-n', n, 'link', 'set', dev, 'up');
  }
  // Two TCP servers in the peer namespace: port 7001 allowed by the policy, 7002 not.
  const server = spawn('ip', ['netns', 'exec', peer, process.execPath, '-e', `
    const net = require('node:net');
    let n = 0;
    for (const p of [7001, 7002]) net.createServer((s) => { n++; s.end('hi from ' + p + '\\n'); }).listen(p, '10.213.0.1', () => console.log('up ' + p));
    setInterval(() => console.log('count ' + n), 200);
    setTimeout(() => process.exit(0), 300000);
  `], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => { if (server.exitCode === null) server.kill('SIGKILL'); });
  let serverOut = '';
  server.stdout.setEncoding('utf8').on('data', (d: string) => { serverOut += d; });
  await until('the namespace servers', () => serverOut.includes('up 7001') && serverOut.includes('up 7002'), 10_000);

  const policy = join(work, 'policy.json');
  writeFileSync(policy, JSON.stringify({ default: 'deny', rules: [
    { action: 'allow', protocol: 'tcp', cidr: '10.213.0.1', ports: 7001, direction: 'outbound' },
    { action: 'allow', direction: 'inbound' },
  ] }));
  const port = 20000 + randomBytes(2).readUInt16BE(0) % 20000;
  const id = `net-${randomBytes(3).toString('hex')}`;
  const script = [
    'import socket, http.server, threading',
    'def get(p):',
    '    try:',
    '        s = socket.create_connection(("10.213.0.1", p), timeout=10); return s.recv(100).decode().strip()',
    '    except OSError as e: return type(e).__name__',
    'print(get(7001), "|", get(7002), flush=True)',
    `http.server.ThreadingHTTPServer(("0.0.0.0", ${port}), http.server.SimpleHTTPRequestHandler).serve_forever()`,
  ].join('\n');
  const c = await create(t, id, bundle(id, { args: ['python3', '-c', script], netns: `/run/netns/${ns}`, annotations: { 'io.tsibox.policy': policy } }));
  t.equal(rt(['start', id]).code, 0);
  await until('the egress probe', () => c.out().includes('\n'), 90_000);
  t.equal(c.out().trim(), 'hi from 7001 | PermissionError', 'allowed port reached in the namespace; the other refused (EACCES) by the policy');
  await new Promise((r) => setTimeout(r, 500));
  t.match(serverOut.trim().split('\n').at(-1), /^count 1$/, 'the denied connection never reached its server');
  // The guest's listener is published in the container's namespace, on its own port,
  // where the peer reaches it (as podman's port forwarding does).
  let page = '';
  await until('the guest web server in the namespace', () => {
    const r = spawnSync('ip', ['netns', 'exec', peer, process.execPath, '-e', `fetch('http://10.213.0.2:${port}/etc/').then(r => r.text()).then(t => console.log(t), () => process.exit(1))`], { encoding: 'utf8', timeout: 10_000 });
    page = r.stdout;
    return r.status === 0;
  }, 60_000);
  t.match(page, /Directory listing for \/etc\//);
  const onHost = await new Promise<string>((res) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); res('connected'); });
    s.once('error', (e: NodeJS.ErrnoException) => { res(e.code ?? 'error'); });
  });
  t.equal(onHost, 'ECONNREFUSED', 'nothing listens on the host\'s own namespace');
  t.equal(rt(['kill', id, 'KILL']).code, 0);
  t.equal(await reap(c.pid, 30_000), 137);
  t.equal(rt(['delete', id]).code, 0);
});

t.test('create reports a bad bundle and leaves nothing', { skip }, async (t) => {
  const id = `bad-${randomBytes(3).toString('hex')}`;
  const dir = bundle(id, { args: ['true'], annotations: { 'io.tsibox.policy': join(work, 'no-such-policy.json') } });
  const r = rt(['create', '--bundle', dir, '--pid-file', join(dir, 'pid'), id]);
  t.equal(r.code, 1);
  t.match(r.stderr, /policy file .*cannot open.*\[INVALID_ARGUMENT\]/, 'the monitor\'s error is create\'s error');
  t.equal(state(id), null);
  t.notOk(existsSync(join(dir, 'pid')), 'no pid file');
  const ns = rt(['create', '--bundle', bundle(`${id}-ns`, { args: ['true'], netns: '/run/netns/tsibox-no-such-ns' }), `${id}-ns`]);
  t.equal(ns.code, 1);
  t.match(ns.stderr, /nsenter.*No such file|network namespace \/run\/netns\/tsibox-no-such-ns/, 'a missing namespace is create\'s error');
  t.equal(state(`${id}-ns`), null);
});
