// src/oci/bench.ts (`tsibox bench oci`): what can be checked without running containers.
// The bench is registered by the CLI (it sits above src/bench/), and without runc on PATH
// it refuses with NOT_SUPPORTED naming the package, before it looks at anything else
// (test root, root, virtiofsd). The measurement itself is run by hand (docs/benchmarks.md).
import t from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ociBench } from '../../src/oci/bench.js';
import { BIN, tsibox } from '../cli/helpers.js';

/** An empty directory to be PATH: no runc in it. */
function emptyPath(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-no-runc-'));
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });
  return dir;
}

t.test('without runc on PATH: NOT_SUPPORTED naming the Debian package', async (t) => {
  const saved = process.env['PATH'];
  process.env['PATH'] = emptyPath(t);
  t.teardown(() => {
    if (saved === undefined) delete process.env['PATH'];
    else process.env['PATH'] = saved;
  });
  await t.rejects(ociBench.run({ iterations: 1, runs: 1 }), { code: 'NOT_SUPPORTED', message: /runc on PATH.*Debian package runc/ });
});

t.test('tsibox bench lists oci, and exits 1 with the refusal when runc is missing', async (t) => {
  const help = await tsibox(['bench', '--help']);
  t.equal(help.code, 0, help.stderr);
  t.match(help.stdout, /^ {2}oci +one whole \/bin\/true container/m);
  const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [BIN, 'bench', 'oci', '--runs', '1', '--quiet'], { env: { ...process.env, PATH: emptyPath(t) }, timeout: 30_000 },
      (err, stdout, stderr) => { resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : null, stdout, stderr }); });
  });
  t.equal(r.code, 1);
  t.equal(r.stdout, '', 'no result line');
  t.match(r.stderr, /^tsibox: bench oci needs runc on PATH .*\[NOT_SUPPORTED\]\n$/);
});
