/**
 * The debug guest kernel (KASAN, lockdep, hung-task and soft-lockup detectors):
 * `scripts/build-kernel.sh --debug`, cached under its own key next to the normal kernel,
 * which it never replaces. For tests that read the guest's dmesg
 * (test/e2e/tsi-stress.test.ts); not part of the public API.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { queryScript, runScript } from '../../../src/guest/build.js';
import type { EnsureOptions, KernelPaths } from '../../../src/guest/kernel.js';

function pathsIn(dir: string): KernelPaths {
  return { dir, vmlinux: join(dir, 'vmlinux'), bzImage: join(dir, 'bzImage'), config: join(dir, 'config') };
}

/** The cached debug kernel for the current sources, or undefined when it is not built yet. */
export function debugKernelPaths(): KernelPaths | undefined {
  const dir = queryScript('build-kernel.sh', ['--debug', '--print-path']);
  if (dir === undefined) return undefined;
  const p = pathsIn(dir);
  return existsSync(p.vmlinux) && existsSync(p.bzImage) ? p : undefined;
}

/**
 * The cached debug kernel, building it first when missing (about 10 minutes on 2
 * cores; installs Debian's linux-source-6.1 and build tools when run as root).
 */
export async function ensureDebugKernel(opts: EnsureOptions = {}): Promise<KernelPaths> {
  if (!opts.force) {
    const p = debugKernelPaths();
    if (p !== undefined) return p;
  }
  const dir = await runScript('build-kernel.sh', opts.force ? ['--debug', '--force'] : ['--debug'], opts.onProgress);
  return pathsIn(dir);
}
