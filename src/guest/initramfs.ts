/** The default guest root: busybox-static + our init, as a gzip'd newc initramfs. */
import { existsSync } from 'node:fs';
import { queryScript, runScript } from './build.js';
import type { EnsureOptions } from './kernel.js';

/** The cached initramfs for the current sources, or undefined when not built yet. */
export function initramfsPath(): string | undefined {
  const p = queryScript('build-initramfs.sh', ['--print-path']);
  return p !== undefined && existsSync(p) ? p : undefined;
}

/** The cached initramfs, building it first when missing (about a second). */
export async function ensureInitramfs(opts: EnsureOptions = {}): Promise<string> {
  if (!opts.force) {
    const p = initramfsPath();
    if (p !== undefined) return p;
  }
  return runScript('build-initramfs.sh', opts.force ? ['--force'] : [], opts.onProgress);
}
