// The synthetic test guests (and anything else under native/) are built by
// `make -C native` on first use, so a fresh checkout needs no separate build step.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { TsiboxError } from '../errors.js';
import { PACKAGE_ROOT } from '../paths.js';

const execFileP = promisify(execFile);

/**
 * Runs `make -s -C native` unless every path in `files` exists already.
 * @throws TsiboxError NOT_SUPPORTED when make fails or does not produce them.
 */
export async function ensureNativeFiles(files: readonly string[]): Promise<void> {
  const missing = files.filter((p) => !existsSync(p));
  if (missing.length === 0) return;
  try {
    await execFileP('make', ['-s', '-C', join(PACKAGE_ROOT, 'native')], { maxBuffer: 16 << 20 });
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new TsiboxError('NOT_SUPPORTED', `building native/ (needed for ${missing.join(', ')}) failed: ${(e.stderr ?? e.message).trim()}`, { cause: err });
  }
  const still = missing.filter((p) => !existsSync(p));
  if (still.length > 0) throw new TsiboxError('NOT_SUPPORTED', `make -C native did not produce ${still.join(', ')}`);
}
