// Starting and stopping the real vhost-user back ends the front-end tests talk to
// (Debian 12: virtiofsd and qemu-storage-daemon from qemu-system-common). Every wait
// is bounded; processes are killed by their own PID only.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import { killOnExit } from '../../src/sys/helper-programs.js';

export const VIRTIOFSD = process.env['TSIBOX_VIRTIOFSD'] ?? '/usr/lib/qemu/virtiofsd';
export const QSD = process.env['TSIBOX_QEMU_STORAGE_DAEMON'] ?? '/usr/bin/qemu-storage-daemon';

/** Why a binary cannot be used here, or null when it can. */
export function missing(path: string): string | null {
  try {
    accessSync(path, fsConstants.X_OK);
    return null;
  } catch {
    return `${path} is not installed (Debian 12: qemu-system-common)`;
  }
}

export interface BackendProcess {
  child: ChildProcess;
  /** stdout+stderr so far (diagnostics for failed assertions). */
  output(): string;
  /** Resolves with the exit code (or signal name) once it exited, or null at the deadline. */
  waitExit(timeoutMs: number): Promise<number | string | null>;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it exited. Idempotent. */
  stop(graceMs?: number): Promise<number | string | null>;
}

export function startBackend(path: string, args: string[]): BackendProcess {
  const child = spawn(path, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  killOnExit(child);
  let out = '';
  child.stdout?.on('data', (b: Buffer) => { out += b.toString(); });
  child.stderr?.on('data', (b: Buffer) => { out += b.toString(); });
  const exited = new Promise<number | string>((res) => {
    child.once('exit', (code, signal) => { res(code ?? signal ?? 'unknown'); });
  });
  const waitExit = (timeoutMs: number): Promise<number | string | null> => {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      exited,
      new Promise<null>((res) => { timer = setTimeout(() => res(null), timeoutMs); }),
    ]).finally(() => clearTimeout(timer));
  };
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  return {
    child,
    output: () => out,
    waitExit,
    stop: async (graceMs = 2000) => {
      if (running()) child.kill('SIGTERM');
      const r = await waitExit(graceMs);
      if (r !== null) return r;
      if (running()) child.kill('SIGKILL');
      return waitExit(2000);
    },
  };
}
