// scripts/build-test-root.sh's cache logic, without building anything: the key, the
// path, what counts as built, and that a failed build leaves nothing behind.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { scriptPath } from '../../src/guest/build.js';
import { testRootPath } from '../../src/guest/test-root.js';

const cache = mkdtempSync(join(tmpdir(), 'tsibox-test-root-'));
const saved = process.env['XDG_CACHE_HOME'];
process.env['XDG_CACHE_HOME'] = cache;
t.teardown(() => {
  if (saved === undefined) delete process.env['XDG_CACHE_HOME'];
  else process.env['XDG_CACHE_HOME'] = saved;
  rmSync(cache, { recursive: true, force: true });
});

function script(args: string[], env: Record<string, string> = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync('bash', [scriptPath('build-test-root.sh'), ...args], { encoding: 'utf8', env: { ...process.env, ...env } });
  return { status: r.status, stdout: r.stdout.trim(), stderr: r.stderr };
}

t.test('--key and --print-path answer without building', (t) => {
  const key = script(['--key']);
  t.equal(key.status, 0);
  t.match(key.stdout, /^[0-9a-f]{16}$/);
  t.equal(script(['--key']).stdout, key.stdout, 'the key is stable');
  const p = script(['--print-path']);
  t.equal(p.stdout, join(cache, 'tsibox', 'test-root', key.stdout, 'root'));
  t.equal(script(['--bogus']).status, 1, 'unknown option');
  t.end();
});

t.test('testRootPath: undefined until build-info exists next to the root', (t) => {
  t.equal(testRootPath(), undefined);
  const dir = join(cache, 'tsibox', 'test-root', script(['--key']).stdout);
  mkdirSync(join(dir, 'root', 'usr', 'bin'), { recursive: true });
  t.equal(testRootPath(), undefined, 'a root without build-info is not finished');
  writeFileSync(join(dir, 'build-info'), 'key=x\n');
  t.equal(testRootPath(), join(dir, 'root'));
  rmSync(dir, { recursive: true });
  t.end();
});

t.test('a failed build leaves nothing in the cache', (t) => {
  // Refused at once without root; with root, debootstrap fails on the closed port.
  const r = script([], { TSIBOX_DEBIAN_MIRROR: 'http://127.0.0.1:9/debian' });
  t.not(r.status, 0);
  t.match(r.stderr, /tsibox-test-root: error:/);
  const left = readdirSync(join(cache, 'tsibox', 'test-root')).filter((n) => !n.startsWith('.lock-'));
  t.same(left, [], 'no temporary or half-built root left');
  t.equal(testRootPath(), undefined);
  t.end();
});
