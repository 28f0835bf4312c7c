// src/oci/cli.ts: `tsibox oci`, called the way podman (conmon) and containerd (the runc
// shim) call runc: arguments, the bundle and the state are checked before anything runs.
// A container's whole life (a real monitor process and VM) is test/e2e/oci-runtime.test.ts.
import t from 'tap';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runOci, parseGlobals } from '../../src/oci/cli.js';
import { parseSignal, parseFlags } from '../../src/oci/flags.js';
import { StateStore } from '../../src/oci/state-store.js';
import { runCli } from '../../src/cli/run.js';
import { capture, tsibox } from '../cli/helpers.js';
import { podmanConfig } from './podman-config.js';

async function oci(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = capture();
  const stderr = capture();
  const code = await runOci(argv, { stdout, stderr });
  return { code, stdout: stdout.text(), stderr: stderr.text() };
}

/** A state root and a bundle shaped like podman's (real files), removed afterwards. */
function setup(t: { teardown(fn: () => void): void }, over: Parameters<typeof podmanConfig>[1] = {}): { root: string; bundle: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-oci-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bundle = join(dir, 'bundle');
  const userdata = join(dir, 'userdata');
  mkdirSync(join(bundle, 'rootfs'), { recursive: true });
  mkdirSync(join(userdata, 'shm'), { recursive: true });
  for (const f of ['resolv.conf', 'hosts', 'hostname', '.containerenv']) writeFileSync(join(userdata, f), '');
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(podmanConfig({ rootfs: join(bundle, 'rootfs'), userdata }, over)));
  return { root: join(dir, 'state'), bundle, dir };
}

const base = { bundle: '/b', configOciVersion: '1.0.2-dev', annotations: {} };

t.test('features: the runc features shape', async (t) => {
  const r = await oci(['features']);
  t.equal(r.code, 0, r.stderr);
  const f = JSON.parse(r.stdout) as Record<string, any>;
  t.equal(f['ociVersionMin'], '1.0.0');
  t.equal(f['ociVersionMax'], '1.0.2-dev');
  t.same(f['hooks'], [], 'hooks are not run yet, so none is claimed');
  t.ok(f['mountOptions'].includes('ro') && f['mountOptions'].includes('rbind'));
  t.same(f['linux'].namespaces, ['cgroup', 'ipc', 'mount', 'network', 'pid', 'uts'], 'no user namespace');
  t.same(f['linux'].cgroup, { v1: false, v2: false, systemd: false, systemdUser: false });
  t.equal(f['linux'].seccomp.enabled, false);
  t.match(f['annotations'], { 'io.tsibox.version': /^[0-9]/, 'io.tsibox.annotations': 'io.tsibox.cpus,io.tsibox.memory,io.tsibox.network,io.tsibox.policy,io.tsibox.engine' });
  t.equal((await oci(['features', 'extra'])).code, 2);
});

t.test('state prints the OCI state of a stored container', async (t) => {
  const { root } = setup(t);
  const store = new StateStore(root);
  store.create({ id: 'web', ...base, bundle: '/bundles/web', annotations: { a: 'b' } });
  store.update('web', 'created', { pid: process.pid });
  const r = await oci(['--root', root, 'state', 'web']);
  t.equal(r.code, 0, r.stderr);
  t.same(JSON.parse(r.stdout), { ociVersion: '1.0.2', id: 'web', status: 'created', pid: process.pid, bundle: '/bundles/web', annotations: { a: 'b' } });
  const missing = await oci(['--root', root, 'state', 'nope']);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /container nope does not exist/);
  t.equal((await oci(['--root', root, 'state'])).code, 2, 'no id');
  t.equal((await oci(['--root', root, 'state', '../etc'])).code, 1, 'an id that is a path');
});

t.test('containerd\'s global flags; errors go to --log as runc\'s JSON lines', async (t) => {
  const { root, dir } = setup(t);
  const log = join(dir, 'log.json');
  const r = await oci(['--root', root, '--log', log, '--log-format', 'json', '--systemd-cgroup', 'state', 'gone']);
  t.equal(r.code, 1);
  const line = JSON.parse(readFileSync(log, 'utf8').trim().split('\n').at(-1)!) as Record<string, string>;
  t.equal(line['level'], 'error');
  t.match(line['msg'], /container gone does not exist/);
  t.ok(!Number.isNaN(Date.parse(line['time']!)));
  await oci(['--root', root, '--log', log, 'state', 'gone2']);
  t.match(readFileSync(log, 'utf8'), /level=error msg="container gone2 does not exist/, 'text format by default');
  t.same(parseGlobals(['-root=/x', '--debug', 'state', 'a']).globals, { root: '/x', logFormat: 'text', debug: true }, 'Go flag spellings');
  t.same(parseGlobals(['state', 'a']).globals.root, '/run/tsibox-oci', 'the default root');
  t.equal((await oci(['--log-format', 'xml', 'features'])).code, 2);
  t.equal((await oci(['--root', 'rel', 'features'])).code, 2);
  t.equal((await oci(['--bogus', 'features'])).code, 2);
  t.equal((await oci(['frobnicate'])).code, 2);
  const exec = await oci(['exec', 'c1', 'sh']);
  t.equal(exec.code, 1, 'a runc subcommand we lack is a plain failure, not a usage error');
  t.match(exec.stderr, /^tsibox oci: tsibox-oci does not implement `exec` yet .*\[NOT_SUPPORTED\]\n$/);
  t.equal((await oci([])).code, 2);
  t.equal((await oci(['--help'])).code, 0);
  const v = await oci(['--version']);
  t.match(v.stdout, /^tsibox-oci version .*\nspec: 1\.0\.2-dev\n$/, 'podman info asks `runtime --version`');
});

t.test('create: the config and the arguments are checked before anything starts', async (t) => {
  const { root, bundle, dir } = setup(t);
  writeFileSync(join(bundle, 'config.json'), '{"ociVersion":"1.0.2-dev","root":{"path":"rootfs"},"process":{"args":[1],"cwd":"/"}}');
  const bad = await oci(['--root', root, 'create', '-b', bundle, 'c2']);
  t.equal(bad.code, 1);
  t.match(bad.stderr, /config\.json: process\.args\[0\] must be a string, got number \[INVALID_ARGUMENT\]/, 'the config is checked first');

  t.equal((await oci(['--root', root, 'create', '--bundle', bundle])).code, 2, 'no id');
  t.equal((await oci(['--root', root, 'create', '--bundle', bundle, 'a', 'b'])).code, 2, 'two ids');
  t.equal((await oci(['--root', root, 'create', '--frob', 'a'])).code, 2);
  t.equal((await oci(['--root', root, 'create', '--preserve-fds', 'x', 'a'])).code, 2);
  const fresh = setup(t);
  const long = await oci(['--root', join(dir, 'x'.repeat(100)), 'create', '--bundle', fresh.bundle, 'c3']);
  t.match(long.stderr, /control socket path .* longer than the 107 bytes.*\[INVALID_ARGUMENT\]/, 'a state path too long for a unix socket fails at create');
  t.notOk(existsSync(join(root, 'c2')), 'no state directory for a container that was not made');
});

t.test('create with a terminal needs --console-socket (podman -t), and only then', async (t) => {
  const { root, bundle } = setup(t, { terminal: true });
  const without = await oci(['--root', root, 'create', '--bundle', bundle, 'c']);
  t.match(without.stderr, /needs --console-socket/);
  t.equal(without.code, 1);
  t.match((await oci(['--root', root, 'create', '--bundle', bundle, '--console-socket', 'rel/sock', 'c'])).stderr, /--console-socket must be an absolute path/);
  const plain = setup(t);
  const stray = await oci(['--root', plain.root, 'create', '--bundle', plain.bundle, '--console-socket', '/run/x.sock', 'c']);
  t.match(stray.stderr, /--console-socket given but process\.terminal is false/);
});

t.test('create refuses an id that exists', async (t) => {
  const { root, bundle } = setup(t);
  new StateStore(root).create({ id: 'dup', ...base });
  const r = await oci(['--root', root, 'create', '--bundle', bundle, 'dup']);
  t.equal(r.code, 1);
  t.match(r.stderr, /container dup already exists \[INVALID_STATE\]/);
});

t.test('start and kill: the state is checked, then the monitor is asked', async (t) => {
  const { root } = setup(t);
  const store = new StateStore(root);
  store.create({ id: 'c', ...base });
  store.update('c', 'created', { pid: process.pid }); // a live pid, but no monitor listens
  t.match((await oci(['--root', root, 'start', 'c'])).stderr, /container monitor is not running .*\[OCI_MONITOR\]/);
  t.equal(store.read('c')?.status, 'created', 'a start that did not reach the monitor changes nothing');
  t.match((await oci(['--root', root, 'kill', 'c', '15'])).stderr, /\[OCI_MONITOR\]/);
  t.equal((await oci(['--root', root, 'kill', 'c', 'SIGFOO'])).code, 2);
  store.update('c', 'running');
  t.match((await oci(['--root', root, 'start', 'c'])).stderr, /cannot start container c: it is running, not created \[INVALID_STATE\]/);
  t.match((await oci(['--root', root, 'start', 'nope'])).stderr, /container nope does not exist/);
  t.match((await oci(['--root', root, 'kill', 'nope', '9'])).stderr, /container nope does not exist/);
  t.notOk(existsSync(join(root, 'nope.lock')), 'a missing container leaves no lock file');
  store.update('c', 'stopped');
  t.match((await oci(['--root', root, 'kill', 'c', '9'])).stderr, /\[INVALID_STATE\]/, 'a stopped container cannot be signalled');
});

t.test('delete: stopped or missing (--force); a live one needs --force', async (t) => {
  const { root } = setup(t);
  const store = new StateStore(root);
  t.equal((await oci(['--root', root, 'delete', '--force', 'never-was'])).code, 0, 'runc: --force on a missing container succeeds');
  t.match((await oci(['--root', root, 'delete', 'never-was'])).stderr, /does not exist/);
  store.create({ id: 'done', ...base });
  store.update('done', 'created', { pid: 2 ** 22 }); // no such pid: it reads as stopped
  const r = await oci(['--root', root, 'delete', 'done']);
  t.equal(r.code, 0, r.stderr);
  t.equal(store.read('done'), null);
  t.notOk(existsSync(join(root, 'done.lock')));
  store.create({ id: 'live', ...base });
  store.update('live', 'created', { pid: process.pid });
  store.update('live', 'running');
  t.match((await oci(['--root', root, 'delete', 'live'])).stderr, /cannot delete container live: it is running/);
  t.not(store.read('live'), null, 'still there');
});

t.test('flags and signals, runc style', async (t) => {
  t.same(parseFlags(['--force=true', 'id'], { force: { type: 'boolean' } }), { flags: { force: true }, positionals: ['id'] });
  t.same(parseFlags(['id', '-f=false'], { force: { type: 'boolean', short: 'f' } }), { flags: { force: false }, positionals: ['id'] });
  t.throws(() => parseFlags(['--force=yes'], { force: { type: 'boolean' } }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => parseFlags(['-b'], { bundle: { type: 'string', short: 'b' } }), { message: /needs a value/ });
  t.throws(() => parseFlags(['--b', '1', '--b', '2'], { b: { type: 'string' } }), { message: /given twice/ });
  t.throws(() => parseFlags(['--__proto__', 'x'], {}), { message: /unknown flag/ });
  t.same(parseFlags(['a', '--', '--b'], { b: { type: 'boolean' } }).positionals, ['a', '--b']);
  for (const [raw, n] of [['9', 9], ['SIGKILL', 9], ['kill', 9], ['TERM', 15], ['sigusr1', 10], ['64', 64], ['WINCH', 28]] as const) t.equal(parseSignal(raw), n, raw);
  for (const bad of ['0', '65', 'SIGNOPE', '', '-9', '__proto__', 'constructor']) t.throws(() => parseSignal(bad), { code: 'INVALID_ARGUMENT' }, JSON.stringify(bad));
});

t.test('`tsibox oci` through the CLI: raw runc arguments pass through', async (t) => {
  const stdout = capture();
  const stderr = capture();
  t.equal(await runCli(['oci', '--systemd-cgroup', 'features'], { stdout, stderr }), 0, stderr.text());
  t.equal(JSON.parse(stdout.text()).ociVersionMax, '1.0.2-dev');
  const help = capture();
  await runCli(['help'], { stdout: help, stderr: capture() });
  t.match(help.text(), /\n {2}oci +the OCI runtime/);
  const bin = await tsibox(['oci', '--version']);
  t.equal(bin.code, 0, bin.stderr);
  t.match(bin.stdout, /^tsibox-oci version/);
});
