// `tsibox bench memory`: what a sandbox costs in memory beyond its guest. A 256 MiB
// guest idles in `sleep`; we read /proc/<pid>/smaps of every process of the sandbox
// (tsibox itself; QEMU too under the QEMU engine) and report their RSS minus the
// guest RAM they have touched (the Rss of the guest-RAM mapping: the 256 MiB
// anonymous mapping under KVM, the shared memfd under QEMU). Baseline: the RSS of a
// bare `node` process idling, measured in the same run (our floor: Firecracker's VMM
// overhead is <= 5 MiB, but ours includes a Node runtime).
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { TsiboxError } from '../errors.js';
import { Sandbox } from '../sandbox.js';
import { machineInfo } from './machine.js';
import type { BenchDefinition, BenchResult } from './registry.js';
import { median, round } from './stats.js';

const GUEST_MIB = 256;
const KIB = 1024;

interface Smaps {
  /** Rss of the whole process (kB). */
  rss: number;
  /** Rss of the guest-RAM mapping (kB), 0 when none was found. */
  guest: number;
}

/** Sums /proc/<pid>/smaps: all Rss, and the Rss of mappings that are guest RAM. */
export function readSmaps(pid: number | 'self', isGuest: (header: string, sizeKb: number) => boolean): Smaps {
  const text = readFileSync(`/proc/${pid}/smaps`, 'utf8');
  let rss = 0;
  let guest = 0;
  let header = '';
  let size = 0;
  for (const line of text.split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) {
      header = line;
      size = 0;
    } else if (line.startsWith('Size:')) {
      size = Number(line.split(/\s+/)[1]);
    } else if (line.startsWith('Rss:')) {
      const kb = Number(line.split(/\s+/)[1]);
      rss += kb;
      if (isGuest(header, size)) guest += kb;
    }
  }
  return { rss, guest };
}

/**
 * The guest RAM mapping: the memfd QEMU and our vhost-user back end share, or our own
 * anonymous mmap. The kernel may merge the latter with an adjacent anonymous mapping
 * (measured: 256 MiB + 336 KiB), so an anonymous mapping of the guest's size plus less
 * than 8 MiB counts; the error is at most that neighbour's resident part.
 */
const guestMapping = (header: string, sizeKb: number): boolean => {
  if (/\/memfd:mem/.test(header)) return true; // QEMU's memory-backend-memfd, mapped by QEMU and by our back end
  const anonymous = /^\S+ \S+ \S+ \S+ 0\s*$/.test(header);
  return anonymous && sizeKb >= GUEST_MIB * KIB && sizeKb < (GUEST_MIB + 8) * KIB;
};

async function bareNodeRss(): Promise<number> {
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 3000)'], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 1000));
  try {
    return readSmaps(child.pid!, () => false).rss;
  } finally {
    child.kill('SIGKILL');
  }
}

async function sandboxOverhead(engine: 'kvm' | 'qemu'): Promise<{ overheadKb: number; rssKb: number; guestKb: number }> {
  let qemuPid: number | null = null;
  let ready!: () => void;
  const isReady = new Promise<void>((r) => { ready = r; });
  const stdout = new Writable({ write(chunk: Buffer, _e, done) { if (chunk.toString().includes('ready')) ready(); done(); } });
  const run = Sandbox.run({
    engine, memoryMiB: GUEST_MIB, argv: ['sh', '-c', 'echo ready; sleep 4'], stdout, logger: pino({ level: 'silent' }),
    ...(engine === 'qemu' ? { onQemuStart: (pid: number) => { qemuPid = pid; } } : {}),
  });
  await Promise.race([isReady, run.then(() => { throw new TsiboxError('VM_ERROR', 'the sandbox ended before it was idle'); })]);
  await new Promise((r) => setTimeout(r, 1000)); // idle
  const self = readSmaps('self', guestMapping);
  let rss = self.rss;
  let guest = self.guest;
  if (qemuPid !== null) {
    // setpriv execs QEMU in place, so the pid is QEMU's.
    const q = readSmaps(qemuPid, guestMapping);
    rss += q.rss;
    guest += q.guest;
  }
  const r = await run;
  if (r.exitCode !== 0) throw new TsiboxError('VM_ERROR', `the idle sandbox exited ${r.exitCode}`);
  return { overheadKb: rss - guest, rssKb: rss, guestKb: guest };
}

export const memoryBench: BenchDefinition = {
  name: 'memory',
  summary: 'sandbox RSS minus touched guest RAM (256 MiB guest idling), tsibox + QEMU under --engine qemu; baseline: a bare node process',
  defaultIterations: 1,
  defaultRuns: 3,
  async run(opts) {
    const engine = opts.engine ?? 'qemu';
    if (engine !== 'kvm' && engine !== 'qemu') throw new TsiboxError('NOT_SUPPORTED', `bench memory measures --engine qemu or kvm (got ${engine})`);
    const samples: Array<{ overheadKb: number; rssKb: number; guestKb: number }> = [];
    const node: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      node.push(await bareNodeRss());
      const s = await sandboxOverhead(engine);
      samples.push(s);
      opts.progress?.(`run ${i + 1}/${opts.runs}: RSS ${round(s.rssKb / KIB)} MiB, guest RAM touched ${round(s.guestKb / KIB)} MiB, overhead ${round(s.overheadKb / KIB)} MiB; bare node ${round(node[i]! / KIB)} MiB`);
    }
    const value = median(samples.map((s) => s.overheadKb)) / KIB;
    const baseline = median(node) / KIB;
    const result: BenchResult = {
      bench: 'memory', value: round(value, 1), unit: 'MiB', baseline: round(baseline, 1), ratio: round(value / baseline, 2),
      lowerIsBetter: true, iterations: 1, runs: opts.runs, engine,
      rssMiB: round(median(samples.map((s) => s.rssKb)) / KIB, 1), guestTouchedMiB: round(median(samples.map((s) => s.guestKb)) / KIB, 1),
      note: `overhead = RSS of ${engine === 'qemu' ? 'tsibox + QEMU' : 'tsibox'} minus the Rss of the guest-RAM mapping(s), ${GUEST_MIB} MiB guest idling in sleep; baseline = RSS of a bare idle node`,
      machine: machineInfo(),
    };
    return [result];
  },
};
