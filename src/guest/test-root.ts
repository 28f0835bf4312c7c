/**
 * The Debian test root: a minimal Debian 12 root directory (debootstrap minbase with
 * python3, curl and iperf3) for tests that need real guest programs. Built once by
 * scripts/build-test-root.sh and cached outside the repo.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { queryScript, runScript } from './build.js';
import type { EnsureOptions } from './kernel.js';

/**
 * The cached root directory (…/tsibox/test-root/<key>/root) for the current recipe,
 * or undefined when it is not built yet. A root counts as built once its build-info,
 * written last before the atomic rename, exists.
 */
export function testRootPath(): string | undefined {
  const p = queryScript('build-test-root.sh', ['--print-path']);
  return p !== undefined && existsSync(join(dirname(p), 'build-info')) ? p : undefined;
}

/**
 * The cached test root, building it first when missing (about a minute with a local
 * Debian mirror; ~115 MiB). Building needs root and network access to the Debian
 * archive. Fails with TsiboxError('GUEST_BUILD') carrying the script's last lines.
 */
export async function ensureTestRoot(opts: EnsureOptions = {}): Promise<string> {
  if (!opts.force) {
    const p = testRootPath();
    if (p !== undefined) return p;
  }
  return runScript('build-test-root.sh', opts.force ? ['--force'] : [], opts.onProgress);
}
