// The C side of the benchmarks: the synthetic guests and the cvmm baseline VMM, built
// with `make -C native` when missing, and run as child processes.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TsiboxError } from '../errors.js';
import { NATIVE_BUILD, testGuestPath } from '../paths.js';
import { ensureNativeFiles } from '../vmm/native-build.js';

const execFileP = promisify(execFile);

export const CVMM_PATH = join(NATIVE_BUILD, 'bench', 'cvmm');

/** Builds native/ (guests and cvmm) unless every file named is already there. */
export async function ensureNativeBuilt(guests: readonly string[], needCvmm = false): Promise<void> {
  await ensureNativeFiles([...guests.map(testGuestPath), ...(needCvmm ? [CVMM_PATH] : [])]);
}

export interface CvmmOptions {
  cpl?: 0 | 3;
  param: number;
  memMiB?: number;
}

/** Runs `cvmm <guest> <mode>` and returns the JSON object it prints. */
export async function runCvmm(guest: string, mode: 'exits' | 'ioeventfd' | 'loop', opts: CvmmOptions): Promise<Record<string, number | string>> {
  const args = ['--cpl', String(opts.cpl ?? 3), '--mem', String(opts.memMiB ?? 16), '--param', String(opts.param), testGuestPath(guest), mode];
  let stdout: string;
  try {
    ({ stdout } = await execFileP(CVMM_PATH, args, { timeout: 120_000 }));
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new TsiboxError('VM_ERROR', `cvmm ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
  const line = stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as Record<string, number | string>;
  } catch {
    throw new TsiboxError('VM_ERROR', `cvmm printed no JSON: ${JSON.stringify(stdout)}`);
  }
}
