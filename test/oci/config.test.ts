// src/oci/config.ts: a bundle's config.json → the Sandbox plan; hostile input is refused
// with INVALID_ARGUMENT naming the field; what a VM cannot do is listed, not refused.
import t, { type Test } from 'tap';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadBundle, planContainer, MAX_CONFIG_BYTES, type OciPlan } from '../../src/oci/config.js';
import type { PathKind } from '../../src/oci/config-mounts.js';
import { TsiboxError } from '../../src/errors.js';
import { podmanConfig } from './podman-config.js';

const BUNDLE = '/var/lib/containers/storage/overlay-containers/abc/userdata';
const ROOTFS = '/var/lib/containers/storage/overlay/123/merged';
const USERDATA = '/run/containers/storage/overlay-containers/abc/userdata';
const VOLUME = '/srv/data';

/** What our fake host has: the rootfs, shm and the volume are directories; podman's files are files. */
function fakeKind(p: string): PathKind {
  if (p === ROOTFS || p === `${USERDATA}/shm` || p === VOLUME || p === `${BUNDLE}/rootfs`) return 'directory';
  if (['resolv.conf', 'hosts', 'hostname', '.containerenv'].some((f) => p === `${USERDATA}/${f}`)) return 'file';
  return 'missing';
}

function plan(config: unknown): OciPlan {
  return planContainer(config, BUNDLE, { pathKind: fakeKind });
}

function podman(over: Parameters<typeof podmanConfig>[1] = {}): Record<string, unknown> {
  return podmanConfig({ rootfs: ROOTFS, userdata: USERDATA, volume: VOLUME }, over);
}

/** The config with one edit applied to a fresh copy. */
function edited(edit: (c: any) => void): unknown {
  const c = JSON.parse(JSON.stringify(podman())) as unknown;
  edit(c);
  return c;
}

function refused(t: Test, config: unknown, field: RegExp, why?: string): void {
  let err: unknown = null;
  try {
    plan(config);
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof TsiboxError, why ?? `refused: ${String(field)}`);
  t.equal((err as TsiboxError).code, 'INVALID_ARGUMENT');
  t.match((err as Error).message, field);
}

t.test('podman\'s config maps to the Sandbox options', async (t) => {
  const p = plan(podman());
  t.equal(p.ociVersion, '1.0.2-dev');
  t.same(p.sandbox.argv, ['sh', '-c', 'echo hello; sleep 1000']);
  t.equal(p.sandbox.env['container'], 'podman');
  t.equal(p.sandbox.env['PATH'], '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin');
  t.equal(p.sandbox.workdir, '/');
  t.equal(p.sandbox.root, ROOTFS);
  t.notOk('rootReadOnly' in p.sandbox, 'root.readonly absent: read-write');
  t.same(p.sandbox.mounts, [{ hostPath: VOLUME, guestPath: '/data', readOnly: true }], 'the -v volume is a virtio-fs share, read-only from "ro"');
  t.notOk('tty' in p.sandbox);
  t.notOk('cpus' in p.sandbox, 'no size asked for: the default VM');
  t.notOk('memoryMiB' in p.sandbox);
  t.same(p.network, { mode: 'tsi', netnsPath: '/run/netns/netns-5f0c9c1e-8a5e-2b2d-1d7e-3f1a2b3c4d5e' });
  t.same(plan(edited((c) => { delete c.linux.namespaces.find((n: { type: string }) => n.type === 'network').path; })).network, { mode: 'tsi', newNetns: true }, 'a network namespace without a path: a new one (ctr without --cni)');
  t.same(plan(edited((c) => { c.linux.namespaces = c.linux.namespaces.filter((n: { type: string }) => n.type !== 'network'); })).network, { mode: 'tsi' }, 'none listed: the runtime\'s own (--network host)');
  t.same({ hostname: p.sandbox.hostname, user: p.sandbox.user, rlimits: p.sandbox.rlimits, engine: p.sandbox.engine }, {
    hostname: '6b1e1a0d3c2f',
    user: { uid: 0, gid: 0 },
    rlimits: [{ resource: 'NOFILE', cur: 1048576, max: 1048576 }, { resource: 'NPROC', cur: 4194304, max: 4194304 }],
    engine: 'auto',
  });
  t.same(p.fileBinds.map((b) => b.destination), ['/etc/resolv.conf', '/etc/hosts', '/etc/hostname', '/run/.containerenv']);
  t.same(p.skippedMounts.map((m) => `${m.type} ${m.destination}`), [
    'proc /proc', 'tmpfs /dev', 'sysfs /sys', 'devpts /dev/pts', 'mqueue /dev/mqueue', 'bind /dev/shm', 'cgroup /sys/fs/cgroup',
  ]);
  for (const m of p.skippedMounts) t.type(m.reason, 'string');
  t.equal(p.annotations['io.container.manager'], 'libpod', 'annotations pass through');
});

t.test('what a VM cannot honour is listed, never refused', async (t) => {
  const fields = plan(podman()).notHonoured.map((n) => n.field).sort();
  t.same(fields, [
    'linux.cgroupsPath', 'linux.maskedPaths', 'linux.readonlyPaths', 'linux.resources', 'linux.seccomp', 'linux.sysctl',
    'process.capabilities', 'process.oomScoreAdj', 'process.user.additionalGids', 'process.user.umask',
  ]);
  const withUserNs = plan(edited((c) => {
    c.linux.namespaces.push({ type: 'user' });
    c.linux.uidMappings = [{ containerID: 0, hostID: 100000, size: 65536 }];
    c.linux.namespaces[2].path = '/proc/1234/ns/ipc';
  })).notHonoured.map((n) => n.field);
  t.ok(withUserNs.includes('linux.namespaces[6]'), 'a user namespace');
  t.ok(withUserNs.includes('linux.uidMappings'));
  t.ok(withUserNs.includes('linux.namespaces[2].path'), 'joining another container\'s ipc namespace');
  const unknownLinux = plan(edited((c) => { c.linux.somethingNew = { a: 1 }; })).notHonoured.find((n) => n.field === 'linux.somethingNew');
  t.equal(unknownLinux?.reason, 'unknown to tsibox');
});

t.test('annotations size the VM and choose the network', async (t) => {
  const p = plan(podman({ annotations: { 'io.tsibox.cpus': '4', 'io.tsibox.memory': '2G', 'io.tsibox.network': 'passt', 'io.tsibox.policy': '/etc/tsibox/web.json' } }));
  t.equal(p.sandbox.cpus, 4);
  t.equal(p.sandbox.memoryMiB, 2048);
  t.equal(p.network.mode, 'passt');
  t.equal(p.network.policyFile, '/etc/tsibox/web.json');
  t.equal(plan(podman({ annotations: { 'io.tsibox.memory': '512' } })).sandbox.memoryMiB, 512);
  t.equal(plan(podman({ annotations: { 'io.tsibox.network': 'none' } })).network.mode, 'none');
  refused(t, podman({ annotations: { 'io.tsibox.cpus': '0' } }), /annotations\["io\.tsibox\.cpus"\] must be 1\.\.16/);
  refused(t, podman({ annotations: { 'io.tsibox.cpus': 'two' } }), /io\.tsibox\.cpus.*whole number/);
  refused(t, podman({ annotations: { 'io.tsibox.memory': '16' } }), /io\.tsibox\.memory.*32\.\.65536/);
  refused(t, podman({ annotations: { 'io.tsibox.memory': '1T' } }), /io\.tsibox\.memory/);
  refused(t, podman({ annotations: { 'io.tsibox.network': 'host' } }), /io\.tsibox\.network.*tsi, passt or none/);
  refused(t, podman({ annotations: { 'io.tsibox.policy': 'web.json' } }), /io\.tsibox\.policy.*absolute/);
  refused(t, podman({ annotations: { 'io.tsibox.network': 'none', 'io.tsibox.policy': '/p.json' } }), /io\.tsibox\.policy/);
  t.equal(plan(podman({ annotations: { 'io.tsibox.engine': 'qemu' } })).sandbox.engine, 'qemu');
  refused(t, podman({ annotations: { 'io.tsibox.engine': 'firecracker' } }), /io\.tsibox\.engine.*auto, kvm or qemu/);
});

t.test('linux.resources size the VM when no annotation does', async (t) => {
  const p = plan(edited((c) => {
    c.linux.resources.memory = { limit: 512 * 1024 * 1024 + 1 };
    c.linux.resources.cpu = { quota: 150000, period: 100000, shares: 1024 };
  }));
  t.equal(p.sandbox.memoryMiB, 513, 'bytes rounded up to MiB');
  t.equal(p.sandbox.cpus, 2, 'quota/period rounded up');
  const tiny = plan(edited((c) => { c.linux.resources = { memory: { limit: 6 * 1024 * 1024 } }; }));
  t.notOk('memoryMiB' in tiny.sandbox);
  t.ok(tiny.notHonoured.some((n) => n.field === 'linux.resources.memory.limit'), 'a limit below the VM minimum is noted');
  t.notOk(tiny.notHonoured.some((n) => n.field === 'linux.resources'), 'memory.limit alone is fully used');
  const ann = plan(edited((c) => {
    c.linux.resources.memory = { limit: 512 * 1024 * 1024 };
    c.annotations['io.tsibox.memory'] = '1024';
  }));
  t.equal(ann.sandbox.memoryMiB, 1024, 'the annotation wins');
});

t.test('terminal, read-only root, user, relative root, rlimit infinity', async (t) => {
  const tty = plan(podman({ terminal: true }));
  t.same(tty.sandbox.tty, { cols: 80, rows: 24 });
  t.same(plan(edited((c) => { c.process.terminal = true; c.process.consoleSize = { height: 50, width: 132 }; })).sandbox.tty, { cols: 132, rows: 50 });
  t.equal(plan(edited((c) => { c.root.readonly = true; })).sandbox.rootReadOnly, true);
  t.same(plan(edited((c) => { c.process.user = { uid: 1000, gid: 100 }; })).sandbox.user, { uid: 1000, gid: 100 });
  t.equal(plan(edited((c) => { c.root.path = 'rootfs'; })).sandbox.root, `${BUNDLE}/rootfs`, 'root.path relative to the bundle');
  const inf = plan(edited((c) => {
    // 2^64-1 as podman writes RLIM_INFINITY; JSON.parse rounds it to 2^64.
    c.process.rlimits = JSON.parse('[{"type":"RLIMIT_CORE","soft":18446744073709551615,"hard":18446744073709551615}]');
  }));
  t.same(inf.sandbox.rlimits, [{ resource: 'CORE', cur: 'unlimited', max: 'unlimited' }]);
  const proto = plan(edited((c) => { c.process.env.push('__proto__=x'); }));
  t.equal(Object.getPrototypeOf(proto.sandbox.env), Object.prototype, 'a "__proto__" variable does not replace the prototype');
  t.equal(Object.getOwnPropertyDescriptor(proto.sandbox.env, '__proto__')?.value, 'x');
  t.equal(plan(edited((c) => { c.process.env.push('A=1', 'A=2'); })).sandbox.env['A'], '2', 'the last of a duplicate wins');
});

t.test('malformed fields are refused, naming the field', async (t) => {
  refused(t, [], /\(top level\) must be an object/);
  refused(t, edited((c) => { delete c.ociVersion; }), /ociVersion must be a string/);
  refused(t, edited((c) => { c.ociVersion = '2.0.0'; }), /ociVersion must be a 1\.x version/);
  refused(t, edited((c) => { delete c.root; }), /root must be an object/);
  refused(t, edited((c) => { c.root.path = '/nonexistent'; }), /root\.path "\/nonexistent" is not a directory/);
  refused(t, edited((c) => { c.root.readonly = 'yes'; }), /root\.readonly must be true or false/);
  refused(t, edited((c) => { delete c.process; }), /process must be an object/);
  refused(t, edited((c) => { c.process.args[1] = 5; }), /process\.args\[1\] must be a string, got number/);
  refused(t, edited((c) => { c.process.args = []; }), /process\.args must name a program/);
  refused(t, edited((c) => { c.process.args = new Array(5000).fill('x'); }), /process\.args has 5000 entries, more than the 4096 allowed/);
  refused(t, edited((c) => { c.process.args[0] = 'a\u0000b'; }), /process\.args\[0\] contains a NUL/);
  refused(t, edited((c) => { c.process.args[0] = 'x'.repeat(200_000); }), /process\.args\[0\] is longer than/);
  refused(t, edited((c) => { c.process.env[2] = 'NOEQUALS'; }), /process\.env\[2\] must be KEY=VALUE/);
  refused(t, edited((c) => { c.process.env[0] = '=x'; }), /process\.env\[0\] must be KEY=VALUE/);
  refused(t, edited((c) => { c.process.cwd = 'relative'; }), /process\.cwd must be an absolute path/);
  refused(t, edited((c) => { c.process.user.uid = -1; }), /process\.user\.uid must be 0\.\./);
  refused(t, edited((c) => { c.process.user.gid = 1.5; }), /process\.user\.gid must be a whole number/);
  refused(t, edited((c) => { c.process.rlimits[0].type = 'RLIMIT_BOGUS'; }), /process\.rlimits\[0\]\.type is not a Linux resource limit/);
  refused(t, edited((c) => { c.process.rlimits[1].soft = -1; }), /process\.rlimits\[1\]\.soft/);
  refused(t, edited((c) => { c.process.rlimits[1].soft = 2 ** 60; }), /process\.rlimits\[1\]\.soft is too large to be exact/);
  refused(t, edited((c) => { c.process.consoleSize = { width: 0, height: 10 }; c.process.terminal = true; }), /process\.consoleSize\.width/);
  refused(t, edited((c) => { c.hostname = 'bad host'; }), /hostname is not a host name/);
  refused(t, edited((c) => { c.hostname = 'h'.repeat(65); }), /hostname is longer than 64/);
  refused(t, edited((c) => { c.annotations = { a: 1 }; }), /annotations\["a"\] must be a string/);
  refused(t, edited((c) => { c.mounts = {}; }), /mounts must be an array/);
  refused(t, edited((c) => { c.mounts[0].destination = 7; }), /mounts\[0\]\.destination must be a string/);
  refused(t, edited((c) => { c.mounts[5].source = '/gone/resolv.conf'; }), /mounts\[5\]\.source "\/gone\/resolv\.conf" does not exist/);
  refused(t, edited((c) => { delete c.mounts[5].source; }), /mounts\[5\]\.source is required for a bind mount/);
  refused(t, edited((c) => { c.mounts[5].options = 'bind'; }), /mounts\[5\]\.options must be an array/);
  refused(t, edited((c) => { c.linux.namespaces[0].type = 'time-travel'; }), /linux\.namespaces\[0\]\.type is not a namespace type/);
  refused(t, edited((c) => { c.linux.namespaces.push({ type: 'pid' }); }), /linux\.namespaces lists pid twice/);
  refused(t, edited((c) => { c.linux.namespaces[1].path = 'netns'; }), /linux\.namespaces\[1\]\.path must be an absolute path/);
  refused(t, edited((c) => { c.linux.resources.memory = { limit: 'lots' }; }), /linux\.resources\.memory\.limit must be a whole number/);
  refused(t, edited((c) => { c.linux.cgroupsPath = 5; }), /linux\.cgroupsPath must be a string/);
});

t.test('more directory binds than a VM takes is refused; the same guest path twice too', async (t) => {
  const many = edited((c) => {
    for (let i = 0; i < 9; i++) c.mounts.push({ destination: `/v${i}`, type: 'bind', source: VOLUME, options: ['rbind'] });
    c.mounts = c.mounts.filter((m: { destination: string }) => m.destination !== '/data');
  });
  refused(t, many, /mounts has 9 directory bind mounts and file binds \(one more share\); a tsibox VM takes at most 8 shares/);
  const eightAndFiles = edited((c) => {
    for (let i = 0; i < 7; i++) c.mounts.push({ destination: `/v${i}`, type: 'bind', source: VOLUME, options: ['rbind'] });
  });
  refused(t, eightAndFiles, /has 8 directory bind mounts and file binds/, '8 volumes plus the file-bind share do not fit');
  refused(t, edited((c) => { c.mounts.push({ destination: '/data/', type: 'bind', source: VOLUME, options: ['bind'] }); }), /mounts binds two directories at \/data/);
  refused(t, edited((c) => { c.mounts.push({ destination: '/', type: 'bind', source: VOLUME, options: ['bind'] }); }), /is "\/": the root is root\.path/);
  const tmpfs = plan(edited((c) => { c.mounts.push({ destination: '/scratch', type: 'tmpfs', source: 'tmpfs', options: [] }); }));
  t.match(tmpfs.skippedMounts.find((m) => m.destination === '/scratch'), { type: 'tmpfs', reason: /not honoured/ }, 'a tmpfs elsewhere is skipped and said so');
});

t.test('loadBundle reads config.json from disk, bounded', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-oci-bundle-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const userdata = join(dir, 'userdata');
  mkdirSync(join(dir, 'rootfs'));
  mkdirSync(join(userdata, 'shm'), { recursive: true });
  for (const f of ['resolv.conf', 'hosts', 'hostname', '.containerenv']) writeFileSync(join(userdata, f), '');
  writeFileSync(join(dir, 'config.json'), JSON.stringify(podmanConfig({ rootfs: 'rootfs', userdata })));
  const p = loadBundle(dir);
  t.equal(p.bundle, dir);
  t.equal(p.sandbox.root, join(dir, 'rootfs'));
  t.equal(p.fileBinds.length, 4, 'real stat: the userdata files are files');
  t.ok(p.skippedMounts.some((m) => m.destination === '/dev/shm'));

  writeFileSync(join(dir, 'config.json'), ' '.repeat(MAX_CONFIG_BYTES + 1));
  t.throws(() => loadBundle(dir), { code: 'INVALID_ARGUMENT', message: /more than the 4194304 allowed/ });
  writeFileSync(join(dir, 'config.json'), '{"ociVersion": ');
  t.throws(() => loadBundle(dir), { code: 'INVALID_ARGUMENT', message: /config\.json: not valid JSON/ });
  writeFileSync(join(dir, 'config.json'), '['.repeat(1_000_000) + ']'.repeat(1_000_000));
  t.throws(() => loadBundle(dir), { code: 'INVALID_ARGUMENT' }, 'deep nesting is a refusal, whatever JSON.parse makes of it');
  rmSync(join(dir, 'config.json'));
  t.throws(() => loadBundle(dir), { code: 'INVALID_ARGUMENT', message: /config\.json: cannot open/ });
  mkdirSync(join(dir, 'config.json'));
  t.throws(() => loadBundle(dir), { code: 'INVALID_ARGUMENT', message: /not a regular file/ });
});
