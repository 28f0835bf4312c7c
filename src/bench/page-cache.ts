// Drops one file's pages from the host page cache, so that the next read of it (on the
// host or by virtiofsd for a guest) comes from the disk. Only that file: dropping the
// whole cache (/proc/sys/vm/drop_caches) would slow everything else on the machine.
import { spawnSync } from 'node:child_process';
import { TsiboxError } from '../errors.js';

/**
 * Writes the file's dirty pages back (`sync FILE`; only clean pages can be dropped),
 * then asks the kernel to drop its cached pages (GNU dd's documented idiom `iflag=nocache
 * count=0`, which is posix_fadvise(POSIX_FADV_DONTNEED) over the whole file). Returns the
 * bytes still cached afterwards according to util-linux `fincore`, or null without it.
 */
export function dropFileCache(path: string): number | null {
  for (const [cmd, args] of [['sync', [path]], ['dd', [`if=${path}`, 'iflag=nocache', 'count=0', 'status=none']]] as const) {
    const r = spawnSync(cmd, args, { encoding: 'utf8' });
    if (r.error !== undefined || r.status !== 0) {
      throw new TsiboxError('SYSCALL', `dropping ${path} from the page cache: ${cmd} failed: ${r.error?.message ?? r.stderr.trim()}`);
    }
  }
  const f = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], { encoding: 'utf8' });
  const n = f.status === 0 ? Number(f.stdout.trim()) : NaN;
  return Number.isFinite(n) ? n : null;
}
