// Helper processes (QEMU, passt) must not outlive the sandbox that started them: they
// run under `setpriv --pdeathsig KILL` where util-linux has it, and any still running
// when this process exits normally are killed by PID.
import { spawnSync, type ChildProcess } from 'node:child_process';

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
