/** Running the guest build scripts (scripts/build-kernel.sh, scripts/build-initramfs.sh). */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TsiboxError } from '../errors.js';

export type ProgressFn = (line: string) => void;

/** The tsibox cache root: $XDG_CACHE_HOME/tsibox or ~/.cache/tsibox. */
export function cacheRoot(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg !== undefined && xdg !== '' ? xdg : join(homedir(), '.cache'), 'tsibox');
}

let root: string | undefined;

/** The package root (the directory holding scripts/ and native/). */
export function packageRoot(): string {
  if (root !== undefined) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'scripts', 'build-kernel.sh')) && existsSync(join(dir, 'native'))) return (root = dir);
    const up = dirname(dir);
    if (up === dir) throw new TsiboxError('GUEST_BUILD', 'cannot find the tsibox package root (scripts/build-kernel.sh)');
    dir = up;
  }
}

export function scriptPath(name: string): string {
  return join(packageRoot(), 'scripts', name);
}

/** Run a script synchronously for a quick answer (a key or a path); undefined on failure. */
export function queryScript(name: string, args: string[]): string | undefined {
  const r = spawnSync('bash', [scriptPath(name), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.status !== 0) return undefined;
  const out = r.stdout.trim().split('\n').pop();
  return out === undefined || out === '' ? undefined : out;
}

/**
 * Run a build script; every stderr line goes to onProgress, the last stdout line is
 * the result. Fails with TsiboxError('GUEST_BUILD') carrying the last stderr lines.
 */
export function runScript(name: string, args: string[], onProgress?: ProgressFn): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [scriptPath(name), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let errBuf = '';
    const tail: string[] = [];
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      errBuf += d;
      let nl: number;
      while ((nl = errBuf.indexOf('\n')) >= 0) {
        const line = errBuf.slice(0, nl);
        errBuf = errBuf.slice(nl + 1);
        tail.push(line);
        if (tail.length > 20) tail.shift();
        onProgress?.(line);
      }
    });
    child.on('error', (e) => reject(new TsiboxError('GUEST_BUILD', `cannot run ${name}: ${e.message}`, { cause: e })));
    child.on('close', (code, signal) => {
      if (errBuf !== '') {
        tail.push(errBuf);
        onProgress?.(errBuf);
      }
      const result = stdout.trim().split('\n').pop() ?? '';
      if (code === 0 && result !== '') resolve(result);
      else {
        const why = signal !== null ? `killed by ${signal}` : `exit status ${code}`;
        reject(new TsiboxError('GUEST_BUILD', `${name} failed (${why}):\n${tail.join('\n')}`));
      }
    });
  });
}
