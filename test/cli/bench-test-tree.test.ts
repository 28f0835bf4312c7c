// The benches whose guest is a simulator load their bodies from the test tree at run
// time (src/bench/test-tree.ts): found in a build of the checkout, NOT_SUPPORTED where
// the test tree is absent (an installed package ships no dist/test).
import t from 'tap';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadTestTreeBench } from '../../src/bench/test-tree.js';
import { TsiboxError } from '../../src/errors.js';

t.test('a build of the checkout finds the bench bodies', async (t) => {
  const tsi = await loadTestTreeBench<Record<string, unknown>>('tsi-stream', 'tsi');
  t.type(tsi.runTsiStream, 'function');
  t.type(tsi.runTsiConnect, 'function');
  const vq = await loadTestTreeBench<Record<string, unknown>>('virtqueue', 'virtqueue');
  t.type(vq.softwareRows, 'function');
});

t.test('without the test tree: NOT_SUPPORTED, saying why', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'tsibox-no-test-tree-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  mkdirSync(join(root, 'src', 'bench'), { recursive: true });
  const base = pathToFileURL(join(root, 'src', 'bench', 'test-tree.js'));
  const err = await loadTestTreeBench('tsi-stream', 'tsi', base).then(() => null, (e: unknown) => e);
  t.ok(err instanceof TsiboxError, 'a TsiboxError');
  t.match(err, { code: 'NOT_SUPPORTED', message: /bench tsi-stream drives a simulated guest from the test tree.*source checkout/ });
});
