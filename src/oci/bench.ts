// `tsibox bench oci`: the wall time of one whole container through the OCI runtime's
// command line, driven the way an engine drives it (docs/oci.md "Lifecycle"):
// `tsibox-oci create --bundle B --pid-file F ID` → `start ID` → the process the pid file
// names has ended → `delete ID`, each command a fresh process. Baseline: runc (Debian's
// runc package) with the same config.json, in the same run. The bundle is `runc spec`'s
// config with the Debian test root as root (read-only), `/bin/true` as the process and no
// terminal. It lives here, not in src/bench/, because it drives src/oci/'s program
// (src/bench/ sits below src/oci/); the CLI registers it (src/cli/commands/bench.ts).
//
// Without a subreaper the container's process is reparented to init when create exits,
// so its end is seen by polling /proc/PID/stat every POLL_MS: gone, a zombie, or a new
// start time (the pid reused). Both runtimes are polled the same way.
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { TsiboxError } from '../errors.js';
import { machineInfo } from '../bench/machine.js';
import type { BenchDefinition } from '../bench/registry.js';
import { median, round } from '../bench/stats.js';
import { chooseEngine, qemuAccel, type EngineChoice } from '../engine/select.js';
import { findVirtiofsd, VIRTIOFSD_DEBIAN_PACKAGE } from '../engine/virtiofsd.js';
import { ensureInitramfs, ensureKernel, testRootPath } from '../guest/index.js';
import { PACKAGE_ROOT } from '../paths.js';
import { findExecutable } from '../sys/helper-programs.js';
import { ANNOTATION } from './config.js';

/** How often the end of the container's process is polled. */
const POLL_MS = 2;
/** Limits for one runtime command and for the process to end after `start`. */
const COMMAND_TIMEOUT_MS = 120_000;
const EXIT_TIMEOUT_MS = 120_000;

const PHASES = ['create', 'start', 'exit', 'delete'] as const;
type Phase = (typeof PHASES)[number];
type Timing = Record<Phase | 'total', number>;

/** One runtime: its command, its own --root, its bundle, the containers not yet deleted. */
interface Runtime {
  label: string;
  argv: string[];
  root: string;
  bundle: string;
  dir: string;
  live: Set<string>;
}

export const ociBench: BenchDefinition = {
  name: 'oci',
  summary: 'one whole /bin/true container through tsibox-oci create/start/exit/delete vs runc, same bundle (Debian test root)',
  defaultIterations: 1,
  defaultRuns: 5,
  async run(opts) {
    const runc = findExecutable('runc', '');
    if (runc === undefined) throw new TsiboxError('NOT_SUPPORTED', 'bench oci needs runc on PATH for its baseline (Debian package runc)');
    const rootfs = testRootPath();
    if (rootfs === undefined) throw new TsiboxError('NOT_SUPPORTED', 'bench oci needs the Debian test root: run `sudo bash scripts/build-test-root.sh`');
    if (process.getuid?.() !== 0) throw new TsiboxError('NOT_SUPPORTED', 'bench oci needs root (tsibox-oci and runc both do)');
    if (findVirtiofsd() === undefined) throw new TsiboxError('NOT_SUPPORTED', `bench oci needs virtiofsd (Debian package ${VIRTIOFSD_DEBIAN_PACKAGE})`);
    const choice = (opts.engine ?? 'auto') as EngineChoice;
    const engine = (await chooseEngine(choice)).engine;
    const accel = engine === 'qemu' ? await qemuAccel() : undefined;
    // Built outside the timing (the monitor would build them on the first create).
    await ensureKernel({ onProgress: (l) => opts.progress?.(l) });
    await ensureInitramfs({ onProgress: (l) => opts.progress?.(l) });
    const runcVersion = spawnSync(runc, ['--version'], { encoding: 'utf8' }).stdout?.split('\n')[0]?.trim() ?? 'runc';

    const work = mkdtempSync(join(tmpdir(), 'tsibox-bench-oci-'));
    const runtimes: Runtime[] = [];
    try {
      const config = runcSpec(runc, join(work, 'spec'), rootfs);
      const ours = runtime(work, 'ours', [process.execPath, join(PACKAGE_ROOT, 'bin', 'tsibox-oci.js')],
        choice === 'auto' ? config : { ...config, annotations: { ...(config['annotations'] as object | undefined), [ANNOTATION.engine]: choice } });
      const theirs = runtime(work, 'runc', [runc], config);
      runtimes.push(ours, theirs);
      const tag = randomBytes(3).toString('hex');
      const a: Timing[] = [];
      const b: Timing[] = [];
      // One warm-up of each (page cache, Node's compile cache), then alternate.
      for (let i = -1; i < opts.runs; i++) {
        const x = await container(ours, `bench-${tag}-${i + 1}`);
        const y = await container(theirs, `bench-${tag}-${i + 1}`);
        if (i >= 0) {
          a.push(x);
          b.push(y);
          opts.progress?.(`run ${i + 1}/${opts.runs}: tsibox-oci ${describe(x)}; runc ${describe(y)}`);
        }
      }
      const value = median(a.map((s) => s.total));
      const baseline = median(b.map((s) => s.total));
      return [{
        bench: 'oci', value: round(value), unit: 'ms', baseline: round(baseline), ratio: round(value / baseline, 3),
        lowerIsBetter: true, iterations: 1, runs: opts.runs, engine, ...(accel !== undefined ? { accel } : {}), pollMs: POLL_MS,
        phases: medians(a), baselinePhases: medians(b),
        samples: a.map((s) => round(s.total)), baselineSamples: b.map((s) => round(s.total)),
        baselineRuntime: runcVersion,
        note: 'wall time of one container through the runtime command line, each command a fresh process '
          + '(node bin/tsibox-oci.js; runc): `create --bundle B --pid-file F ID` → `start ID` → the pid file\'s process has ended '
          + `(no subreaper: /proc/PID/stat polled every ${POLL_MS} ms for gone, zombie or a new start time) → \`delete ID\`. `
          + 'Bundle: `runc spec` with root = the Debian test root (read-only), process.args ["/bin/true"], terminal false; '
          + 'the same config.json for both. For tsibox-oci the pid is the monitor, which exits after the VM is down (the VM boots in the exit phase); '
          + 'for runc it is /bin/true itself. phases: medians of each step; an exit phase is rounded up to the poll that saw the end '
          + `(checked at once, then every ${POLL_MS} ms), so a process that ends just after start (runc's /bin/true) reads 0 or ~${POLL_MS} ms`,
        machine: machineInfo(),
      }];
    } finally {
      for (const rt of runtimes) {
        for (const id of rt.live) spawnSync(rt.argv[0]!, [...rt.argv.slice(1), '--root', rt.root, 'delete', '--force', id], { stdio: 'ignore', timeout: 60_000 });
      }
      rmSync(work, { recursive: true, force: true });
    }
  },
};

/** runc's default config.json, made ours: the test root read-only, /bin/true, no terminal. */
function runcSpec(runc: string, dir: string, rootfs: string): Record<string, unknown> {
  mkdirSync(dir);
  const r = spawnSync(runc, ['spec', '--bundle', dir], { encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new TsiboxError('NOT_SUPPORTED', `runc spec failed: ${(r.stderr ?? '').trim() || r.error?.message}`);
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, any>;
  config['root'] = { path: rootfs, readonly: true };
  config['process'].args = ['/bin/true'];
  config['process'].terminal = false;
  return config;
}

function runtime(work: string, label: string, argv: string[], config: Record<string, unknown>): Runtime {
  const dir = join(work, label);
  const bundle = join(dir, 'bundle');
  mkdirSync(bundle, { recursive: true });
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(config, null, 2));
  return { label, argv, root: join(dir, 'state'), bundle, dir, live: new Set() };
}

/** One container's life, timed step by step. Its stdout and stderr (and the commands') go to a file that must stay empty. */
async function container(rt: Runtime, id: string): Promise<Timing> {
  const pidFile = join(rt.dir, `${id}.pid`);
  const logFile = join(rt.dir, `${id}.log`);
  const log = openSync(logFile, 'w');
  try {
    rt.live.add(id);
    const t0 = performance.now();
    await command(rt, ['create', '--bundle', rt.bundle, '--pid-file', pidFile, id], log, logFile);
    const t1 = performance.now();
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    if (!Number.isSafeInteger(pid) || pid <= 0) throw new TsiboxError('VM_ERROR', `${rt.label}: the pid file holds no pid`);
    const started = startTime(pid);
    await command(rt, ['start', id], log, logFile);
    const t2 = performance.now();
    await ended(rt, pid, started);
    const t3 = performance.now();
    await command(rt, ['delete', id], log, logFile);
    const t4 = performance.now();
    rt.live.delete(id);
    const output = readFileSync(logFile, 'utf8');
    if (output !== '') throw new TsiboxError('VM_ERROR', `${rt.label}: /bin/true's container wrote: ${output.slice(-2000)}`);
    return { create: t1 - t0, start: t2 - t1, exit: t3 - t2, delete: t4 - t3, total: t4 - t0 };
  } finally {
    closeSync(log);
  }
}

/** Runs one runtime command with stdin /dev/null and stdout/stderr to `log`; throws when it fails. */
async function command(rt: Runtime, args: string[], log: number, logFile: string): Promise<void> {
  const child = spawn(rt.argv[0]!, [...rt.argv.slice(1), '--root', rt.root, ...args], { stdio: ['ignore', log, log], timeout: COMMAND_TIMEOUT_MS });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (c, s) => { resolve([c, s]); });
  });
  if (code !== 0) {
    const tail = readFileSync(logFile, 'utf8').slice(-2000).trim();
    throw new TsiboxError('VM_ERROR', `${rt.label} ${args[0]} failed (${code ?? signal}): ${tail}`);
  }
}

/** Field 22 of /proc/PID/stat (start time in clock ticks), or null when the process is gone or a zombie. */
function startTime(pid: number): string | null {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return fields[0] === 'Z' || fields[0] === 'X' ? null : fields[19] ?? null;
}

/** Resolves once process `pid` (started at `started`) has ended; polled, bounded. */
async function ended(rt: Runtime, pid: number, started: string | null): Promise<void> {
  const deadline = performance.now() + EXIT_TIMEOUT_MS;
  for (;;) {
    const now = startTime(pid);
    if (now === null || now !== started) return;
    if (performance.now() > deadline) throw new TsiboxError('VM_TIMEOUT', `${rt.label}: the container's process ${pid} still runs ${EXIT_TIMEOUT_MS / 1000} s after start`);
    await sleep(POLL_MS);
  }
}

function medians(samples: Timing[]): Record<Phase, number> {
  return Object.fromEntries(PHASES.map((p) => [p, round(median(samples.map((s) => s[p])))])) as Record<Phase, number>;
}

function describe(s: Timing): string {
  return `${round(s.total)} ms (${PHASES.map((p) => `${p} ${round(s[p])}`).join(', ')})`;
}
