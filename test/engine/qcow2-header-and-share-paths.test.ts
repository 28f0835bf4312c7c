// Review regressions: a qcow2 image whose header names another host file (backing
// file, external data file) is refused before qemu-storage-daemon could open that file
// for the guest; a share whose host path is a symlink to a directory is handed to
// virtiofsd as the directory itself (virtiofsd refuses a symlinked source).
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkDisks } from '../../src/engine/disk-options.js';
import { checkDirectoryShares } from '../../src/engine/directory-share-options.js';

const dir = mkdtempSync(join(tmpdir(), 'tsibox-qcow2-hdr-'));
t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });

/** A qcow2 header: magic, version, backing_file_offset, and (v3) incompatible features at 72. */
function header(version: number, backingOffset: bigint, incompatible: bigint): Buffer {
  const b = Buffer.alloc(512);
  b.writeUInt32BE(0x514649fb, 0);
  b.writeUInt32BE(version, 4);
  b.writeBigUInt64BE(backingOffset, 8);
  if (version >= 3) b.writeBigUInt64BE(incompatible, 72);
  return b;
}

t.test('qcow2 headers naming another host file are refused', async (t) => {
  const plain3 = join(dir, 'plain3.qcow2');
  const plain2 = join(dir, 'plain2.qcow2');
  const backed = join(dir, 'backed.qcow2');
  const external = join(dir, 'external.qcow2');
  const short = join(dir, 'short.qcow2');
  writeFileSync(plain3, header(3, 0n, 0n));
  writeFileSync(plain2, header(2, 0n, 0n));
  writeFileSync(backed, header(3, 0x1000n, 0n));
  writeFileSync(external, header(3, 0n, 4n));
  writeFileSync(short, header(3, 0n, 0n).subarray(0, 40));
  t.equal(checkDisks({ disks: [{ path: plain3, format: 'qcow2' }] })?.disks.length, 1);
  t.equal(checkDisks({ disks: [{ path: plain2, format: 'qcow2' }] })?.disks.length, 1);
  t.throws(() => checkDisks({ disks: [{ path: backed, format: 'qcow2' }] }), { code: 'INVALID_ARGUMENT', message: /disks\[0\]: .*backed\.qcow2 has a backing file/ });
  t.throws(() => checkDisks({ rootDisk: { path: external, format: 'qcow2' } }), { code: 'INVALID_ARGUMENT', message: /rootDisk: .*external data file/ });
  t.throws(() => checkDisks({ disks: [{ path: short, format: 'qcow2' }] }), { code: 'INVALID_ARGUMENT', message: /truncated qcow2 header/ });
  // As raw, the same bytes are just a disk: nothing is opened through them.
  t.equal(checkDisks({ disks: [{ path: backed, format: 'raw' }] })?.disks[0]?.format, 'raw');
});

t.test('real images from qemu-img', async (t) => {
  let qemuImg = true;
  try { execFileSync('qemu-img', ['--version'], { stdio: 'ignore' }); } catch { qemuImg = false; }
  if (!qemuImg) { t.pass('qemu-img is not installed: skipped'); return; }
  const base = join(dir, 'base.raw');
  writeFileSync(base, Buffer.alloc(65536));
  const overlay = join(dir, 'overlay.qcow2');
  const flat = join(dir, 'flat.qcow2');
  const ext = join(dir, 'ext.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', overlay, '64K']);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', flat, '64K']);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'ext.data')}`, ext, '64K']);
  t.equal(checkDisks({ disks: [{ path: flat, format: 'qcow2' }] })?.disks.length, 1);
  t.throws(() => checkDisks({ disks: [{ path: overlay, format: 'qcow2' }] }), { code: 'INVALID_ARGUMENT', message: /backing file/ });
  t.throws(() => checkDisks({ disks: [{ path: ext, format: 'qcow2' }] }), { code: 'INVALID_ARGUMENT', message: /external data file/ });
});

t.test('a symlinked share path is resolved to its directory', async (t) => {
  const real = join(dir, 'real');
  mkdirSync(real);
  const link = join(dir, 'link');
  symlinkSync(real, link);
  const s = checkDirectoryShares({ root: link, mounts: [{ hostPath: join(dir, 'real', '..', 'link'), guestPath: '/m' }] });
  t.equal(s?.root?.hostPath, real);
  t.equal(s?.mounts[0]?.hostPath, real);
});
