/**
 * End to end, memory given back (SandboxOptions.balloon, free page reporting): the guest
 * fills 320 MiB of tmpfs, then removes the file. The host samples the resident memory of
 * what holds guest RAM (QEMU's process under the QEMU engine, this process under the KVM
 * engine) when the file is full and after it is gone. With the balloon the resident
 * memory must fall by at least half of what was filled; without it (the control run) the
 * freed guest pages stay resident on the host.
 */
import t from 'tap';
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { Sandbox } from '../../src/index.js';

const { skip } = await e2ePrerequisites(t, {});
// Two guests that each fill and free 320 MiB (about 30 s each under TCG here).
t.setTimeout(400_000);
const FILL_MIB = 320;
const MIB = 1024 * 1024;

/** VmRSS of `pid` in bytes (from /proc/PID/status). */
function rssOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** Resolves when `stream` has printed a line equal to `line` (bounded by `ms`). */
function waitLine(stream: Readable, line: string, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => { stream.off('data', onData); reject(new Error(`no "${line}" within ${ms} ms; output: ${text.slice(-500)}`)); }, ms);
    const onData = (d: Buffer): void => {
      text += d.toString();
      if (text.split('\n').includes(line)) {
        clearTimeout(timer);
        stream.off('data', onData);
        resolve();
      }
    };
    stream.on('data', onData);
  });
}

interface Sample { filled: number; freed: number }

/** One sandbox: fill, sample, free, sample (polling up to 90 s for the drop). */
async function fillAndFree(balloon: boolean): Promise<Sample> {
  let qemuPid: number | undefined;
  const sandbox = await Sandbox.start({
    engine: E2E_ENGINE, memoryMiB: 768, timeoutMs: 300_000, balloon, stdin: 'pipe',
    argv: ['sh', '-c', [
      `dd if=/dev/zero of=/tmp/big bs=1M count=${FILL_MIB} 2>/dev/null && echo FILLED`,
      'read _', 'rm /tmp/big && echo FREED', 'read _', 'echo DONE',
    ].join('\n')],
    onQemuStart: (pid) => { qemuPid = pid; },
  });
  try {
    const rss = (): number => (qemuPid !== undefined ? rssOf(qemuPid) : process.memoryUsage().rss);
    await waitLine(sandbox.stdout!, 'FILLED', 120_000);
    const filled = rss();
    sandbox.stdin!.write('\n');
    await waitLine(sandbox.stdout!, 'FREED', 30_000);
    // Linux reports free pages about 2 s after they are freed, a share of each free list
    // per 2 s round; in the nested test host (TCG) that took up to a minute. Give it 90 s.
    let freed = rss();
    const samples: string[] = [];
    const t0 = Date.now();
    for (const end = t0 + 90_000; Date.now() < end && filled - freed < (FILL_MIB / 2) * MIB; await new Promise((r) => setTimeout(r, 1000))) {
      freed = rss();
      if (samples.length < 100) samples.push(`${((Date.now() - t0) / 1000).toFixed(0)}s:${Math.round(freed / MIB)}`);
    }
    if (balloon) console.log(`# resident MiB while waiting: ${samples.join(' ')}`);
    if (!balloon) {
      await new Promise((r) => setTimeout(r, 8000));
      freed = rss();
    }
    sandbox.stdin!.end('\n');
    const result = await sandbox.exited;
    if (result.exitCode !== 0) throw new Error(`guest script exited ${result.exitCode}`);
    return { filled, freed };
  } finally {
    await sandbox.stop({ timeoutMs: 5000 }).catch(() => { /* already ended */ });
  }
}

t.test('free page reporting gives a freed guest allocation back to the host', { skip }, async (t) => {
  const on = await fillAndFree(true);
  const mib = (n: number): string => String(Math.round(n / MIB) + 0);
  t.comment(`balloon: resident ${mib(on.filled)} MiB with ${FILL_MIB} MiB filled, ${mib(on.freed)} MiB after it was freed`);
  t.ok(on.filled - on.freed >= (FILL_MIB / 2) * MIB,
    `resident memory fell by ${mib(on.filled - on.freed)} MiB (at least ${FILL_MIB / 2} MiB expected)`);

  const off = await fillAndFree(false);
  t.comment(`no balloon: resident ${mib(off.filled)} MiB filled, ${mib(off.freed)} MiB 8 s after it was freed`);
  t.ok(off.filled - off.freed < (FILL_MIB / 4) * MIB,
    `without the balloon the freed pages stay resident (fell by ${mib(off.filled - off.freed)} MiB)`);
});
