// The one-way rule (docs/architecture.md) holds for the tree, and the checker that
// enforces it catches each kind of breach in a small tree made for the purpose.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { checkLayers } from '../../scripts/layers.js';

// dist/test/layers/ → the package root, where the .ts sources are.
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

t.test('the source tree imports one way, without cycles', (t) => {
  const v = checkLayers(ROOT);
  t.same(v.map((x) => x.message), [], 'no violations');
  t.end();
});

t.test('each kind of breach is reported', (t) => {
  const root = mkdtempSync(join(tmpdir(), 'tsibox-layers-'));
  t.teardown(() => { rmSync(root, { recursive: true, force: true }); });
  const write = (file: string, text: string): void => {
    mkdirSync(dirname(join(root, file)), { recursive: true });
    writeFileSync(join(root, file), text);
  };
  write('netstack/a.ts', "import { TsiboxError } from '../src/errors.js';\nexport const a = TsiboxError;\n");
  write('src/errors.ts', 'export class TsiboxError extends Error {}\n');
  write('src/virtio/dev.ts', "import type { X } from '../../proxies/p.js';\nexport type Y = X;\n");
  write('proxies/p.ts', "import { h } from '../test/support/h.js';\nexport type X = number;\nexport const q = h;\n");
  write('src/vmm/one.ts', "import type { B } from './two.js';\nexport type A = B;\n");
  write('src/vmm/two.ts', "import type { A } from './one.js';\nexport type B = A | 1;\n");
  write('src/unplaced/x.ts', 'export const x = 1;\n');
  write('src/engine/e.ts', "export const later = () => import('../cli/c.js');\n");
  write('src/cli/c.ts', 'export const c = 1;\n');
  const kinds = checkLayers(root).map((v) => `${v.kind} ${v.from}`).sort();
  t.same(kinds, [
    'cycle src/vmm/one.ts',
    'direction netstack/a.ts',
    'direction src/engine/e.ts',
    'sibling src/virtio/dev.ts',
    'test-import proxies/p.ts',
    'unassigned src/unplaced/x.ts',
  ]);
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
