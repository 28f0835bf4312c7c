// The one-way rule (docs/architecture.md) holds for the tree, and the checker that
// enforces it catches each kind of breach in a small tree made for the purpose.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { checkLayers } from '../../scripts/layers.js';

// dist/test/layers/ → the package root, where the .ts sources are.
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** A temporary tree (removed after the test) and a way to write files into it. */
function scratchTree(t: Test): { root: string; write: (file: string, text: string) => void } {
  const root = mkdtempSync(join(tmpdir(), 'tsibox-layers-'));
  t.teardown(() => { rmSync(root, { recursive: true, force: true }); });
  const write = (file: string, text: string): void => {
    mkdirSync(dirname(join(root, file)), { recursive: true });
    writeFileSync(join(root, file), text);
  };
  return { root, write };
}

t.test('the source tree imports one way, without cycles', (t) => {
  t.ok(existsSync(join(ROOT, 'src', 'index.ts')), `the sources are at ${ROOT} (run from this checkout's dist/)`);
  const v = checkLayers(ROOT);
  t.same(v.map((x) => x.message), [], 'no violations');
  t.end();
});

t.test('each kind of breach is reported', (t) => {
  const { root, write } = scratchTree(t);
  write('netstack/a.ts', "import { TsiboxError } from '../src/errors.js';\nexport const a = TsiboxError;\n");
  write('src/errors.ts', 'export class TsiboxError extends Error {}\n');
  write('src/virtio/dev.ts', "import type { X } from '../../proxies/p.js';\nexport type Y = X;\n");
  write('proxies/p.ts', "import { h } from '../test/support/h.js';\nexport type X = number;\nexport const q = h;\n");
  write('src/vmm/one.ts', "import type { B } from './two.js';\nexport type A = B;\n");
  write('src/vmm/two.ts', "import type { A } from './one.js';\nexport type B = A | 1;\n");
  write('src/unplaced/x.ts', 'export const x = 1;\n');
  write('src/engine/e.ts', "export const later = () => import('../cli/c.js');\n");
  write('src/cli/c.ts', 'export const c = 1;\n');
  // What the TypeScript scanner alone would miss.
  write('netstack/helper.mts', "export { c } from '../src/cli/c.js';\n");
  write('netstack/ref.ts', '/// <reference path="../src/cli/c.ts" />\nexport const r = 1;\n');
  write('src/policy/self.ts', "import { c } from 'tsibox/cli';\nimport { d } from '#cli';\nexport const s = [c, d];\n");
  write('src/portmap/gone.ts', "export { g } from './missing.js';\n");
  write('src/guest/computed.ts', "const name = 'c';\nexport const m = () => import(`../cli/${name}.js`);\n");
  write('src/kvm/url.ts', "export const u = new URL('../../test/support/x.js', import.meta.url);\n");
  write('src/sys/req.ts', "import { createRequire } from 'node:module';\nexport const req = createRequire(import.meta.url);\n");
  writeFileSync(join(root, 'package.json'), JSON.stringify({ name: 'tsibox' }));
  const kinds = checkLayers(root).map((v) => `${v.kind} ${v.from}`).sort();
  t.same(kinds, [
    'cycle src/vmm/one.ts',
    'direction netstack/a.ts',
    'direction netstack/helper.mts',
    'direction netstack/ref.ts',
    'direction src/engine/e.ts',
    'runtime-load src/guest/computed.ts',
    'runtime-load src/kvm/url.ts',
    'runtime-load src/sys/req.ts',
    'self-import src/policy/self.ts',
    'self-import src/policy/self.ts',
    'sibling src/virtio/dev.ts',
    'test-import proxies/p.ts',
    'unassigned src/unplaced/x.ts',
    'unresolved src/portmap/gone.ts',
  ]);
  t.end();
});

t.test('a shipped file that no entry point reaches is reported', (t) => {
  const { root, write } = scratchTree(t);
  writeFileSync(join(root, 'package.json'), JSON.stringify({ name: 'tsibox', main: 'dist/src/index.js', bin: { tsibox: 'bin/tsibox.js' } }));
  write('bin/tsibox.js', "import '../dist/src/cli/main.js';\n");
  write('src/index.ts', "export { e } from './errors.js';\n");
  write('src/errors.ts', 'export const e = 1;\n');
  write('src/cli/main.ts', "import { w } from '../vmm/thread.js';\nexport const m = w;\n");
  write('src/vmm/thread.ts', "export const w = new URL('./worker.js', import.meta.url);\n");
  write('src/vmm/worker.ts', 'export const x = 1;\n');
  write('src/vmm/simulator.ts', 'export const only_tests_use_me = 1;\n');
  t.same(checkLayers(root).map((v) => `${v.kind} ${v.from}`), ['unreachable src/vmm/simulator.ts'], 'the worker loaded by URL counts as reached');
  t.end();
});

t.test('the package ships no test doubles, simulators or fuzzers', (t) => {
  // What `npm pack` would publish, from the build in this checkout.
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 60_000 });
  const files = (JSON.parse(out) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
  t.ok(files.some((f) => f.startsWith('dist/src/')), 'the library is in it');
  const testCode = files.filter((f) => /(^|\/)(test|testing|support)\/|fuzz|fake-agent|null-device|harness/.test(f));
  t.same(testCode, [], 'no test code');
  t.end();
});
