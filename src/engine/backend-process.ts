// What virtiofsd and qemu-storage-daemon have in common as vhost-user back ends we
// start: a private directory with a listening socket to hand over, and one promise for
// the first of them to end while the VM runs.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HelperProcess, type HelperExit } from '../sys/helper-process.js';
import { TsiboxError } from '../errors.js';
import { listeningSocketFd } from '../sys/unix-listen.js';

/**
 * A new 0700 directory under the temp dir (`prefix` + random) holding a blocking
 * listening unix socket named `socketName`: the back end gets `fd` and is listening
 * before its front end connects. The directory is removed again when the socket fails.
 */
export function privateListeningSocket(prefix: string, socketName: string): { dir: string; sock: string; fd: number } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const sock = join(dir, socketName);
  try {
    return { dir, sock, fd: listeningSocketFd(sock) };
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/**
 * Resolves with a DEVICE_ERROR ("LABEL (pid N) was killed by … while the sandbox ran",
 * with the last 5 lines of its stderr) when the first of `backends` ends while
 * `closing()` is false and `expected` (default: none) does not accept the exit.
 */
export function firstUnexpectedExit(
  backends: ReadonlyArray<{ label: string; helper: HelperProcess }>,
  closing: () => boolean,
  expected: (ex: HelperExit) => boolean = () => false,
): Promise<TsiboxError> {
  return new Promise<TsiboxError>((resolve) => {
    for (const { label, helper } of backends) {
      void helper.exited.then((ex) => {
        if (closing() || expected(ex)) return;
        const err = helper.stderr.split('\n').slice(-5).join('\n');
        resolve(new TsiboxError('DEVICE_ERROR',
          `${label} (pid ${helper.pid}) ${HelperProcess.describe(ex)} while the sandbox ran; the sandbox was stopped${err ? `; its last lines:\n${err}` : ''}`));
      });
    }
  });
}
