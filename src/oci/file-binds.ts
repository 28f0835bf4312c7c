// Bind mounts of single host files (podman's /etc/resolv.conf, /etc/hosts, /etc/hostname,
// /run/.containerenv; containerd's none by default). virtio-fs shares directories, so the
// monitor gathers the files into one private staging directory of the container's state
// (hard links, so the engine's later edits show; a copy across file systems), shares it at
// STAGING_GUEST_PATH, and guest init binds each file onto its destination
// (SandboxOptions.binds, `tsibox.bind`).
import { copyFileSync, linkSync, mkdirSync, realpathSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { TsiboxError } from '../errors.js';
import type { DirectoryMount, GuestBind } from '../sandbox.js';
import type { FileBind } from './config-mounts.js';

/** Where the staging share appears in the guest (init's /run is a tmpfs, so this works on a read-only root). */
export const STAGING_GUEST_PATH = '/run/.tsibox-oci-files';

/**
 * Stages `binds` in `dir` (made fresh, 0700) and returns the share and the guest binds,
 * or null when there are none. A source that is not a regular file (after symlinks) is
 * INVALID_ARGUMENT naming it.
 */
export function stageFileBinds(binds: readonly FileBind[], dir: string): { mount: DirectoryMount; binds: GuestBind[] } | null {
  if (binds.length === 0) return null;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const guest: GuestBind[] = binds.map((b, i) => {
    let source: string;
    try {
      source = realpathSync(b.source);
      if (!statSync(source).isFile()) throw new Error('not a regular file');
    } catch (err) {
      throw new TsiboxError('INVALID_ARGUMENT', `config.json: mounts: the file bind source ${b.source} (for ${b.destination}): ${(err as Error).message}`);
    }
    const staged = join(dir, String(i));
    try {
      linkSync(source, staged);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
      copyFileSync(source, staged);
    }
    return { source: `${STAGING_GUEST_PATH}/${i}`, path: b.destination, ...(b.readOnly ? { readOnly: true } : {}) };
  });
  // Writable when any bind is (podman's /etc/hosts is rw); each read-only bind is remounted read-only in the guest.
  return { mount: { hostPath: dir, guestPath: STAGING_GUEST_PATH, readOnly: binds.every((b) => b.readOnly) }, binds: guest };
}
