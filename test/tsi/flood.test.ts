// Issue 13 acceptance: under `node --max-old-space-size=256`, a simulated guest floods
// every TSI port and the console control queue for 10 s (test/helpers/flood-child.ts);
// the host process must stay alive with bounded memory and still serve a normal
// connection afterwards.
import t from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const child = fileURLToPath(new URL('../helpers/flood-child.js', import.meta.url));
const DURATION_MS = 10_000;

t.test('a 10 s flood of every TSI port and the console leaves the host alive and bounded', async (t) => {
  const p = spawn(process.execPath, ['--max-old-space-size=256', child, String(DURATION_MS)], { stdio: ['ignore', 'pipe', 'pipe'] });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  p.stdout.on('data', (d: Buffer) => out.push(d));
  p.stderr.on('data', (d: Buffer) => err.push(d));
  const killer = setTimeout(() => { p.kill('SIGKILL'); }, DURATION_MS + 60_000);
  t.teardown(() => { clearTimeout(killer); if (p.exitCode === null) p.kill('SIGKILL'); });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((r) => { p.on('exit', (c, s) => { r([c, s]); }); });
  t.equal(signal, null, 'not killed');
  t.equal(code, 0, `exited cleanly ${Buffer.concat(err).toString().slice(-2000)}`);
  const report = JSON.parse(Buffer.concat(out).toString().trim().split('\n').pop() ?? '{}') as {
    served: string; deniedHits: number; peakHeapUsedMiB: number; peakRssMiB: number; counts: Record<string, number>;
  };
  t.comment(JSON.stringify(report));
  t.equal(report.served, 'still here', 'a normal connection is served after the flood');
  t.equal(report.deniedHits, 0, 'the denied server saw nothing (0.0.0.0 included)');
  t.ok(report.peakHeapUsedMiB < 160, `peak heap ${report.peakHeapUsedMiB} MiB < 160 MiB (limit 256)`);
  t.ok(report.peakRssMiB < 600, `peak RSS ${report.peakRssMiB} MiB < 600 MiB`);
  t.ok(report.counts['hello']! > 0 && report.counts['denied']! > 1000 && report.counts['console']! > 10_000, 'the flood really ran');
});
