// root / rootReadOnly / mounts: option checks, init's tokens, the CLI flags, virtiofsd's
// argv, and the KVM engine's refusal before anything boots. No VM here
// (test/e2e/root-dir.test.ts boots them).
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { checkDirectoryShares, checkGuestBinds, MAX_MOUNTS, type GuestBind } from '../../src/engine/directory-share-options.js';
import { virtiofsdArgs, virtiofsdArgv } from '../../src/engine/virtiofsd.js';
import { checkDeviceSlots } from '../../src/engine/device-slots.js';
import { buildCmdline, initTokens, type InitConfig } from '../../src/guest/cmdline.js';
import { ensureInitramfs } from '../../src/guest/index.js';
import { parseMount, rootOptions } from '../../src/cli/root-flags.js';
import { UsageError } from '../../src/cli/args.js';
import { Sandbox } from '../../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'tsibox-share-unit-'));
const file = join(dir, 'a-file');
writeFileSync(file, 'x');
t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });

t.test('checkDirectoryShares: tags, normalised guest paths, nothing to share', async (t) => {
  t.equal(checkDirectoryShares({}), null);
  t.equal(checkDirectoryShares({ mounts: [] }), null);
  t.same(checkDirectoryShares({ root: dir, rootReadOnly: true, mounts: [{ hostPath: dir, guestPath: '/data/./x/' }, { hostPath: dir, guestPath: '/ro', readOnly: true }] }), {
    root: { hostPath: dir, tag: 'tsibox-root', readOnly: true },
    mounts: [
      { hostPath: dir, guestPath: '/data/x', tag: 'tsibox-m0', readOnly: false },
      { hostPath: dir, guestPath: '/ro', tag: 'tsibox-m1', readOnly: true },
    ],
  });
  t.same(checkDirectoryShares({ mounts: [{ hostPath: dir, guestPath: '/m' }] })?.root, null, 'mounts without root go into the default root');
});

t.test('checkDirectoryShares refuses bad options with INVALID_ARGUMENT naming them', async (t) => {
  const bad: Array<[Parameters<typeof checkDirectoryShares>[0], RegExp]> = [
    [{ root: 'relative/dir' }, /root must be an absolute host path/],
    [{ root: join(dir, 'missing') }, /root: .*missing cannot be used \(it does not exist\)/],
    [{ root: file }, /root: .*a-file is not a directory/],
    [{ root: '' }, /root must be a host directory path/],
    [{ rootReadOnly: true }, /rootReadOnly needs root/],
    [{ root: dir, rootReadOnly: 'yes' as unknown as boolean }, /rootReadOnly must be a boolean/],
    [{ mounts: [{ hostPath: dir, guestPath: 'rel' }] }, /mounts\[0\]\.guestPath must be an absolute guest path/],
    [{ mounts: [{ hostPath: dir, guestPath: '/' }] }, /cannot be "\/"/],
    [{ mounts: [{ hostPath: dir, guestPath: '/a/../b' }] }, /must not contain "\.\."/],
    [{ mounts: [{ hostPath: join(dir, 'nope'), guestPath: '/a' }] }, /mounts\[0\]\.hostPath: .*nope cannot be used/],
    [{ mounts: [{ hostPath: dir, guestPath: '/a' }, { hostPath: dir, guestPath: '/a/' }] }, /guest path \/a is given twice/],
    [{ mounts: Array.from({ length: MAX_MOUNTS + 1 }, (_, i) => ({ hostPath: dir, guestPath: `/m${i}` })) }, /at most 8 mounts/],
    [{ mounts: {} as unknown as [] }, /mounts must be an array/],
  ];
  for (const [opts, msg] of bad) t.throws(() => checkDirectoryShares(opts), { code: 'INVALID_ARGUMENT', message: msg }, JSON.stringify(opts));
});

t.test("init's tokens: tsibox.root=TAG,ro|rw and one tsibox.mount=TAG,ro|rw,PATH per mount", async (t) => {
  t.same(initTokens({ root: { tag: 'tsibox-root' } }), ['tsibox.root=tsibox-root,rw']);
  t.same(initTokens({ root: { tag: 'tsibox-root', readOnly: true }, mounts: [{ tag: 'tsibox-m0', path: '/a b,c' }, { tag: 'tsibox-m1', path: '/r', readOnly: true }] }), [
    'tsibox.root=tsibox-root,ro', 'tsibox.mount=tsibox-m0,rw,/a%20b%2Cc', 'tsibox.mount=tsibox-m1,ro,/r',
  ]);
  t.same(initTokens({}), [], 'nothing without them: the command line stays as it was');
});

t.test('virtiofsd argv: the listening socket is fd 3, the source escaped for its -o parser', async (t) => {
  t.same(virtiofsdArgs('/srv/root'), ['--fd=3', '-o', 'source=/srv/root', '-o', 'cache=auto', '-o', 'sandbox=namespace', '-o', 'modcaps=-mknod', '-o', 'log_level=warn']);
  t.same(virtiofsdArgv('/v', '/srv/root', false), ['/v', ...virtiofsdArgs('/srv/root')], 'a writable share: virtiofsd itself');
  const ro = virtiofsdArgv('/v', '/srv/root', true);
  t.same(ro.slice(0, 6), ['unshare', '--mount', '--propagation', 'private', '--', 'bash'], 'a read-only share: in a mount namespace of its own');
  t.same(ro.slice(-9), ['/srv/root', '/v', ...virtiofsdArgs('/srv/root')].slice(-9));
  t.equal(virtiofsdArgs('/a,b\\c')[2], 'source=/a\\,b\\\\c');
});

t.test('CLI: --root, --root-read-only, --mount HOST:GUEST[:ro]', async (t) => {
  t.same(rootOptions({}), {});
  t.same(rootOptions({ root: '/r', 'root-read-only': true, mount: ['/h:/g', '/h2:/g2:ro', '/h3:/g3:rw'] }), {
    root: '/r', rootReadOnly: true,
    mounts: [{ hostPath: '/h', guestPath: '/g' }, { hostPath: '/h2', guestPath: '/g2', readOnly: true }, { hostPath: '/h3', guestPath: '/g3' }],
  });
  t.throws(() => rootOptions({ 'root-read-only': true }), UsageError);
  for (const bad of ['/h', '/h:/g:rx', ':/g', '/h:', '/a:/b:/c:ro']) t.throws(() => parseMount(bad), UsageError, bad);
});

t.test('the KVM engine takes root and mounts (its vhost-user front end); a bad path is named first', async (t) => {
  // Dummy kernel/initrd paths: these runs fail later (no usable KVM here, no kernel), never with a refusal of the options.
  const base = { argv: ['true'], engine: 'kvm' as const, kernel: join(dir, 'no-kernel'), initrd: join(dir, 'no-initrd') };
  for (const opts of [{ root: dir }, { mounts: [{ hostPath: dir, guestPath: '/m' }] }]) {
    const err: unknown = await Sandbox.run({ ...base, ...opts }).then(() => null, (e: unknown) => e);
    t.notMatch(String((err as Error | null)?.message), /need engine 'qemu'|no vhost-user front end/, `not refused: ${String(err)}`);
  }
  await t.rejects(Sandbox.run({ ...base, root: join(dir, 'missing') }), { code: 'INVALID_ARGUMENT', message: /missing/ }, 'a bad path is named first');
});

t.test('init parses tsibox.root and tsibox.mount as the encoder writes them (init --parse)', async (t) => {
  const init = join(dirname(await ensureInitramfs()), 'init');
  const parse = (cfg: InitConfig): string[] => execFileSync(init, ['--parse', buildCmdline('quiet', cfg)], { encoding: 'utf8' }).trim().split('\n');
  const hex = (s: string): string => Buffer.from(s).toString('hex');
  t.same(parse({ root: { tag: 'tsibox-root', readOnly: true }, mounts: [{ tag: 'tsibox-m0', path: '/a b,c' }, { tag: 'tsibox-m1', path: '/r', readOnly: true }] }).slice(-8), [
    `root ${hex('tsibox-root')}`, 'root_ro 1',
    `mount ${hex('tsibox-m0')}`, `mount_path ${hex('/a b,c')}`, 'mount_ro 0',
    `mount ${hex('tsibox-m1')}`, `mount_path ${hex('/r')}`, 'mount_ro 1',
  ]);
  t.same(parse({ binds: [{ source: '/run/files/0', path: '/etc/a b,c', readOnly: true }, { source: '/x', path: '/y' }] }).slice(-6), [
    `bind ${hex('/run/files/0')}`, `bind_path ${hex('/etc/a b,c')}`, 'bind_ro 1',
    `bind ${hex('/x')}`, `bind_path ${hex('/y')}`, 'bind_ro 0',
  ]);
  for (const bad of ['tsibox.root=x', 'tsibox.root=x,rx', 'tsibox.mount=t,ro', 'tsibox.mount=t,rw,relative', 'tsibox.root=,ro', 'tsibox.bind=rel,ro,/p', 'tsibox.bind=/s,ro,rel', 'tsibox.bind=/s,ro']) {
    const r = spawnSync(init, ['--parse', bad], { encoding: 'utf8' });
    t.equal(r.status, 125, bad);
    t.match(r.stderr, /tsibox\.(root|mount|bind): want/, bad);
  }
});

t.test('binds: absolute guest paths without NUL, bounded in length and count', (t) => {
  t.same(checkGuestBinds([{ source: '/run/f/0', path: '/etc/hosts', readOnly: true }, { source: '/a', path: '/b', readOnly: false }]),
    [{ source: '/run/f/0', path: '/etc/hosts', readOnly: true }, { source: '/a', path: '/b' }]);
  for (const [bad, msg] of [
    [{ source: 'rel', path: '/b' }, /binds\[0\]\.source must be an absolute guest path/],
    [{ source: '/a', path: '/b\0c' }, /binds\[0\]\.path contains a NUL byte/],
    [{ source: '/a', path: `/${'x'.repeat(4096)}` }, /binds\[0\]\.path is longer than 4096 bytes/],
    [{ source: '/a' }, /binds\[0\]\.path must be an absolute guest path, got undefined/],
  ] as const) {
    t.throws(() => checkGuestBinds([bad as GuestBind]), { code: 'INVALID_ARGUMENT', message: msg });
  }
  t.throws(() => checkGuestBinds(Array.from({ length: 65 }, () => ({ source: '/a', path: '/b' }))), { code: 'INVALID_ARGUMENT', message: /at most 64/ });
  t.end();
});

t.test('guest paths that init mounts itself are refused', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-share-'));
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });
  for (const guestPath of ['/proc', '/sys/kernel', '/dev', '/dev/shm', '//proc/']) {
    t.throws(() => checkDirectoryShares({ mounts: [{ hostPath: dir, guestPath }] }), { code: 'INVALID_ARGUMENT', message: /init mounts proc/ }, guestPath);
  }
  t.ok(checkDirectoryShares({ mounts: [{ hostPath: dir, guestPath: '/devices' }] }), '/devices is fine');
  t.end();
});

t.test('device slots: past the machine\'s virtio-mmio transports, INVALID_ARGUMENT with the numbers', (t) => {
  t.doesNotThrow(() => { checkDeviceSlots('qemu', { shares: 4, disks: 0, balloon: true, net: false }); }, '4 shares fit QEMU with the balloon');
  t.throws(() => { checkDeviceSlots('qemu', { shares: 4, disks: 1, balloon: true, net: false }); }, { code: 'INVALID_ARGUMENT', message: /8 virtio-mmio slots.*take 4, leaving 4.*balloon: false frees one slot/ });
  t.doesNotThrow(() => { checkDeviceSlots('qemu', { shares: 4, disks: 1, balloon: false, net: false }); }, 'without the balloon one more fits');
  t.throws(() => { checkDeviceSlots('qemu', { shares: 2, disks: 2, balloon: true, net: true }); }, { code: 'INVALID_ARGUMENT', message: /virtio-net/ });
  t.doesNotThrow(() => { checkDeviceSlots('kvm', { shares: 9, disks: 5, balloon: true, net: true }); }, 'the KVM engine has 19 slots');
  t.throws(() => { checkDeviceSlots('kvm', { shares: 9, disks: 6, balloon: true, net: true }); }, { code: 'INVALID_ARGUMENT', message: /19 virtio-mmio slots/ });
  t.end();
});
