// One virtiofsd (Debian 12: /usr/lib/qemu/virtiofsd, the C one from qemu-system-common)
// per shared host directory, each a vhost-user-fs back end QEMU (or the KVM engine's
// vhost-user front end) reaches through a unix socket, and what attaches them: QEMU
// options, or device descriptions for the KVM engine.
//
// We make the listening socket ourselves (blocking, in a private 0700 directory) and
// hand it to virtiofsd as `--fd=3`: it is listening before QEMU starts, so there is no
// race and nothing to probe (a probe would take virtiofsd's only accept()).
// virtiofsd runs `-o sandbox=namespace` (its own mount/pid/net namespaces, pivoted into
// the directory), which needs root, and without CAP_MKNOD (`modcaps=-mknod`): a guest
// must not leave device nodes in a host directory. This version has no read-only
// option, and a read-only mount in the guest is no barrier (the workload is root there
// and can remount): a read-only share's virtiofsd starts in a mount namespace of its
// own where the directory and everything mounted under it are bind-mounted read-only,
// so the host kernel refuses every write (EROFS).
//
// Lifetime (src/sys/helper-process.ts): virtiofsd exits when QEMU's connection ends;
// it runs under the keeper that stops it and removes the directory (socket included)
// when our pipe ends, even after a SIGKILL of Node, and under pdeathsig.
import type { Logger } from 'pino';
import { HelperProcess, startHelper } from '../sys/helper-process.js';
import { TsiboxError } from '../errors.js';
import { findExecutable } from '../sys/helper-programs.js';
import { firstUnexpectedExit, privateListeningSocket } from './backend-process.js';
import type { DirectoryShares } from './directory-share-options.js';
import { virtioFsKind } from './vhost-user/frontend/mmio-device-kinds.js';
import type { VhostUserMmioDevice } from './vhost-user/frontend/kvm-attach.js';

export const VIRTIOFSD_BINARY = 'virtiofsd';
/** Where Debian 12 (and Fedora) install it: outside PATH. */
export const VIRTIOFSD_PATHS = ['/usr/lib/qemu/virtiofsd', '/usr/libexec/virtiofsd'];
export const VIRTIOFSD_DEBIAN_PACKAGE = 'qemu-system-common';

/** The virtiofsd binary: $TSIBOX_VIRTIOFSD, else `virtiofsd` in PATH, else VIRTIOFSD_PATHS; undefined when none. */
export function findVirtiofsd(): string | undefined {
  return findExecutable(VIRTIOFSD_BINARY, 'TSIBOX_VIRTIOFSD')
    ?? (process.env['TSIBOX_VIRTIOFSD'] ? undefined : VIRTIOFSD_PATHS.find((p) => findExecutable(VIRTIOFSD_BINARY, '', p) !== undefined));
}

/** virtiofsd's argv after the binary for `source`, the socket being fd 3. */
export function virtiofsdArgs(source: string): string[] {
  // Its -o parser splits at ',' and takes '\' as an escape.
  const escaped = source.replace(/[\\,]/g, (c) => `\\${c}`);
  return ['--fd=3', '-o', `source=${escaped}`, '-o', 'cache=auto', '-o', 'sandbox=namespace', '-o', 'modcaps=-mknod', '-o', 'log_level=warn'];
}

/**
 * `bash -c READ_ONLY_SHARE NAME DIR CMD...` in a private mount namespace: bind DIR over
 * itself with its submounts, remount each read-only, then exec CMD (virtiofsd). findmnt
 * escapes odd characters in targets (\x20); bash's printf %b undoes that (dash's
 * does not know \x).
 */
const READ_ONLY_SHARE = [
  'd=$1; shift',
  'mount --rbind -- "$d" "$d" || exit 1',
  'findmnt -rn -o TARGET -R -- "$d" | while IFS= read -r m; do mount -o remount,bind,ro -- "$(printf %b "$m")" || exit 1; done || exit 1',
  'exec "$@"',
].join('\n');

/** The whole argv for one share: virtiofsd itself, or for a read-only share wrapped as READ_ONLY_SHARE says. */
export function virtiofsdArgv(bin: string, source: string, readOnly: boolean): string[] {
  const direct = [bin, ...virtiofsdArgs(source)];
  if (!readOnly) return direct;
  return ['unshare', '--mount', '--propagation', 'private', '--', 'bash', '-c', READ_ONLY_SHARE, 'tsibox-read-only-share', source, ...direct];
}

/** The running virtiofsd processes of one sandbox. */
export interface VirtiofsShares {
  /** QEMU options: one `-chardev socket,path=` and `-device vhost-user-fs-device` per share. */
  qemuArgs: string[];
  /** For the KVM engine (KvmRunOptions.vhostUserDevices): one virtio-fs device per share, same order. */
  kvmDevices: VhostUserMmioDevice[];
  /** The virtiofsd processes (their keepers' pids), for tests and supervisors. */
  pids: number[];
  /** Resolves with a DEVICE_ERROR when a virtiofsd ends while the VM runs (the sandbox then stops). */
  failed: Promise<TsiboxError>;
  /** Stops every virtiofsd and removes its directory (idempotent). */
  close(): Promise<void>;
}

interface Share {
  what: string;
  hostPath: string;
  tag: string;
  readOnly: boolean;
}

/**
 * The virtiofsd binary, when shares can be served here: ENGINE_UNAVAILABLE without
 * virtiofsd, NOT_SUPPORTED when not running as root. Cheap; Sandbox calls it before
 * building or starting anything.
 */
export function checkVirtiofsdUsable(): string {
  const bin = findVirtiofsd();
  if (bin === undefined) {
    throw new TsiboxError('ENGINE_UNAVAILABLE',
      `virtiofsd was not found (${VIRTIOFSD_PATHS.join(', ')} or PATH; or set TSIBOX_VIRTIOFSD); root and mounts need it (Debian: apt-get install ${VIRTIOFSD_DEBIAN_PACKAGE})`);
  }
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new TsiboxError('NOT_SUPPORTED',
      'root and mounts need root: virtiofsd (Debian 12) sets up its namespace sandbox and serves files of every owner with root\'s capabilities; run tsibox as root');
  }
  return bin;
}

/**
 * Starts one virtiofsd per share. Throws ENGINE_UNAVAILABLE when virtiofsd is missing,
 * NOT_SUPPORTED when not running as root (virtiofsd's namespace sandbox and serving
 * files of every owner need it); nothing is left running then.
 */
export function startVirtiofsShares(shares: DirectoryShares, log: Logger): VirtiofsShares {
  const bin = checkVirtiofsdUsable();
  const list: Share[] = [
    ...(shares.root ? [{ what: `root ${shares.root.hostPath}`, hostPath: shares.root.hostPath, tag: shares.root.tag, readOnly: shares.root.readOnly }] : []),
    ...shares.mounts.map((m) => ({ what: `mount ${m.hostPath} → ${m.guestPath}`, hostPath: m.hostPath, tag: m.tag, readOnly: m.readOnly })),
  ];
  const helpers: Array<{ share: Share; helper: HelperProcess }> = [];
  // virtiofsd's libvhost-user refuses legacy virtio-mmio: the caller runs QEMU with
  // modernVirtio (qemu.ts).
  const qemuArgs: string[] = [];
  const kvmDevices: VhostUserMmioDevice[] = [];
  let closing = false;
  const close = async (): Promise<void> => {
    closing = true;
    await Promise.all(helpers.map((h) => h.helper.close()));
  };
  try {
    list.forEach((share, i) => {
      const { dir, sock, fd } = privateListeningSocket('tsibox-virtiofsd-', 'vhost-user-fs.sock');
      const helper = startHelper({ name: 'virtiofsd', argv: virtiofsdArgv(bin, share.hostPath, share.readOnly), passFds: [fd], privateDir: dir, logger: log });
      helpers.push({ share, helper });
      qemuArgs.push('-chardev', `socket,id=fs${i},path=${sock}`, '-device', `vhost-user-fs-device,chardev=fs${i},tag=${share.tag}`);
      kvmDevices.push({ socket: sock, kind: virtioFsKind(share.tag), name: `virtiofsd for the ${share.what}` });
      log.debug({ pid: helper.pid, tag: share.tag, source: share.hostPath }, 'virtiofsd started');
    });
  } catch (err) {
    void close();
    throw err;
  }
  // An exit before close() other than status 0 (the end of QEMU's connection) is a failure.
  const failed = firstUnexpectedExit(helpers.map(({ share, helper }) => ({ label: `virtiofsd for the ${share.what}`, helper })),
    () => closing, (ex) => ex.code === 0 && ex.signal === null);
  let closed: Promise<void> | null = null;
  return { qemuArgs, kvmDevices, pids: helpers.map((h) => h.helper.pid), failed, close: () => (closed ??= close()) };
}
