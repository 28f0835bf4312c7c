// Runs the real `tsibox` command (bin/tsibox.js → dist/src/cli/main.js) as a child.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { PACKAGE_ROOT } from '../../src/paths.js';

export const BIN = join(PACKAGE_ROOT, 'bin', 'tsibox.js');

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

export function tsibox(args: string[], timeoutMs = 30_000): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** A Writable that keeps what is written, for in-process runCli calls. */
export function capture(): Writable & { text: () => string } {
  const chunks: Buffer[] = [];
  const w = new Writable({
    write(chunk: Buffer | string, _enc, cb) { chunks.push(Buffer.from(chunk)); cb(); },
  });
  return Object.assign(w, { text: () => Buffer.concat(chunks).toString('utf8') });
}
