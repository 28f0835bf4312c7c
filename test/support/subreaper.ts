// Makes this (test) process a child subreaper (prctl(2) PR_SET_CHILD_SUBREAPER), as
// conmon and containerd's shim are, so that an OCI runtime's detached container process
// becomes our child once `create` exits, and its exit status can be collected
// (waitpid(2) with WNOHANG, polled: a blocking wait would stop the event loop).
import koffi from 'koffi';

const libc = koffi.load('libc.so.6');
const prctl = libc.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)');
const waitpid = libc.func('int waitpid(int pid, _Out_ int *status, int options)');
const PR_SET_CHILD_SUBREAPER = 36;
const WNOHANG = 1;

export function becomeSubreaper(): void {
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) !== 0) throw new Error(`prctl(PR_SET_CHILD_SUBREAPER) failed: errno ${koffi.errno()}`);
}

/**
 * Waits (polling every 50 ms, at most `timeoutMs`) for the child `pid` to exit; resolves
 * with its status as a shell shows it (the exit code, or 128+N for signal N), or null on
 * timeout.
 */
export async function reap(pid: number, timeoutMs: number): Promise<number | null> {
  const until = Date.now() + timeoutMs;
  const st = [0];
  for (;;) {
    const r = waitpid(pid, st, WNOHANG) as number;
    if (r === pid) {
      const s = st[0]!;
      return (s & 0x7f) === 0 ? (s >> 8) & 0xff : 128 + (s & 0x7f);
    }
    if (r < 0) throw new Error(`waitpid(${pid}) failed: errno ${koffi.errno()} (not our child?)`);
    if (Date.now() > until) return null;
    await new Promise((res) => setTimeout(res, 50));
  }
}
