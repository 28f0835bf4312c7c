/**
 * End to end: host image files as guest disks (`disks`, `rootDisk`; docs/disks.md),
 * each served by a qemu-storage-daemon as a vhost-user-blk back end. Images, and the
 * daemons' sockets and private directories, live under a TMPDIR of this test's own, so
 * "nothing is left" can be checked exactly. Prints the guest's write throughput. Runs
 * under either engine (TSIBOX_E2E_ENGINE; under KVM the devices are our vhost-user
 * front end's virtio-blk).
 */
import t from 'tap';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox, TsiboxError } from '../../src/index.js';
import { findStorageDaemon } from '../../src/engine/disks.js';
import { alive, descendants, killAll, processesMentioning, waitFor } from '../helpers/processes.js';
import { E2E_ENGINE, e2ePrerequisites } from './prerequisites.js';

const BUSYBOX = '/bin/busybox';
const BIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const CHILD = fileURLToPath(new URL('./disks-child.js', import.meta.url));
const MiB = 1024 * 1024;

const has = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
// Six subtests with eight boots under TCG, on a shared 2-core machine (under KVM: in
// the nested SVM host, itself TCG).
t.setTimeout(E2E_ENGINE === 'kvm' ? 540_000 : 400_000);
const pre = await e2ePrerequisites(t);
const skip = pre.skip !== false ? pre.skip
  : findStorageDaemon() === undefined ? 'qemu-storage-daemon is not installed (Debian: qemu-system-common)'
    : !has('qemu-img') ? 'qemu-img is not installed (Debian: qemu-utils)'
      : !has('mkfs.ext4') || !has('debugfs') ? 'mkfs.ext4 / debugfs are not installed (Debian: e2fsprogs)'
        : spawnSync(BUSYBOX, ['--list']).status !== 0 ? `${BUSYBOX} (Debian: busybox-static) is missing`
          : false;

// The daemons' private directories go under this test's own TMPDIR (os.tmpdir() reads it).
const work = mkdtempSync(join(tmpdir(), 'tsibox-disks-test-'));
const runtime = join(work, 'runtime');
mkdirSync(runtime);
process.env['TMPDIR'] = runtime;
t.teardown(() => { rmSync(work, { recursive: true, force: true }); });

const text = (b: Buffer | undefined): string => b?.toString('utf8') ?? '';
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A sparse raw image of `mib` MiB. */
function rawImage(name: string, mib: number): string {
  const p = join(work, name);
  execFileSync('truncate', ['-s', `${mib}M`, p]);
  return p;
}

function qcow2Image(name: string, mib: number): string {
  const p = join(work, name);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', p, `${mib}M`]);
  return p;
}

/** The first `bytes` of a qcow2 image's guest-visible contents. */
function qcow2Contents(p: string, bytes: number): Buffer {
  const out = join(work, 'convert.raw');
  execFileSync('qemu-img', ['convert', '-O', 'raw', p, out]);
  try {
    return readFileSync(out).subarray(0, bytes);
  } finally {
    rmSync(out);
  }
}

function noneLeft(image: string): boolean {
  return processesMentioning(`filename=${image}`).length === 0 && readdirSync(runtime).length === 0;
}

/** Parses "name start end" lines (guest /proc/uptime seconds) into MiB/s for `mib`. */
function rates(out: string, mib: number): Record<string, number> {
  const r: Record<string, number> = {};
  for (const m of out.matchAll(/^time (\S+) ([\d.]+) ([\d.]+)$/gm)) r[m[1]!] = Math.round(mib / Math.max(0.01, Number(m[3]) - Number(m[2])));
  return r;
}

t.test('64 MiB written in the guest reach raw and qcow2 images; a read-only disk refuses writes', { skip }, async (t) => {
  const raw = rawImage('data.raw', 96);
  const qcow = qcow2Image('data.qcow2', 96);
  const ro = rawImage('ro.raw', 8);
  writeFileSync(ro, randomBytes(MiB), { flag: 'r+' });
  const roBefore = sha256(readFileSync(ro));
  const r = await Sandbox.run({
    engine: E2E_ENGINE, timeoutMs: 180_000, memoryMiB: 256,
    disks: [{ path: raw, format: 'raw' }, { path: qcow, format: 'qcow2' }, { path: ro, format: 'raw', readOnly: true }],
    argv: ['sh', '-c', [
      'for d in vda vdb vdc; do echo "dev $d $(cat /sys/block/$d/size) ro=$(cat /sys/block/$d/ro)"; done',
      'dd if=/dev/urandom of=/tmp/p bs=1M count=64 2>/dev/null',
      'echo "sha $(sha256sum < /tmp/p)"',
      // Guest seconds from /proc/uptime around each copy (sync included).
      'for d in vda vdb; do read a _ < /proc/uptime; dd if=/tmp/p of=/dev/$d bs=1M 2>/dev/null || exit 1; sync; read b _ < /proc/uptime; echo "time $d $a $b"; done',
      'dd if=/tmp/p of=/dev/vdc bs=4k count=1 conv=fsync 2>&1 && echo ro-write-passed',
      'exit 0',
    ].join('; ')],
  });
  const out = text(r.stdout);
  t.equal(r.exitCode, 0, `the guest's script ran (stderr: ${text(r.stderr)})`);
  t.match(out, `dev vda ${96 * 2048} ro=0\ndev vdb ${96 * 2048} ro=0\ndev vdc ${8 * 2048} ro=1\n`, 'vda, vdb, vdc are the disks in order; vdc is read-only');
  const guestSha = /^sha ([0-9a-f]{64})/m.exec(out)?.[1];
  t.ok(guestSha, 'the guest hashed its 64 MiB');
  t.equal(sha256(readFileSync(raw).subarray(0, 64 * MiB)), guestSha, 'the raw image holds what the guest wrote');
  t.equal(sha256(qcow2Contents(qcow, 64 * MiB)), guestSha, 'the qcow2 image holds it too (qemu-img convert)');
  t.notMatch(out, /ro-write-passed/, 'a write to the read-only disk fails');
  t.match(out, /Operation not permitted|Read-only file system/, 'with EPERM or EROFS');
  t.equal(sha256(readFileSync(ro)), roBefore, 'the read-only image is unchanged');
  const mibps = rates(out, 64);
  t.comment(`guest write of 64 MiB + sync: raw ${mibps['vda']} MiB/s, qcow2 ${mibps['vdb']} MiB/s (${r.engine}, guest clock)`);
  t.ok(await waitFor(() => noneLeft(raw) && noneLeft(qcow), 5000), 'no qemu-storage-daemon, socket or directory left');
});

t.test('fsync reaches the image while the guest runs; discard punches holes in a raw image', { skip }, async (t) => {
  const raw = rawImage('discard.raw', 64);
  writeFileSync(raw, randomBytes(32 * MiB), { flag: 'r+' });
  const before = statSync(raw).blocks;
  const sb = await Sandbox.start({
    engine: E2E_ENGINE, timeoutMs: 120_000, stdin: 'pipe',
    disks: [{ path: raw, format: 'raw' }],
    argv: ['sh', '-c', [
      'printf tsibox-fsync-marker > /tmp/m',
      'dd if=/tmp/m of=/dev/vda bs=512 seek=1 conv=notrunc,fsync 2>/dev/null && echo written',
      // virtio-blk `writeback` (CONFIG_WCE): read, then switched by the driver (SET_CONFIG under KVM).
      'echo "cache $(cat /sys/block/vda/cache_type)"; echo "write back" > /sys/block/vda/cache_type; echo "cache $(cat /sys/block/vda/cache_type)"',
      'read go',
      'blkdiscard -o 4194304 -l 16777216 /dev/vda && sync && echo discarded',
    ].join('; ')],
  });
  let out = '';
  sb.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  t.ok(await waitFor(() => out.includes('written'), 60_000), `the guest wrote with fsync (${out})`);
  t.equal(readFileSync(raw).subarray(512, 512 + 19).toString('latin1'), 'tsibox-fsync-marker', 'the host file has it while the VM still runs');
  sb.stdin!.end('go\n');
  const r = await sb.exited;
  t.equal(r.exitCode, 0, `blkdiscard ran (${out})`);
  t.match(out, /^cache write through\ncache write back$/m, 'the export starts write-through; the guest can switch it to write-back');
  const after = statSync(raw).blocks;
  t.comment(`allocated 512-byte blocks: ${before} before, ${after} after discarding 16 MiB`);
  t.ok(before - after >= (15 * MiB) / 512, 'the 16 MiB discarded in the guest are holes in the host file');
  t.ok(await waitFor(() => noneLeft(raw), 5000), 'no qemu-storage-daemon, socket or directory left');
});

t.test('rootDisk: an ext4 image made by mkfs.ext4 -d boots, its writes persist', { skip }, async (t) => {
  const dir = join(work, 'rootfs');
  for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'run', 'etc']) mkdirSync(join(dir, d), { recursive: true });
  writeFileSync(join(dir, 'bin', 'busybox'), readFileSync(BUSYBOX));
  chmodSync(join(dir, 'bin', 'busybox'), 0o755);
  for (const a of ['sh', 'echo', 'cat', 'grep', 'mount', 'touch']) symlinkSync('busybox', join(dir, 'bin', a));
  writeFileSync(join(dir, 'etc', 'marker'), 'from the root disk\n');
  const image = join(work, 'root.ext4');
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', dir, image, '32M']);
  const r = await Sandbox.run({
    engine: E2E_ENGINE, timeoutMs: 120_000, rootDisk: { path: image, format: 'raw' },
    argv: ['sh', '-c', 'echo 42; cat /etc/marker; grep " / " /proc/mounts; echo guest > /guest.txt; exit 5'],
  });
  t.equal(r.exitCode, 5, `the exit status passes through (stderr: ${text(r.stderr)})`);
  t.match(text(r.stdout), /^42\nfrom the root disk\n\/dev\/vda \/ ext4 rw/, 'the workload runs on the ext4 root on /dev/vda');
  t.equal(execFileSync('debugfs', ['-R', 'cat /guest.txt', image], { stdio: ['ignore', 'pipe', 'ignore'] }).toString(), 'guest\n', "the guest's file is in the image");

  const ro = await Sandbox.run({
    engine: E2E_ENGINE, timeoutMs: 120_000, rootDisk: { path: image, format: 'raw', readOnly: true },
    argv: ['sh', '-c', 'cat /guest.txt; touch /x; touch /tmp/ok && echo tmp-ok'],
  });
  t.equal(ro.exitCode, 0);
  t.equal(text(ro.stdout), 'guest\ntmp-ok\n', 'a read-only root disk: the earlier write is there, /tmp is writable');
  t.match(text(ro.stderr), /Read-only file system/, 'writes to it fail with EROFS');
  t.ok(await waitFor(() => noneLeft(image), 5000), 'no qemu-storage-daemon, socket or directory left');
});

t.test('bad images are named; a daemon that dies mid-run ends the sandbox with DEVICE_ERROR', { skip }, async (t) => {
  const notQcow = rawImage('plain.raw', 1);
  await t.rejects(Sandbox.run({ engine: E2E_ENGINE, disks: [{ path: notQcow, format: 'qcow2' }], argv: ['true'] }),
    { code: 'INVALID_ARGUMENT', message: /disks\[0\]: .*plain\.raw is not a qcow2 image/ });
  await t.rejects(Sandbox.run({ engine: E2E_ENGINE, disks: [{ path: join(work, 'missing.raw'), format: 'raw' }], argv: ['true'] }),
    { code: 'INVALID_ARGUMENT', message: /disks\[0\]\.path: .*missing\.raw cannot be used \(it does not exist\)/ });
  // A qcow2 header followed by garbage: qemu-storage-daemon refuses it before the VM starts.
  const broken = join(work, 'broken.qcow2');
  // A qcow2 magic and version, then a zeroed header (no backing or data file: those checks
  // are ours, before the daemon), then noise for qemu-storage-daemon to refuse.
  writeFileSync(broken, Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]), Buffer.alloc(96), randomBytes(4096)]));
  await t.rejects(Sandbox.run({ engine: E2E_ENGINE, disks: [{ path: broken, format: 'qcow2' }], argv: ['true'] }),
    { code: 'DEVICE_ERROR', message: /qemu-storage-daemon for disks\[0\] \(.*broken\.qcow2, qcow2\) exited with status 1: .*qcow2/ });
  t.ok(noneLeft(broken), 'nothing is left after a failed start');

  const image = rawImage('kill.raw', 8);
  const sb = await Sandbox.start({ engine: E2E_ENGINE, timeoutMs: 90_000, disks: [{ path: image, format: 'raw' }], argv: ['sh', '-c', 'echo ready; sleep 60'] });
  let out = '';
  sb.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  t.ok(await waitFor(() => out.includes('ready'), 60_000), 'the guest runs');
  const ours = processesMentioning(`filename=${image}`);
  t.ok(ours.length > 0, 'qemu-storage-daemon runs');
  killAll(ours);
  const err = await sb.exited.then(() => null, (e: unknown) => e);
  t.ok(err instanceof TsiboxError && err.code === 'DEVICE_ERROR', `DEVICE_ERROR (${String(err)})`);
  t.match((err as Error).message, /qemu-storage-daemon for disks\[0\] .*kill\.raw .*(was killed by SIGKILL|exited with status) while the sandbox ran/);
  t.ok(await waitFor(() => noneLeft(image), 5000), 'no qemu-storage-daemon, socket or directory left');
});

t.test('SIGKILL of the host process leaves no qemu-storage-daemon, socket or directory', { skip }, async (t) => {
  const image = rawImage('sigkill.raw', 8);
  const child = spawn(process.execPath, [CHILD, image], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: runtime } });
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
  t.ok(processesMentioning(`filename=${image}`).length > 0, 'its qemu-storage-daemon runs (with its keeper)');
  t.equal(readdirSync(runtime).length, 1, 'its private directory exists while it runs');
  child.kill('SIGKILL');
  await exited;
  t.ok(await waitFor(() => family.every((p) => !alive(p)) && noneLeft(image), 10_000), 'everything is gone');
  t.same(family.filter(alive), [], 'no process of the sandbox is left');
  t.same(readdirSync(runtime), [], 'no private directory or socket is left');
});

t.test('tsibox run --disk PATH:qcow2 --disk PATH:ro, and usage errors', { skip }, async (t) => {
  const q = qcow2Image('cli.qcow2', 8);
  const ro = rawImage('cli-ro.raw', 4);
  const r = spawnSync(process.execPath, [BIN, 'run', '--engine', E2E_ENGINE, '--disk', `${q}:qcow2`, '--disk', `${ro}:ro`, '--',
    'sh', '-c', 'echo hi | dd of=/dev/vda conv=fsync 2>/dev/null; cat /sys/block/vda/size /sys/block/vdb/ro; exit 3'], { encoding: 'utf8', timeout: 90_000 });
  t.equal(r.status, 3, `exit status passed through (stderr: ${r.stderr})`);
  t.equal(r.stdout, `${8 * 2048}\n1\n`);
  t.equal(qcow2Contents(q, 3).toString(), 'hi\n', 'the write reached the qcow2 image');
  const usage = spawnSync(process.execPath, [BIN, 'run', '--disk', `${q}:vmdk`, '--', 'true'], { encoding: 'utf8', timeout: 30_000 });
  t.equal(usage.status, 2);
  t.match(usage.stderr, /--disk wants PATH\[:raw\|qcow2\]\[:ro\]/);
  t.ok(await waitFor(() => noneLeft(q) && noneLeft(ro), 5000), 'no qemu-storage-daemon, socket or directory left');
});
