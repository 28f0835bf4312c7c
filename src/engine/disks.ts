// One qemu-storage-daemon (Debian 12: /usr/bin/qemu-storage-daemon, QEMU 7.2, from
// qemu-system-common) per disk, each exporting its image as a vhost-user-blk back end
// on a unix socket, and what attaches them: QEMU options, or device descriptions for
// the KVM engine's vhost-user front end.
//
// As for virtiofsd (virtiofsd.ts) we make the listening socket ourselves, in a private
// 0700 directory, and hand it over as fd 3 (`addr.type=fd,addr.str=3`): it listens
// before any front end connects. The daemon writes its pid file only once every
// --blockdev and --export is set up, so that file is our "ready" (a bad image makes it
// exit 1 before: we report its stderr instead of letting QEMU fail on a dead socket).
// The image is opened with `discard=unmap` (the guest's discard punches holes in a raw
// file, frees qcow2 clusters). The export tells the guest its cache is write-through
// (wce 0: Linux then sends no flushes, not even on fsync), so it runs `writethrough=on`:
// each write is fdatasync'ed before it completes, which makes that promise true
// (measured: 64 MiB dd ~25% slower than without; docs/disks.md).
// The daemon serves until it is stopped: a front end's disconnect does not end it.
//
// Lifetime (src/sys/helper-process.ts): the keeper stops it and removes the directory
// (socket and pid file) when our pipe ends, even after a SIGKILL of Node; pdeathsig too.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { HelperProcess, startHelper } from '../sys/helper-process.js';
import { TsiboxError } from '../errors.js';
import { findExecutable } from '../sys/helper-programs.js';
import { firstUnexpectedExit, privateListeningSocket } from './backend-process.js';
import type { CheckedDisk } from './disk-options.js';
import type { VhostUserMmioDevice } from './vhost-user/frontend/kvm-attach.js';
import { vhostUserBlkKind } from './vhost-user/frontend/mmio-device-kinds.js';

export const QSD_BINARY = 'qemu-storage-daemon';
export const QSD_DEBIAN_PACKAGE = 'qemu-system-common';
/** How long a daemon may take to open its image and listen. */
const READY_TIMEOUT_MS = 10_000;

/** The qemu-storage-daemon binary: $TSIBOX_QSD, else PATH; undefined when none. */
export function findStorageDaemon(): string | undefined {
  return findExecutable(QSD_BINARY, 'TSIBOX_QSD');
}

/**
 * A vhost-user back end another process serves on a unix socket: what an engine needs
 * to attach it (QEMU: `-chardev socket,path=` + `-device`; the KVM engine: its
 * vhost-user front end). Valid while the owner (DiskBackends) is open.
 */
export interface VhostUserBackend {
  /** The virtio device type it implements. */
  kind: 'vhost-user-blk';
  /** Absolute path of its listening socket (one front end at a time). */
  socketPath: string;
  /** For messages: e.g. 'disk vdb (/images/data.qcow2)'. */
  name: string;
}

/** The running qemu-storage-daemon processes of one sandbox. */
export interface DiskBackends {
  /** One back end per disk, in attach order (the guest's vda, vdb, ...). */
  backends: VhostUserBackend[];
  /** The daemons (their keepers' pids), for tests and supervisors. */
  pids: number[];
  /** Resolves with a DEVICE_ERROR when a daemon ends while the VM runs (the sandbox then stops). */
  failed: Promise<TsiboxError>;
  /** Stops every daemon and removes its directory (idempotent). */
  close(): Promise<void>;
}

/** qemu-storage-daemon's argv after the binary for `disk`, the socket being fd 3. */
export function storageDaemonArgs(disk: Pick<CheckedDisk, 'path' | 'format' | 'readOnly'>, pidFile: string): string[] {
  // QEMU's option parser takes ',,' for a ',' inside a value.
  const q = (s: string): string => s.replaceAll(',', ',,');
  const ro = disk.readOnly ? ',read-only=on' : '';
  return [
    '--blockdev', `driver=file,node-name=file0,filename=${q(disk.path)},discard=unmap${ro}`,
    '--blockdev', `driver=${disk.format},node-name=fmt0,file=file0,discard=unmap${ro}`,
    '--export', `type=vhost-user-blk,id=exp0,node-name=fmt0,addr.type=fd,addr.str=3,writable=${disk.readOnly ? 'off' : 'on'}${disk.readOnly ? '' : ',writethrough=on'}`,
    '--pidfile', q(pidFile),
  ];
}

/**
 * QEMU options attaching `backends` in order: `-chardev socket,path=` and
 * `-device vhost-user-blk` (the virtio-mmio model under microvm) each. The guest
 * names virtio-blk disks in probe order, which is this order: vda, vdb, ...
 */
export function qemuDiskArgs(backends: readonly VhostUserBackend[]): string[] {
  return backends.flatMap((b, i) => ['-chardev', `socket,id=blk${i},path=${b.socketPath}`, '-device', `vhost-user-blk,chardev=blk${i},num-queues=1`]);
}

/**
 * The KVM engine's devices for `backends` (KvmRunOptions.vhostUserDevices), in order.
 * Linux numbers virtio-blk disks in probe order, which for virtio-mmio devices given
 * on the command line is their order there (runKvm keeps this one): vda, vdb, ...
 * Other kinds between them (virtio-fs) take no vdX name.
 */
export function kvmDiskDevices(backends: readonly VhostUserBackend[]): VhostUserMmioDevice[] {
  return backends.map((b) => ({ socket: b.socketPath, kind: vhostUserBlkKind(), name: b.name }));
}

/**
 * Starts one qemu-storage-daemon per disk and waits until each serves. Throws
 * ENGINE_UNAVAILABLE when the binary is missing, DEVICE_ERROR (with the daemon's
 * stderr, which names the image) when one cannot open its image or does not get
 * ready within 10 s; nothing is left running then.
 */
export async function startDiskBackends(disks: readonly CheckedDisk[], log: Logger): Promise<DiskBackends> {
  const bin = findStorageDaemon();
  if (bin === undefined) {
    throw new TsiboxError('ENGINE_UNAVAILABLE',
      `${QSD_BINARY} was not found in PATH (or set TSIBOX_QSD); disks and rootDisk need it (Debian: apt-get install ${QSD_DEBIAN_PACKAGE})`);
  }
  const started: Array<{ disk: CheckedDisk; helper: HelperProcess; pidFile: string; backend: VhostUserBackend }> = [];
  let closing = false;
  const close = async (): Promise<void> => {
    closing = true;
    await Promise.all(started.map((s) => s.helper.close()));
  };
  try {
    for (const disk of disks) {
      const { dir, sock, fd } = privateListeningSocket('tsibox-qsd-', 'vhost-user-blk.sock');
      const pidFile = join(dir, 'qsd.pid');
      const helper = startHelper({ name: QSD_BINARY, argv: [bin, ...storageDaemonArgs(disk, pidFile)], passFds: [fd], privateDir: dir, logger: log });
      const backend: VhostUserBackend = { kind: 'vhost-user-blk', socketPath: sock, name: `disk ${disk.guestDevice} (${disk.path})` };
      started.push({ disk, helper, pidFile, backend });
      log.debug({ pid: helper.pid, disk: disk.path, format: disk.format, readOnly: disk.readOnly }, 'qemu-storage-daemon started');
    }
    await Promise.all(started.map(async ({ disk, helper, pidFile }) => {
      if (await ready(helper, pidFile)) return;
      const why = helper.running ? `did not get ready within ${READY_TIMEOUT_MS} ms` : HelperProcess.describe(await helper.exited);
      const err = helper.stderr;
      throw new TsiboxError('DEVICE_ERROR', `${QSD_BINARY} for ${disk.what} (${disk.path}, ${disk.format}) ${why}${err ? `: ${err}` : ''}`);
    }));
  } catch (err) {
    await close();
    throw err;
  }
  // Before close() every exit is a failure: the daemon serves until stopped.
  const failed = firstUnexpectedExit(started.map(({ disk, helper }) => ({ label: `${QSD_BINARY} for ${disk.what} ${disk.path}`, helper })), () => closing);
  let closed: Promise<void> | null = null;
  return { backends: started.map((s) => s.backend), pids: started.map((s) => s.helper.pid), failed, close: () => (closed ??= close()) };
}

/** True once the daemon wrote its pid file; false when it ended first or timed out. */
async function ready(helper: HelperProcess, pidFile: string): Promise<boolean> {
  const deadline = performance.now() + READY_TIMEOUT_MS;
  let gone = false;
  void helper.exited.then(() => { gone = true; });
  for (let wait = 2; ; wait = Math.min(wait * 2, 50)) {
    if (existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '') return true;
    if (gone || performance.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, wait));
  }
}
