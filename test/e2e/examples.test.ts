/**
 * The programs in examples/ run as a user would run them (`node examples/X.mjs`, with
 * the package importing itself as 'tsibox'), and print what their comments promise.
 * Engine: 'auto', as a user gets it (QEMU here; KVM in the nested test host).
 */
// tsibox-test-kvm: qemu-only (the examples' API paths run under kvm in sandbox-live and exec)
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { PACKAGE_ROOT } from '../../src/paths.js';

const prereq = await e2ePrerequisites(t, { tools: true });
// The examples use the public API paths that sandbox-live and exec test under both
// engines; under the nested host's TCG they would add minutes and no coverage.
const skip = prereq.skip !== false ? prereq.skip : E2E_ENGINE === 'kvm' ? 'engine kvm: the API paths the examples use are tested under kvm by sandbox-live and exec' : false;

/** Runs an example to its end (bounded: 180 s). */
function example(name: string, args: string[] = []): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(PACKAGE_ROOT, 'examples', name), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const timer = setTimeout(() => { child.kill('SIGKILL'); }, 180_000);
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

t.test('publish-web-server.mjs: publish, fetch, unpublish (refused), publish again, the connection log', { skip }, async (t) => {
  const r = await example('publish-web-server.mjs');
  t.equal(r.code, 0, 'exits 0', { out: r.out, err: r.err });
  t.match(r.out, /^published guest port 8080 on 127\.0\.0\.1:\d+$/m);
  t.equal(r.out.match(/-> hello from the guest$/gm)?.length, 2, 'the page is fetched on both ports');
  t.match(r.out, /^after unpublish, :\d+ -> ECONNREFUSED$/m);
  t.equal(r.out.match(/^connection: inbound .* allow /gm)?.length, 2, 'both fetches are in the connection log');
  t.match(r.out, /^sandbox stopped/m);
});

t.test('allow-list.mjs: the allowed host service answers, another port is refused', { skip }, async (t) => {
  const r = await example('allow-list.mjs');
  t.equal(r.code, 0, 'exits 0', { out: r.out, err: r.err });
  t.match(r.out, /^the allowed service$/m);
  t.match(r.out, /^allowed: exit 0$/m);
  t.match(r.out, /^other: exit 1$/m);
  t.match(r.out, /Permission denied/, 'the guest saw EACCES');
  t.notMatch(r.out, /should never be seen/);
});

t.test('connection-log.mjs: every connection as one JSON line', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-example-'));
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });
  const file = join(dir, 'log.jsonl');
  const r = await example('connection-log.mjs', [file]);
  t.equal(r.code, 0, 'exits 0', { out: r.out, err: r.err });
  const records = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { decision: string; event: string; dst?: string });
  t.equal(records.length, 5, 'five connections: three allowed, a refused port, a denied address');
  t.same(records.map((e) => e.event), Array(5).fill('tsi.connection'));
  t.equal(records.filter((e) => e.decision === 'allow').length, 4, 'four allowed by the policy (one to a closed port)');
  t.equal(records.filter((e) => e.decision === 'deny').length, 1, 'one denied');
  t.match(r.out, /^5 connection records in /m);
});

t.test('exec-several.mjs: commands one after another and at once, each with its own output and status', { skip }, async (t) => {
  const r = await example('exec-several.mjs');
  t.equal(r.code, 0, 'exits 0', { out: r.out, err: r.err });
  t.match(r.out, /^\$ uname -sr {2}-> exit 0\nLinux \d/m);
  t.match(r.out, /-> exit 0\n42\n/);
  t.match(r.out, /^\$ ls \/no\/such\/dir {2}-> exit 1\n\(stderr\) ls: /m);
  t.match(r.out, /^at once: slow \| fast \| SHOUTED THROUGH STDIN$/m);
  t.match(r.out, /^main program ended: exit 143 \(SIGTERM\)$/m);
});
