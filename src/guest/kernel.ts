/** The guest kernel: located in the cache or built by scripts/build-kernel.sh. */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { queryScript, runScript, type ProgressFn } from './build.js';

export interface KernelPaths {
  /** Cache directory: ~/.cache/tsibox/kernel/<key>. */
  dir: string;
  /** Uncompressed ELF kernel (has a PVH note; for the 64-bit boot protocol loader). */
  vmlinux: string;
  /** Compressed bzImage (for QEMU -kernel and the bzImage loader path). */
  bzImage: string;
  /** The kernel .config used. */
  config: string;
}

function pathsIn(dir: string): KernelPaths {
  return { dir, vmlinux: join(dir, 'vmlinux'), bzImage: join(dir, 'bzImage'), config: join(dir, 'config') };
}

/** The cached kernel for the current sources, or undefined when it is not built yet. */
export function kernelPaths(): KernelPaths | undefined {
  const dir = queryScript('build-kernel.sh', ['--print-path']);
  if (dir === undefined) return undefined;
  const p = pathsIn(dir);
  return existsSync(p.vmlinux) && existsSync(p.bzImage) ? p : undefined;
}

export interface EnsureOptions {
  /** Progress lines from the build (prefixed "tsibox-kernel:"). */
  onProgress?: ProgressFn;
  /** Rebuild even when cached. */
  force?: boolean;
}

/**
 * The cached kernel, building it first when missing (installs Debian's
 * linux-source-6.1 and build tools when run as root; about 4 minutes on 2 cores).
 */
export async function ensureKernel(opts: EnsureOptions = {}): Promise<KernelPaths> {
  if (!opts.force) {
    const p = kernelPaths();
    if (p !== undefined) return p;
  }
  const dir = await runScript('build-kernel.sh', opts.force ? ['--force'] : [], opts.onProgress);
  return pathsIn(dir);
}
