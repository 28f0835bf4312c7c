// bench fs: a host directory through virtio-fs (virtiofsd, cache=auto; a writable
// `mounts` entry under the default busybox root) against the same work on the same host
// directory in the same run. The same busybox shell script does the work on both sides,
// timed inside the guest (monotonic ns from /proc/timer_list) so boot is not counted:
//  - fs-read-cold: `dd bs=1M` of a 256 MiB file whose pages were just dropped from the
//    host page cache (guest cache: empty, a fresh VM) — disk + virtiofsd + FUSE;
//  - fs-read-warm: the same read again, host cache warm, guest cache dropped
//    (drop_caches in the guest) — the virtio-fs transport alone; on the host side this
//    is a read from the page cache;
//  - fs-create: `echo x > f$i` for --iterations files (default 10,000) in a new
//    directory, no fsync; the same loop on the guest's tmpfs is reported with it
//    (`guestTmpfs`) to show what the emulated guest CPU alone costs.
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { closeSync, fsyncSync, mkdtempSync, openSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TsiboxError } from '../errors.js';
import { Sandbox } from '../sandbox.js';
import { machineInfo } from './machine.js';
import { dropFileCache } from './page-cache.js';
import type { BenchDefinition, BenchResult } from './registry.js';
import { median, round } from './stats.js';

const FILE_MIB = 256;
const GUEST_DIR = '/mnt/bench';
type Metric = 'read-cold' | 'read-warm' | 'create' | 'create-tmpfs';

/** The work, in busybox sh; prints `<metric> <ns>` lines. `now` prints monotonic ns. */
function script(now: string, dir: string, files: number, tag: string, guest: boolean): string {
  const read = (m: Metric): string => `t0=$(now); busybox dd if=${dir}/big of=/dev/null bs=1M 2>/dev/null || exit 1; t1=$(now); echo "${m} $((t1 - t0))"`;
  const create = (m: Metric, d: string): string =>
    `mkdir ${d} || exit 1; t0=$(now); i=0; while [ $i -lt ${files} ]; do echo x > ${d}/f$i || exit 1; i=$((i + 1)); done; t1=$(now); echo "${m} $((t1 - t0))"`;
  return [
    `now() { ${now}; }`,
    read('read-cold'),
    // In the guest the file is in its page cache now; drop that (the host's stays warm).
    ...(guest ? ['sync; echo 3 > /proc/sys/vm/drop_caches'] : []),
    read('read-warm'),
    create('create', `${dir}/small-${tag}`),
    ...(guest ? [create('create-tmpfs', '/tmp/small')] : []),
  ].join('\n');
}

function parse(out: string, what: string): Partial<Record<Metric, number>> {
  const r: Partial<Record<Metric, number>> = {};
  for (const m of out.matchAll(/^(read-cold|read-warm|create|create-tmpfs) (\d+)$/gm)) r[m[1] as Metric] = Number(m[2]) / 1e9;
  if (r['read-cold'] === undefined || r['read-warm'] === undefined || r.create === undefined) {
    throw new TsiboxError('VM_ERROR', `bench fs: the ${what} script did not finish: ${out.slice(-500)}`);
  }
  return r;
}

/** A FILE_MIB MiB file of random data (incompressible), written back to the disk. */
function makeBigFile(path: string): void {
  const chunk = randomBytes(1024 * 1024);
  const fd = openSync(path, 'w');
  try {
    for (let i = 0; i < FILE_MIB; i++) writeSync(fd, chunk);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

const FS_NAMES: Record<number, string> = { 0xef53: 'ext4', 0x01021994: 'tmpfs', 0x58465342: 'xfs', 0x9123683e: 'btrfs', 0x794c7630: 'overlayfs' };

export const fsBench: BenchDefinition = {
  name: 'fs',
  summary: 'virtio-fs (a writable mount): cold and warm sequential read of 256 MiB, MiB/s, and creating --iterations small files, files/s, vs the same on the host directory',
  defaultIterations: 10_000,
  defaultRuns: 3,
  async run(opts): Promise<BenchResult[]> {
    const files = opts.iterations;
    const dir = mkdtempSync(join(tmpdir(), 'tsibox-bench-fs-'));
    const hostFs = FS_NAMES[statfsSync(dir).type] ?? `0x${statfsSync(dir).type.toString(16)}`;
    const ours: Record<Metric, number[]> = { 'read-cold': [], 'read-warm': [], create: [], 'create-tmpfs': [] };
    const base: Record<Metric, number[]> = { 'read-cold': [], 'read-warm': [], create: [], 'create-tmpfs': [] };
    const leftCached: Array<number | null> = [];
    try {
      opts.progress?.(`fs: writing a ${FILE_MIB} MiB file in ${dir} (${hostFs})`);
      makeBigFile(join(dir, 'big'));
      for (let i = 0; i < opts.runs; i++) {
        leftCached.push(dropFileCache(join(dir, 'big')));
        const h = spawnSync('busybox', ['sh', '-c', script('/usr/bin/date +%s%N', dir, files, `host${i}`, false)], { encoding: 'utf8', timeout: 600_000 });
        if (h.error !== undefined) throw new TsiboxError('VM_ERROR', `bench fs: host busybox sh: ${h.error.message} (Debian: busybox-static)`);
        const hr = parse(h.stdout + h.stderr, 'host');
        leftCached.push(dropFileCache(join(dir, 'big')));
        const g = await Sandbox.run({
          argv: ['sh', '-c', script("sed -n '/^now at /{s/[^0-9]//g;p;q;}' /proc/timer_list", GUEST_DIR, files, `guest${i}`, true)],
          mounts: [{ hostPath: dir, guestPath: GUEST_DIR }], timeoutMs: 900_000,
          engine: opts.engine === 'kvm' ? 'kvm' : 'qemu',
        });
        const gr = parse((g.stdout?.toString() ?? '') + (g.stderr?.toString() ?? ''), `guest (exit ${g.exitCode})`);
        for (const m of Object.keys(ours) as Metric[]) {
          if (gr[m] !== undefined) ours[m].push(gr[m]);
          if (hr[m] !== undefined) base[m].push(hr[m]);
        }
        rmSync(join(dir, `small-host${i}`), { recursive: true, force: true });
        rmSync(join(dir, `small-guest${i}`), { recursive: true, force: true });
        opts.progress?.(`fs run ${i + 1}/${opts.runs} (guest / host): cold read ${round(FILE_MIB / gr['read-cold']!)} / ${round(FILE_MIB / hr['read-cold']!)} MiB/s, warm read ${round(FILE_MIB / gr['read-warm']!)} / ${round(FILE_MIB / hr['read-warm']!)} MiB/s, create ${round(files / gr.create!)} / ${round(files / hr.create!)} files/s (guest tmpfs ${gr['create-tmpfs'] === undefined ? '?' : round(files / gr['create-tmpfs'])})`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    const common = { lowerIsBetter: false, runs: opts.runs, hostFs, machine: machineInfo() };
    const rate = (work: number, seconds: number[]): number[] => seconds.map((s) => work / s);
    const row = (bench: string, unit: string, work: number, m: Metric, method: string, extra: Record<string, unknown> = {}): BenchResult => {
      const v = median(rate(work, ours[m]));
      const b = median(rate(work, base[m]));
      return {
        bench, value: round(v), unit, baseline: round(b), ratio: round(v / b, 4), iterations: work, ...common,
        samples: rate(work, ours[m]).map((x) => round(x)), baselineSamples: rate(work, base[m]).map((x) => round(x)),
        baselineName: `the same busybox script on the host directory (${hostFs})`, method, ...extra,
      };
    };
    const tmpfs = ours['create-tmpfs'].length > 0 ? round(median(rate(files, ours['create-tmpfs']))) : null;
    return [
      row('fs-read-cold', 'MiB/s', FILE_MIB, 'read-cold', `busybox dd bs=1M of a ${FILE_MIB} MiB file through a virtio-fs mount, timed in the guest; the file's host pages dropped first (fsync + POSIX_FADV_DONTNEED), guest cache empty (fresh VM); baseline: the same on the host, same dropping; median over runs`, { hostCachedBytesAfterDrop: leftCached }),
      row('fs-read-warm', 'MiB/s', FILE_MIB, 'read-warm', `the same read right after the cold one: the host page cache holds the file, the guest's was dropped (drop_caches), so this is the virtio-fs transport (FUSE over vhost-user, virtiofsd) alone; baseline: a read from the host page cache`),
      row('fs-create', 'files/s', files, 'create', `${files} x 'echo x > DIR/f$i' in a busybox sh loop into a new directory on a virtio-fs mount, no fsync, timed in the guest; baseline: the same loop on the host directory`, { guestTmpfs: tmpfs, guestTmpfsNote: 'the same loop on the guest tmpfs: the guest CPU (TCG here) alone' }),
    ];
  },
};
