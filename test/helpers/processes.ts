// /proc scans for the lifetime tests: which processes mention a path, which descend
// from a PID. Read-only; tests kill only PIDs of processes they started.
import { readdirSync, readFileSync } from 'node:fs';

function pids(): number[] {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map(Number);
}

/** argv of `pid` (null when gone). */
export function argvOf(pid: number): string[] | null {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
  } catch {
    return null;
  }
}

/** PIDs whose command line contains `text` (this process excluded). */
export function processesMentioning(text: string): number[] {
  return pids().filter((p) => p !== process.pid && (argvOf(p)?.some((a) => a.includes(text)) ?? false));
}

function parentOf(pid: number): number | null {
  try {
    const m = /^\d+ \(.*\) \S+ (\d+)/s.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** Every live descendant of `root`. */
export function descendants(root: number): number[] {
  const all = pids();
  const out: number[] = [];
  const want = new Set([root]);
  // Bounded: at most one pass per process.
  for (let pass = 0; pass < all.length; pass++) {
    let grew = false;
    for (const p of all) {
      if (want.has(p)) continue;
      const pp = parentOf(p);
      if (pp !== null && want.has(pp)) {
        want.add(p);
        out.push(p);
        grew = true;
      }
    }
    if (!grew) break;
  }
  return out;
}

/** Whether `pid` still runs (a zombie counts as gone). */
export function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Polls `cond` every 50 ms for at most `ms`. */
export async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return cond();
}

/**
 * SIGKILLs each of `pids`; one already gone is fine (a keeper killed first takes its
 * helper with it through pdeathsig).
 */
export function killAll(pids: readonly number[]): void {
  for (const p of pids) {
    try {
      process.kill(p, 'SIGKILL');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  }
}
