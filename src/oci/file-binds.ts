// Bind mounts of single host files (podman's /etc/resolv.conf, /etc/hosts, /etc/hostname,
// /run/.containerenv, `-v FILE:/path`; containerd's none by default). virtio-fs shares
// directories, so the monitor gathers the files into one private staging directory of
// the container's state, shares it at STAGING_GUEST_PATH, and guest init binds each file
// onto its destination (SandboxOptions.binds, `tsibox.bind`).
//
// The guest is root and can write anything in a writable share, whatever its binds say.
// So: all binds read-only → a read-only share (enforced by virtiofsd's read-only mount)
// of hard links, live; some read-write → a writable share where the read-write ones are
// hard links (the guest's writes reach the host file, as with runc) and the read-only
// ones are copies taken now (the guest can change only the copy). A read-write file on
// another file system than the state root cannot be hard-linked: it is a copy too, and
// the container's stderr says its writes stay in the container.
import { copyFileSync, linkSync, mkdirSync, realpathSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { TsiboxError } from '../errors.js';
import type { DirectoryMount, GuestBind } from '../sandbox.js';
import type { FileBind } from './config-mounts.js';

/** Where the staging share appears in the guest (init's /run is a tmpfs, so this works on a read-only root). */
export const STAGING_GUEST_PATH = '/run/.tsibox-oci-files';

/**
 * Stages `binds` in `dir` (made fresh, 0700) as described above and returns the share
 * and the guest binds, or null when there are none. `warn` gets a line for each
 * read-write bind that had to be copied. A source that is not a regular file (after
 * symlinks) is INVALID_ARGUMENT naming it.
 */
export function stageFileBinds(binds: readonly FileBind[], dir: string, warn: (line: string) => void = () => {}): { mount: DirectoryMount; binds: GuestBind[] } | null {
  if (binds.length === 0) return null;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const shareReadOnly = binds.every((b) => b.readOnly);
  const guest: GuestBind[] = binds.map((b, i) => {
    let source: string;
    try {
      source = realpathSync(b.source);
      if (!statSync(source).isFile()) throw new Error('not a regular file');
    } catch (err) {
      throw new TsiboxError('INVALID_ARGUMENT', `config.json: mounts: the file bind source ${b.source} (for ${b.destination}): ${(err as Error).message}`);
    }
    const staged = join(dir, String(i));
    if (b.readOnly && !shareReadOnly) copyFileSync(source, staged);
    else {
      try {
        linkSync(source, staged);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
        copyFileSync(source, staged);
        if (!b.readOnly) warn(`tsibox-oci: ${b.source} (bound at ${b.destination}) is on another file system than the runtime's state: the container gets a copy, and its writes do not reach ${b.source}\n`);
      }
    }
    return { source: `${STAGING_GUEST_PATH}/${i}`, path: b.destination, ...(b.readOnly ? { readOnly: true } : {}) };
  });
  return { mount: { hostPath: dir, guestPath: STAGING_GUEST_PATH, readOnly: shareReadOnly }, binds: guest };
}
