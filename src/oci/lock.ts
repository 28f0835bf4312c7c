// An exclusive lock on a path, so that concurrent runtime commands on one container
// serialise: flock(2) on a lock file, which the kernel releases if the holder dies (no
// stale locks). A holder may unlink the file (delete does); whoever then gets a lock on
// the old inode notices that the path no longer leads to it and tries again.
import { closeSync, fstatSync, openSync, statSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { TsiboxError } from '../errors.js';
import { EWOULDBLOCK, LOCK_EX, LOCK_NB, LOCK_UN, errno, sys, syscallError } from '../sys/libc.js';

export interface FileLock {
  readonly path: string;
  /** Releases the lock (idempotent). */
  release(): void;
}

export interface LockOptions {
  /** Give up after this long (default 10 s): TsiboxError INVALID_STATE. */
  timeoutMs?: number;
  /** How often a held lock is tried again (default 10 ms). */
  pollMs?: number;
}

export async function lockPath(path: string, opts: LockOptions = {}): Promise<FileLock> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  const pollMs = opts.pollMs ?? 10;
  for (;;) {
    const fd = openSync(path, 'a', 0o600);
    let held = false;
    try {
      if (sys.flock(fd, LOCK_EX | LOCK_NB) === 0) {
        held = true;
        if (sameFile(fd, path)) {
          let open = true;
          return {
            path,
            release(): void {
              if (!open) return;
              open = false;
              sys.flock(fd, LOCK_UN);
              closeSync(fd);
            },
          };
        }
      } else {
        const e = errno();
        if (e !== EWOULDBLOCK) throw syscallError(`flock(${path})`, e);
      }
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    // Not ours (held elsewhere, or the file was unlinked under us): let go and retry.
    if (held) sys.flock(fd, LOCK_UN);
    closeSync(fd);
    if (Date.now() >= deadline) throw new TsiboxError('INVALID_STATE', `${path} is locked by another command (waited ${opts.timeoutMs ?? 10_000} ms)`);
    await sleep(pollMs);
  }
}

function sameFile(fd: number, path: string): boolean {
  try {
    const a = fstatSync(fd);
    const b = statSync(path);
    return a.ino === b.ino && a.dev === b.dev;
  } catch {
    return false;
  }
}
