// The options that share host directories with the guest over virtio-fs (`root`,
// `rootReadOnly`, `mounts`), their checks, and the virtio-fs tags they get. Checked
// before anything starts; the processes are in virtiofsd.ts.
import { realpathSync, statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { TsiboxError } from '../errors.js';

/** A host directory mounted at `guestPath` in the guest (virtio-fs). */
export interface DirectoryMount {
  /** Absolute path of an existing host directory. */
  hostPath: string;
  /** Absolute path in the guest; created when missing unless the guest's root is read-only. */
  guestPath: string;
  /** Mounted read-only in the guest (virtiofsd itself still serves it read-write). */
  readOnly?: boolean;
}

/** What the sandbox shares: the root (or none) and the extra mounts, each with its tag. */
export interface DirectoryShares {
  root: { hostPath: string; tag: string; readOnly: boolean } | null;
  mounts: Array<{ hostPath: string; guestPath: string; tag: string; readOnly: boolean }>;
}

/** virtio-fs tag of the root and prefix of the mounts' tags (≤ 36 bytes, the device's limit). */
export const ROOT_TAG = 'tsibox-root';
export const MOUNT_TAG_PREFIX = 'tsibox-m';
/** At most this many mounts: each is a virtiofsd process and a virtio-mmio slot. */
export const MAX_MOUNTS = 8;

/**
 * Checks `root`, `rootReadOnly` and `mounts` and gives each share its tag; null when
 * there is nothing to share. INVALID_ARGUMENT (naming the option and the path) for a
 * relative, missing or non-directory host path, a relative guest path, a guest path
 * given twice or "/", more than MAX_MOUNTS mounts, `rootReadOnly` without `root`.
 */
export function checkDirectoryShares(opts: { root?: string; rootReadOnly?: boolean; mounts?: readonly DirectoryMount[] }): DirectoryShares | null {
  const { root, rootReadOnly, mounts } = opts;
  if (rootReadOnly !== undefined && typeof rootReadOnly !== 'boolean') throw new TsiboxError('INVALID_ARGUMENT', 'rootReadOnly must be a boolean');
  if (rootReadOnly === true && root === undefined) throw new TsiboxError('INVALID_ARGUMENT', 'rootReadOnly needs root (the default busybox root is in guest RAM)');
  if (mounts !== undefined && !Array.isArray(mounts)) throw new TsiboxError('INVALID_ARGUMENT', 'mounts must be an array of { hostPath, guestPath, readOnly? }');
  if (root === undefined && (mounts ?? []).length === 0) return null;
  const shares: DirectoryShares = { root: null, mounts: [] };
  if (root !== undefined) shares.root = { hostPath: hostDirectory('root', root), tag: ROOT_TAG, readOnly: rootReadOnly === true };
  if ((mounts ?? []).length > MAX_MOUNTS) throw new TsiboxError('INVALID_ARGUMENT', `mounts: at most ${MAX_MOUNTS} mounts, got ${(mounts ?? []).length}`);
  const seen = new Set<string>();
  (mounts ?? []).forEach((m, i) => {
    if (typeof m !== 'object' || m === null) throw new TsiboxError('INVALID_ARGUMENT', `mounts[${i}] must be { hostPath, guestPath, readOnly? }`);
    const hostPath = hostDirectory(`mounts[${i}].hostPath`, m.hostPath);
    const guestPath = guestDirectory(`mounts[${i}].guestPath`, m.guestPath);
    if (seen.has(guestPath)) throw new TsiboxError('INVALID_ARGUMENT', `mounts: guest path ${guestPath} is given twice`);
    seen.add(guestPath);
    if (m.readOnly !== undefined && typeof m.readOnly !== 'boolean') throw new TsiboxError('INVALID_ARGUMENT', `mounts[${i}].readOnly must be a boolean`);
    shares.mounts.push({ hostPath, guestPath, tag: `${MOUNT_TAG_PREFIX}${i}`, readOnly: m.readOnly === true });
  });
  return shares;
}

/** An absolute path of an existing host directory, else INVALID_ARGUMENT naming `what`. */
function hostDirectory(what: string, p: unknown): string {
  if (typeof p !== 'string' || p === '') throw new TsiboxError('INVALID_ARGUMENT', `${what} must be a host directory path`);
  if (!isAbsolute(p)) throw new TsiboxError('INVALID_ARGUMENT', `${what} must be an absolute host path, got ${JSON.stringify(p)}`);
  if (p.includes('\0')) throw new TsiboxError('INVALID_ARGUMENT', `${what} contains a NUL byte`);
  let isDir: boolean;
  try {
    isDir = statSync(p).isDirectory();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new TsiboxError('INVALID_ARGUMENT', `${what}: ${p} cannot be used (${code === 'ENOENT' ? 'it does not exist' : code})`, { cause: err });
  }
  if (!isDir) throw new TsiboxError('INVALID_ARGUMENT', `${what}: ${p} is not a directory`);
  // virtiofsd refuses a source that is a symlink ("source is not a directory", after the
  // VM started): hand it the directory the path leads to.
  return realpathSync(p);
}

/** An absolute guest path without NUL bytes, else INVALID_ARGUMENT. */
function absoluteGuestPath(what: string, p: unknown): string {
  if (typeof p !== 'string' || !p.startsWith('/')) throw new TsiboxError('INVALID_ARGUMENT', `${what} must be an absolute guest path, got ${JSON.stringify(p)}`);
  if (p.includes('\0')) throw new TsiboxError('INVALID_ARGUMENT', `${what} contains a NUL byte`);
  return p;
}

/** SandboxOptions.binds: guest bind mounts init makes after the mounts. */
export interface GuestBind {
  source: string;
  path: string;
  readOnly?: boolean;
}

/** At most this many SandboxOptions.binds. */
export const MAX_BINDS = 64;
/** Longest bind path (bytes): Linux PATH_MAX. */
const MAX_BIND_PATH = 4096;

/**
 * Checks SandboxOptions.binds: at most MAX_BINDS, each `source` and `path` an absolute
 * guest path without NUL of at most 4096 bytes; returns clean copies. INVALID_ARGUMENT
 * naming the entry otherwise.
 */
export function checkGuestBinds(binds: readonly GuestBind[]): GuestBind[] {
  if (!Array.isArray(binds) || binds.length > MAX_BINDS) throw new TsiboxError('INVALID_ARGUMENT', `binds must be an array of at most ${MAX_BINDS} entries`);
  return binds.map((b, i) => {
    for (const k of ['source', 'path'] as const) {
      const p = absoluteGuestPath(`binds[${i}].${k}`, (b as Partial<GuestBind> | undefined)?.[k]);
      if (Buffer.byteLength(p) > MAX_BIND_PATH) throw new TsiboxError('INVALID_ARGUMENT', `binds[${i}].${k} is longer than ${MAX_BIND_PATH} bytes`);
    }
    return { source: b.source, path: b.path, ...(b.readOnly === true ? { readOnly: true } : {}) };
  });
}

/** A normalised absolute guest path other than "/" and outside /proc, /sys, /dev, else INVALID_ARGUMENT. */
function guestDirectory(what: string, given: unknown): string {
  const p = absoluteGuestPath(what, given);
  const parts = p.split('/').filter((s) => s !== '' && s !== '.');
  if (parts.includes('..')) throw new TsiboxError('INVALID_ARGUMENT', `${what} must not contain "..", got ${JSON.stringify(p)}`);
  if (parts.length === 0) throw new TsiboxError('INVALID_ARGUMENT', `${what} cannot be "/" (use root for the guest's root)`);
  // init mounts these itself; a share over them hides /proc/mounts, /dev/null and the like.
  if (['proc', 'sys', 'dev'].includes(parts[0]!)) {
    throw new TsiboxError('INVALID_ARGUMENT', `${what} cannot be /${parts[0]} or under it (init mounts proc, sysfs and devtmpfs there), got ${JSON.stringify(p)}`);
  }
  return `/${parts.join('/')}`;
}
