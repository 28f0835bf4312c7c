// disks / rootDisk: option checks, guest device names, init's token, the CLI flags,
// qemu-storage-daemon's argv, the QEMU options and the KVM engine's devices, and the
// refusals before anything boots. No VM here (test/e2e/disks.test.ts boots them).
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { checkDisks, guestDeviceName, MAX_DISKS, type DiskImage } from '../../src/engine/disk-options.js';
import { kvmDiskDevices, qemuDiskArgs, storageDaemonArgs } from '../../src/engine/disks.js';
import { VIRTIO_BLK_DEVICE_ID } from '../../src/engine/vhost-user/frontend/mmio-device-kinds.js';
import { buildCmdline, initTokens } from '../../src/guest/cmdline.js';
import { ensureInitramfs } from '../../src/guest/index.js';
import { diskOptions, parseDisk } from '../../src/cli/disk-flags.js';
import { UsageError } from '../../src/cli/args.js';
import { Sandbox } from '../../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'tsibox-disk-unit-'));
const raw = join(dir, 'a.raw');
const raw2 = join(dir, 'b,odd.raw');
const qcow = join(dir, 'c.qcow2');
writeFileSync(raw, Buffer.alloc(4096));
writeFileSync(raw2, Buffer.alloc(4096));
writeFileSync(qcow, Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]), Buffer.alloc(504)]));
mkdirSync(join(dir, 'sub'));
t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });

t.test('checkDisks: guest devices in order, the root disk first', async (t) => {
  t.equal(checkDisks({}), null);
  t.equal(checkDisks({ disks: [] }), null);
  t.same(checkDisks({ disks: [{ path: raw, format: 'raw' }, { path: qcow, format: 'qcow2', readOnly: true }] }), {
    root: null,
    disks: [
      { path: raw, format: 'raw', readOnly: false, guestDevice: 'vda', what: 'disks[0]' },
      { path: qcow, format: 'qcow2', readOnly: true, guestDevice: 'vdb', what: 'disks[1]' },
    ],
  });
  const withRoot = checkDisks({ rootDisk: { path: raw2, format: 'raw', readOnly: true }, disks: [{ path: raw, format: 'raw' }] });
  t.same(withRoot?.root, { guestDevice: 'vda', fsType: 'ext4', readOnly: true });
  t.same(withRoot?.disks.map((d) => `${d.what}=${d.guestDevice}`), ['rootDisk=vda', 'disks[0]=vdb']);
  t.equal(checkDisks({ rootDisk: { path: raw, format: 'raw', fsType: 'ext2' } })?.root?.fsType, 'ext2');
  t.same([0, 1, 7].map(guestDeviceName), ['vda', 'vdb', 'vdh']);
});

t.test('checkDisks refuses bad options with INVALID_ARGUMENT naming them', async (t) => {
  const many: DiskImage[] = Array.from({ length: MAX_DISKS }, () => ({ path: raw, format: 'raw' }));
  const bad: Array<[Parameters<typeof checkDisks>[0], RegExp]> = [
    [{ disks: [{ path: 'rel.raw', format: 'raw' }] }, /disks\[0\]\.path must be an absolute host path/],
    [{ disks: [{ path: join(dir, 'missing'), format: 'raw' }] }, /disks\[0\]\.path: .*missing cannot be used \(it does not exist\)/],
    [{ disks: [{ path: join(dir, 'sub'), format: 'raw' }] }, /disks\[0\]\.path: .*sub is not a regular file or block device/],
    [{ disks: [{ path: '', format: 'raw' }] }, /disks\[0\]\.path must be a host image file path/],
    [{ disks: [{ path: raw, format: 'vmdk' as 'raw' }] }, /disks\[0\]\.format must be 'raw' or 'qcow2', got "vmdk"/],
    [{ disks: [{ path: raw, format: 'qcow2' }] }, /disks\[0\]: .*a\.raw is not a qcow2 image/],
    [{ disks: [{ path: raw, format: 'raw', readOnly: 'yes' as unknown as boolean }] }, /disks\[0\]\.readOnly must be a boolean/],
    [{ rootDisk: { path: raw, format: 'raw' }, disks: [{ path: raw, format: 'raw' }] }, /disks\[0\]: .*a\.raw is already rootDisk/],
    [{ rootDisk: { path: raw, format: 'raw', fsType: 'xfs' as 'ext4' } }, /rootDisk\.fsType must be one of ext4, ext3, ext2/],
    [{ rootDisk: { path: raw, format: 'raw' }, disks: many }, new RegExp(`at most ${MAX_DISKS} disks \\(rootDisk included\\), got ${MAX_DISKS + 1}`)],
    [{ disks: {} as DiskImage[] }, /disks must be an array/],
    [{ disks: [null as unknown as DiskImage] }, /disks\[0\] must be \{ path, format, readOnly\? \}/],
  ];
  for (const [opts, msg] of bad) t.throws(() => checkDisks(opts), { code: 'INVALID_ARGUMENT', message: msg }, String(msg));
});

t.test("qemu-storage-daemon's argv, QEMU's options, the KVM engine's devices", async (t) => {
  t.same(storageDaemonArgs({ path: raw2, format: 'qcow2', readOnly: false }, '/run/x/qsd.pid'), [
    '--blockdev', `driver=file,node-name=file0,filename=${raw2.replace(',', ',,')},discard=unmap`,
    '--blockdev', 'driver=qcow2,node-name=fmt0,file=file0,discard=unmap',
    '--export', 'type=vhost-user-blk,id=exp0,node-name=fmt0,addr.type=fd,addr.str=3,writable=on,writethrough=on',
    '--pidfile', '/run/x/qsd.pid',
  ], "a ',' in the path is doubled; writable with write-through");
  const ro = storageDaemonArgs({ path: raw, format: 'raw', readOnly: true }, '/p');
  t.match(ro[1], /,read-only=on$/);
  t.match(ro[3], /driver=raw,.*,read-only=on$/);
  t.match(ro[5], /,writable=off$/);
  t.same(qemuDiskArgs([{ kind: 'vhost-user-blk', socketPath: '/s/0.sock', name: 'a' }, { kind: 'vhost-user-blk', socketPath: '/s/1.sock', name: 'b' }]), [
    '-chardev', 'socket,id=blk0,path=/s/0.sock', '-device', 'vhost-user-blk,chardev=blk0,num-queues=1',
    '-chardev', 'socket,id=blk1,path=/s/1.sock', '-device', 'vhost-user-blk,chardev=blk1,num-queues=1',
  ]);
  const kvm = kvmDiskDevices([{ kind: 'vhost-user-blk', socketPath: '/s/0.sock', name: 'a' }, { kind: 'vhost-user-blk', socketPath: '/s/1.sock', name: 'b' }]);
  t.same(kvm.map((d) => ({ socket: d.socket, name: d.name, id: d.kind.deviceId, queueSize: d.kind.queueSize, wantsConfig: d.kind.wantsConfig })), [
    { socket: '/s/0.sock', name: 'a', id: VIRTIO_BLK_DEVICE_ID, queueSize: 256, wantsConfig: true },
    { socket: '/s/1.sock', name: 'b', id: VIRTIO_BLK_DEVICE_ID, queueSize: 256, wantsConfig: true },
  ], 'KVM engine: one virtio-blk (device ID 2) per back end, in guest order, config from the back end');
});

t.test('the CLI flags', async (t) => {
  t.same(parseDisk('/a.img'), { path: '/a.img', format: 'raw' });
  t.same(parseDisk('/a.img:qcow2'), { path: '/a.img', format: 'qcow2' });
  t.same(parseDisk('/a.img:ro'), { path: '/a.img', format: 'raw', readOnly: true });
  t.same(parseDisk('/a.img:qcow2:ro'), { path: '/a.img', format: 'qcow2', readOnly: true });
  t.same(parseDisk('/a.img:raw:rw'), { path: '/a.img', format: 'raw' });
  for (const bad of ['', ':raw', '/a:b.img', '/a.img:ro:qcow2', '/a.img:vmdk']) {
    t.throws(() => parseDisk(bad), UsageError, bad);
  }
  t.same(diskOptions({ disk: ['/a:qcow2', '/b:ro'], 'root-disk': '/r' }), {
    rootDisk: { path: '/r', format: 'raw' },
    disks: [{ path: '/a', format: 'qcow2' }, { path: '/b', format: 'raw', readOnly: true }],
  });
  t.same(diskOptions({}), {});
  t.throws(() => diskOptions({ 'root-disk': '/r:x' }), { message: /--root-disk wants PATH/ });
});

t.test("init's tsibox.rootdisk token: encoded, parsed (init --parse), bad ones refused", async (t) => {
  t.same(initTokens({ argv: ['sh'], rootDisk: { device: '/dev/vda', fsType: 'ext4', readOnly: true } }).filter((s) => s.startsWith('tsibox.root')), ['tsibox.rootdisk=/dev/vda,ext4,ro']);
  const init = join(dirname(await ensureInitramfs()), 'init');
  const hex = (s: string): string => Buffer.from(s).toString('hex');
  const out = execFileSync(init, ['--parse', buildCmdline('quiet', { argv: ['sh'], rootDisk: { device: '/dev/vdb', fsType: 'ext2' } })], { encoding: 'utf8' }).trim().split('\n');
  t.same(out.slice(-3), [`root ${hex('/dev/vdb')}`, 'root_ro 0', `root_fstype ${hex('ext2')}`]);
  for (const bad of ['tsibox.rootdisk=vda,ext4,rw', 'tsibox.rootdisk=/dev/vda,ext4', 'tsibox.rootdisk=/dev/vda,,rw', 'tsibox.rootdisk=/dev/,ext4,ro', 'tsibox.rootdisk=/dev/vda,ext4,rx']) {
    const r = spawnSync(init, ['--parse', bad], { encoding: 'utf8' });
    t.equal(r.status, 125, bad);
    t.match(r.stderr, /tsibox\.rootdisk: want \/dev\/DEV,FSTYPE,ro\|rw/, bad);
  }
});

t.test('under either engine, before anything boots: a bad path is named; root and rootDisk exclude each other', async (t) => {
  // Dummy kernel/initrd paths: the refusal comes before either is read.
  const base = { argv: ['true'], kernel: join(dir, 'no-kernel'), initrd: join(dir, 'no-initrd') };
  for (const engine of ['kvm', 'qemu'] as const) {
    await t.rejects(Sandbox.run({ ...base, engine, disks: [{ path: join(dir, 'missing'), format: 'raw' }] }), { code: 'INVALID_ARGUMENT', message: /missing/ }, engine);
    await t.rejects(Sandbox.run({ ...base, engine, root: dir, rootDisk: { path: raw, format: 'raw' } }), { code: 'INVALID_ARGUMENT', message: /root and rootDisk exclude each other/ }, engine);
  }
});
