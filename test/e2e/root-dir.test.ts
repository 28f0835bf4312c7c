/**
 * End to end: the guest's root is a host directory over virtio-fs (`root`,
 * `rootReadOnly`, `mounts`; docs/directory-root.md). The test root is the host's
 * static busybox with its applet links in a temporary directory; each sandbox has its
 * virtiofsd processes, whose sockets and private directories live under a TMPDIR of
 * this test's own, so "nothing is left" can be checked exactly. Runs under either engine
 * (TSIBOX_E2E_ENGINE; under KVM the devices are our vhost-user front end's).
 */
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox, TsiboxError } from '../../src/index.js';
import { Policy } from '../../src/policy/index.js';
import { findVirtiofsd } from '../../src/engine/virtiofsd.js';
import { alive, descendants, killAll, processesMentioning, waitFor } from '../helpers/processes.js';
import { E2E_ENGINE, e2ePrerequisites } from './prerequisites.js';

const BUSYBOX = '/bin/busybox';
const BIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const CHILD = fileURLToPath(new URL('./root-dir-child.js', import.meta.url));

const pre = await e2ePrerequisites(t);
const skip = pre.skip !== false ? pre.skip
  : findVirtiofsd() === undefined ? 'virtiofsd is not installed (Debian: qemu-system-common)'
    : process.getuid?.() !== 0 ? 'root and mounts need root (virtiofsd)'
      : spawnSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).status !== 0 ? `${BUSYBOX} (Debian: busybox-static) is missing`
        : false;

// virtiofsd's private directories go under this test's own TMPDIR (os.tmpdir() reads it).
const work = mkdtempSync(join(tmpdir(), 'tsibox-rootdir-test-'));
const runtime = join(work, 'runtime');
mkdirSync(runtime);
process.env['TMPDIR'] = runtime;
t.teardown(() => { rmSync(work, { recursive: true, force: true }); });

/** A busybox root: /bin/busybox, its applet links, and empty /dev /proc /sys /tmp /run /etc. */
function busyboxRoot(name: string): string {
  const root = join(work, name);
  for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'run', 'etc']) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, 'bin', 'busybox'), readFileSync(BUSYBOX));
  chmodSync(join(root, 'bin', 'busybox'), 0o755);
  for (const applet of spawnSync(BUSYBOX, ['--list'], { encoding: 'utf8' }).stdout.split('\n')) {
    if (applet !== '' && applet !== 'busybox') symlinkSync('busybox', join(root, 'bin', applet));
  }
  writeFileSync(join(root, 'etc', 'marker'), 'from the host root\n');
  return root;
}

/** Every file under `dir` with its contents (a snapshot to compare). */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    const p = join(e.parentPath, e.name);
    out[p] = e.isFile() ? readFileSync(p, 'latin1') : e.isSymbolicLink() ? 'link' : 'dir';
  }
  return out;
}

function noneLeft(root: string): boolean {
  return processesMentioning(`source=${root}`).length === 0 && readdirSync(runtime).length === 0;
}

const text = (b: Buffer | undefined): string => b?.toString('utf8') ?? '';

t.test('a host directory as the root, with rw and ro mounts', { skip }, async (t) => {
  const root = busyboxRoot('rw-root');
  const data = join(work, 'data');
  const ro = join(work, 'ro');
  mkdirSync(data);
  mkdirSync(ro);
  writeFileSync(join(data, 'in.txt'), 'host data\n');
  writeFileSync(join(ro, 'keep.txt'), 'keep\n');
  const r = await Sandbox.run({
    engine: E2E_ENGINE, root, timeoutMs: 90_000,
    mounts: [{ hostPath: data, guestPath: '/data' }, { hostPath: ro, guestPath: '/srv/ro', readOnly: true }],
    argv: ['sh', '-c', [
      'echo 42',
      'cat /etc/marker',
      'echo from the guest > /guest-wrote.txt',
      'test -r /proc/self/status && test -c /dev/null && test -c /dev/ptmx && test -d /dev/pts && echo proc-dev-ok',
      'grep -q "^tmpfs /tmp " /proc/mounts && touch /tmp/t && echo tmp-ok',
      'cat /data/in.txt; echo guest data > /data/out.txt',
      'cat /srv/ro/keep.txt; echo no > /srv/ro/new.txt',
      'exit 7',
    ].join('; ')],
  });
  const out = text(r.stdout);
  t.equal(r.exitCode, 7, `the exit status passes through (stderr: ${text(r.stderr)})`);
  t.match(out, /^42\nfrom the host root\n/, 'the workload runs in the host directory');
  t.match(out, /proc-dev-ok\n/, '/proc, /dev (devtmpfs, ptmx, pts) are there');
  t.match(out, /tmp-ok\n/, '/tmp is a tmpfs');
  t.equal(readFileSync(join(root, 'guest-wrote.txt'), 'utf8'), 'from the guest\n', "the guest's write reached the host directory");
  t.notOk(existsSync(join(root, 'tmp', 't')), '/tmp writes stay in the guest');
  t.match(out, /host data\n/, 'the rw mount shows the host files');
  t.equal(readFileSync(join(data, 'out.txt'), 'utf8'), 'guest data\n', 'a write through the rw mount reached the host');
  t.match(out, /keep\n/, 'the ro mount shows the host files');
  t.match(text(r.stderr), /Read-only file system/, 'a write through the ro mount fails with EROFS');
  t.notOk(existsSync(join(ro, 'new.txt')), 'the ro mount directory is unchanged');
  t.ok(await waitFor(() => noneLeft(root), 5000), 'no virtiofsd, socket or directory left');
});

t.test('rootReadOnly: EROFS in the guest, the host directory unchanged', { skip }, async (t) => {
  const root = busyboxRoot('ro-root');
  const before = snapshot(root);
  const r = await Sandbox.run({
    engine: E2E_ENGINE, root, rootReadOnly: true, timeoutMs: 90_000,
    argv: ['sh', '-c', 'echo 42; echo x > /etc/marker; echo y > /new.txt; mkdir /d; touch /tmp/ok && echo tmp-ok; exit 0'],
  });
  t.equal(r.exitCode, 0);
  t.match(text(r.stdout), /^42\ntmp-ok\n$/);
  t.match(text(r.stderr), /Read-only file system/, 'writes fail with EROFS');
  t.same(snapshot(root), before, 'the host directory is unchanged');

  // A mount point the read-only root lacks: the workload fails (125), the reason on its stderr.
  const r2 = await Sandbox.run({
    engine: E2E_ENGINE, root, rootReadOnly: true, timeoutMs: 90_000,
    mounts: [{ hostPath: work, guestPath: '/no/such/dir' }],
    argv: ['true'],
  });
  t.equal(r2.exitCode, 125);
  t.match(text(r2.stderr), /mount \/no\/such\/dir: the mount point does not exist and the root is read-only/);
  t.same(snapshot(root), before, 'still unchanged');
  t.ok(await waitFor(() => noneLeft(root), 5000), 'no virtiofsd, socket or directory left');
});

t.test('read-only is the host kernel\'s: root in the guest remounts rw and still cannot write; no device nodes on rw shares', { skip }, async (t) => {
  const root = busyboxRoot('remount-root');
  const ro = join(work, 'ro-remount');
  const rw = join(work, 'rw-mknod');
  mkdirSync(ro);
  mkdirSync(rw);
  writeFileSync(join(ro, 'keep.txt'), 'keep\n');
  const before = snapshot(root);
  const r = await Sandbox.run({
    engine: E2E_ENGINE, root, rootReadOnly: true, timeoutMs: 90_000,
    mounts: [{ hostPath: ro, guestPath: '/tmp/ro', readOnly: true }, { hostPath: rw, guestPath: '/tmp/rw' }],
    argv: ['sh', '-c', [
      // The workload is root in the guest: its own mount table is no barrier.
      'mount -o remount,rw /tmp/ro && echo ro-remounted',
      'echo pwned > /tmp/ro/keep.txt; echo new > /tmp/ro/new.txt',
      'mount -o remount,rw / && echo root-remounted',
      'echo pwned > /pwned.txt',
      'mknod /tmp/rw/disk b 254 0 || echo mknod-refused',
      'mkfifo /tmp/rw/fifo && echo fifo-ok',
      'true',
    ].join('; ')],
  });
  const out = text(r.stdout);
  t.equal(r.exitCode, 0, `stderr: ${text(r.stderr)}`);
  t.match(out, /ro-remounted\n/, 'the guest could remount the read-only mount read-write (its own kernel lets it)');
  t.equal(readFileSync(join(ro, 'keep.txt'), 'utf8'), 'keep\n', 'but the host file is unchanged');
  t.notOk(existsSync(join(ro, 'new.txt')), 'and no file was created in the host directory');
  t.same(snapshot(root), before, 'the read-only root is unchanged after a remount in the guest');
  t.match(out, /mknod-refused\n/, 'mknod of a block device on a writable share is refused');
  t.notOk(existsSync(join(rw, 'disk')), 'no device node in the host directory');
  t.match(out, /fifo-ok\n/, 'a fifo still works');
  t.ok(await waitFor(() => noneLeft(root), 5000), 'no virtiofsd, socket or directory left');
});

t.test('TSI and exec with a directory root', { skip }, async (t) => {
  const root = busyboxRoot('net-root');
  const server: Server = createServer((_req, res) => { res.end('hello over TSI\n'); });
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve); });
  t.teardown(() => new Promise<void>((r) => { server.close(() => { r(); }); }));
  const port = (server.address() as AddressInfo).port;
  const sb = await Sandbox.start({
    engine: E2E_ENGINE, root, timeoutMs: 90_000, stdin: 'pipe',
    network: { mode: 'tsi', hostLoopbackAlias: '10.0.2.2', policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: '127.0.0.1', ports: port }] }) },
    argv: ['sh', '-c', `wget -q -O- http://10.0.2.2:${port}/ && cat >/dev/null`],
  });
  let out = '';
  sb.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  t.ok(await waitFor(() => out.includes('hello over TSI'), 60_000), `the guest fetched the host page through TSI (${out})`);
  const ex = sb.exec(['cat', '/etc/marker']);
  let exOut = '';
  ex.stdout.setEncoding('utf8').on('data', (d: string) => { exOut += d; });
  t.equal((await ex.exited).exitCode, 0);
  t.equal(exOut, 'from the host root\n', 'exec runs in the directory root too');
  sb.stdin!.end();
  t.equal((await sb.exited).exitCode, 0);
  t.ok(await waitFor(() => noneLeft(root), 5000), 'no virtiofsd, socket or directory left');
});

t.test('a virtiofsd that dies mid-run ends the sandbox with DEVICE_ERROR', { skip }, async (t) => {
  const root = busyboxRoot('kill-root');
  const sb = await Sandbox.start({ engine: E2E_ENGINE, root, timeoutMs: 90_000, argv: ['sh', '-c', 'echo ready; sleep 60'] });
  let out = '';
  sb.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  t.ok(await waitFor(() => out.includes('ready'), 60_000), 'the guest runs');
  // The virtiofsd processes this sandbox started (serving our own temporary root).
  const ours = processesMentioning(`source=${root}`);
  t.ok(ours.length > 0, 'virtiofsd runs');
  killAll(ours);
  const err = await sb.exited.then(() => null, (e: unknown) => e);
  t.ok(err instanceof TsiboxError && err.code === 'DEVICE_ERROR', `DEVICE_ERROR (${String(err)})`);
  t.match((err as Error).message, /virtiofsd for the root .*kill-root .*(was killed by SIGKILL|exited with status) while the sandbox ran/);
  t.notOk(sb.running);
  t.ok(await waitFor(() => noneLeft(root), 5000), 'no virtiofsd, socket or directory left');
});

t.test('SIGKILL of the host process leaves no virtiofsd, socket or directory', { skip }, async (t) => {
  const root = busyboxRoot('sigkill-root');
  const child = spawn(process.execPath, [CHILD, root], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: runtime } });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const exited = new Promise<void>((r) => { child.once('close', () => { r(); }); });
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  t.ok(await waitFor(() => out.includes('ready') || child.exitCode !== null, 90_000), `the guest runs (stderr: ${err})`);
  const family = descendants(child.pid!);
  t.ok(processesMentioning(`source=${root}`).length >= 2, 'two virtiofsd (root and mount) run');
  t.equal(readdirSync(runtime).length, 2, 'their private directories exist while they run');
  child.kill('SIGKILL');
  await exited;
  t.ok(await waitFor(() => family.every((p) => !alive(p)) && noneLeft(root), 10_000), 'everything is gone');
  t.same(family.filter(alive), [], 'no process of the sandbox is left');
  t.same(readdirSync(runtime), [], 'no private directory or socket is left');
});

t.test('tsibox run --root --root-read-only --mount (a mount point under /tmp, a tmpfs, needs no writable root)', { skip }, async (t) => {
  const root = busyboxRoot('cli-root');
  const m = join(work, 'cli-mount');
  mkdirSync(m);
  writeFileSync(join(m, 'f'), 'mounted\n');
  const r = spawnSync(process.execPath, [BIN, 'run', '--engine', E2E_ENGINE, '--root', root, '--root-read-only', '--mount', `${m}:/tmp/m:ro`, '--', 'sh', '-c', 'echo 42; cat /tmp/m/f; exit 3'], { encoding: 'utf8', timeout: 90_000 });
  t.equal(r.status, 3, `exit status passed through (stderr: ${r.stderr})`);
  t.equal(r.stdout, '42\nmounted\n');
  const bad = spawnSync(process.execPath, [BIN, 'run', '--root', join(work, 'missing'), '--', 'true'], { encoding: 'utf8', timeout: 30_000 });
  t.equal(bad.status, 1);
  t.match(bad.stderr, /root: .*missing cannot be used \(it does not exist\) \[INVALID_ARGUMENT\]/);
  const usage = spawnSync(process.execPath, [BIN, 'run', '--mount', 'nocolon', '--', 'true'], { encoding: 'utf8', timeout: 30_000 });
  t.equal(usage.status, 2);
  t.match(usage.stderr, /--mount wants HOST:GUEST\[:ro\]/);
  t.ok(await waitFor(() => noneLeft(root), 5000), 'no virtiofsd, socket or directory left');
});
