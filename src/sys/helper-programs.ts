// Helper programs (QEMU, passt): finding them, and making sure they do not outlive the
// sandbox that started them. They run under `setpriv --pdeathsig KILL` where
// util-linux has it, and any still running when this process exits are killed by PID.
import { spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import { delimiter, join } from 'node:path';

let pdeathsigWrapper: string[] | null | undefined;

/** `setpriv --pdeathsig KILL --` when util-linux's setpriv supports it, else null. */
export function parentDeathWrapper(): string[] | null {
  if (pdeathsigWrapper === undefined) {
    const r = spawnSync('setpriv', ['--help'], { encoding: 'utf8' });
    pdeathsigWrapper = r.status === 0 && r.stdout.includes('--pdeathsig') ? ['setpriv', '--pdeathsig', 'KILL', '--'] : null;
  }
  return pdeathsigWrapper;
}

const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Kills `child` if this process exits while it still runs. */
export function killOnExit(child: ChildProcess): void {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const c of liveChildren) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    });
  }
}

/**
 * The path of executable `name`: `override` (or the environment variable
 * `envOverride`) when set, else the first match in PATH; undefined when none.
 */
export function findExecutable(name: string, envOverride: string, override?: string): string | undefined {
  const explicit = override ?? process.env[envOverride];
  if (explicit !== undefined && explicit !== '') return isExecutable(explicit) ? explicit : undefined;
  for (const dir of (process.env['PATH'] ?? '/usr/bin:/bin').split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, name);
    if (isExecutable(p)) return p;
  }
  return undefined;
}

function isExecutable(p: string): boolean {
  try {
    accessSync(p, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
}
