// src/oci/state-store.ts, status.ts, lock.ts: the per-container state directory, its
// atomic state.json, the transition table, and the lock that serialises commands on one
// id (across processes too).
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { StateStore, checkContainerId, ociState, STATE_OCI_VERSION, type StoredState } from '../../src/oci/state-store.js';
import { ContainerStatus, canTransition, requireStatusFor, transition } from '../../src/oci/status.js';
import { lockPath } from '../../src/oci/lock.js';
import { TsiboxError } from '../../src/errors.js';

function tempRoot(t: { teardown(fn: () => void): void }): string {
  const root = mkdtempSync(join(tmpdir(), 'tsibox-oci-state-'));
  t.teardown(() => rmSync(root, { recursive: true, force: true }));
  return root;
}

const base = { bundle: '/b', configOciVersion: '1.0.2-dev', annotations: { 'io.container.manager': 'libpod' } };

t.test('the transition table: creating → created → running → stopped, nothing back', async (t) => {
  const S = ContainerStatus;
  t.ok(canTransition(S.Creating, S.Created));
  t.ok(canTransition(S.Creating, S.Stopped), 'a create that failed');
  t.ok(canTransition(S.Created, S.Running));
  t.ok(canTransition(S.Created, S.Stopped), 'killed before start');
  t.ok(canTransition(S.Running, S.Stopped));
  for (const [from, to] of [[S.Created, S.Creating], [S.Running, S.Created], [S.Stopped, S.Running], [S.Stopped, S.Created], [S.Creating, S.Running], [S.Running, S.Running]] as const) {
    t.notOk(canTransition(from, to), `${from} → ${to} refused`);
  }
  t.throws(() => transition('c1', S.Stopped, S.Running), { code: 'INVALID_STATE', message: 'container c1 is stopped; it cannot become running' });
  t.doesNotThrow(() => requireStatusFor('start', 'c', S.Created));
  t.throws(() => requireStatusFor('start', 'c', S.Running), { code: 'INVALID_STATE', message: /cannot start container c: it is running/ });
  t.doesNotThrow(() => requireStatusFor('kill', 'c', S.Running));
  t.throws(() => requireStatusFor('kill', 'c', S.Stopped), { code: 'INVALID_STATE' });
  t.throws(() => requireStatusFor('delete', 'c', S.Running), { code: 'INVALID_STATE', message: /or use --force/ });
  t.doesNotThrow(() => requireStatusFor('delete', 'c', S.Running, true));
});

t.test('container ids name a directory: no separators, no dot names', async (t) => {
  for (const ok of ['abc', 'a.b-c_d+e', 'x'.repeat(250), '6b1e1a0d3c2f']) t.equal(checkContainerId(ok), ok);
  for (const bad of ['', '.', '..', 'a/b', '../x', 'a b', 'x'.repeat(251), 'a\u0000b', 'é']) {
    t.throws(() => checkContainerId(bad), { code: 'INVALID_ARGUMENT' }, JSON.stringify(bad.slice(0, 20)));
  }
  t.throws(() => new StateStore('relative/root'), { code: 'INVALID_ARGUMENT', message: /--root must be an absolute path/ });
});

t.test('create, read, update, remove; state.json written whole', async (t) => {
  const root = tempRoot(t);
  const store = new StateStore(root);
  t.equal(store.read('c1'), null, 'no such container');
  const s = store.create({ id: 'c1', ...base });
  t.equal(s.status, 'creating');
  t.match(store.read('c1'), { id: 'c1', status: 'creating', bundle: '/b', annotations: base.annotations });
  t.throws(() => store.create({ id: 'c1', ...base }), { code: 'INVALID_STATE', message: 'container c1 already exists' });
  store.update('c1', 'created', { pid: process.pid });
  t.match(store.read('c1'), { status: 'created', pid: process.pid });
  t.throws(() => store.update('c1', 'creating'), { code: 'INVALID_STATE' }, 'the table decides');
  store.update('c1', 'running');
  store.update('c1', 'stopped');
  t.throws(() => store.update('c1', 'running'), { code: 'INVALID_STATE' }, 'stopped is final');
  t.same(readdirSync(store.dir('c1')), ['state.json'], 'no temporary file left behind');
  t.equal(JSON.parse(readFileSync(join(store.dir('c1'), 'state.json'), 'utf8')).status, 'stopped');
  t.throws(() => store.update('nope', 'created'), { code: 'INVALID_STATE', message: 'container nope does not exist' });
  store.remove('c1');
  t.notOk(existsSync(store.dir('c1')));
  t.equal(store.read('c1'), null);
  t.doesNotThrow(() => store.remove('c1'), 'removing twice is fine');
});

t.test('a corrupt state file is INVALID_STATE, not a crash or a wrong answer', async (t) => {
  const root = tempRoot(t);
  const store = new StateStore(root);
  store.create({ id: 'c2', ...base });
  const file = join(store.dir('c2'), 'state.json');
  const good = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  const cases: Array<[string, string]> = [
    ['not json', '{'],
    ['an array', '[]'],
    ['another id', JSON.stringify({ ...good, id: 'c3' })],
    ['bad status', JSON.stringify({ ...good, status: 'paused' })],
    ['bad pid', JSON.stringify({ ...good, pid: -4 })],
    ['bad created', JSON.stringify({ ...good, created: 'yesterday' })],
    ['annotation not a string', JSON.stringify({ ...good, annotations: { a: 1 } })],
  ];
  for (const [what, text] of cases) {
    writeFileSync(file, text);
    t.throws(() => store.read('c2'), { code: 'INVALID_STATE', message: /state of container c2 is corrupt/ }, what);
  }
  writeFileSync(file, JSON.stringify({ ...good, status: 'paused' }));
  t.throws(() => store.read('c2'), { code: 'INVALID_STATE', message: /state of container c2 is corrupt: status "paused"/ });
});

t.test('the OCI state: spec fields; a dead process reads as stopped', async (t) => {
  const s: StoredState = { id: 'c4', status: 'running', pid: 4242, ...base, created: new Date().toISOString() };
  t.same(ociState(s, () => true), { ociVersion: STATE_OCI_VERSION, id: 'c4', status: 'running', pid: 4242, bundle: '/b', annotations: base.annotations });
  t.same(ociState(s, () => false), { ociVersion: STATE_OCI_VERSION, id: 'c4', status: 'stopped', pid: 0, bundle: '/b', annotations: base.annotations });
  t.same(ociState({ ...s, status: 'creating', pid: undefined as unknown as number, annotations: {} }, () => true), { ociVersion: STATE_OCI_VERSION, id: 'c4', status: 'creating', bundle: '/b' }, 'creating: no pid yet, no empty annotations');
  t.equal(ociState({ ...s, pid: process.pid }).status, 'running', 'the default liveness check: kill(pid, 0)');
});

t.test('withLock serialises commands on one id, not on different ids', async (t) => {
  const store = new StateStore(tempRoot(t));
  const events: string[] = [];
  const slow = (name: string, ms: number) => async (): Promise<void> => {
    events.push(`${name} in`);
    await sleep(ms);
    events.push(`${name} out`);
  };
  await Promise.all([store.withLock('c', slow('a', 60)), sleep(5).then(() => store.withLock('c', slow('b', 1)))]);
  t.same(events, ['a in', 'a out', 'b in', 'b out'], 'the second waited for the first');
  events.length = 0;
  await Promise.all([store.withLock('c', slow('a', 60)), sleep(5).then(() => store.withLock('d', slow('b', 1)))]);
  t.same(events, ['a in', 'b in', 'b out', 'a out'], 'another id does not wait');
  await t.rejects(store.withLock('c', () => { throw new TsiboxError('INVALID_STATE', 'boom'); }), { message: 'boom' });
  t.equal(await store.withLock('c', () => 7), 7, 'released after a throw');
});

t.test('a lock times out with INVALID_STATE; remove under the lock does not let two hold it', async (t) => {
  const root = tempRoot(t);
  const store = new StateStore(root, { timeoutMs: 100 });
  const held = await lockPath(join(root, 'x.lock'));
  await t.rejects(store.withLock('x', () => 1), { code: 'INVALID_STATE', message: /locked by another command/ });
  held.release();
  held.release();
  t.equal(await store.withLock('x', () => 2), 2);

  // A holder deletes (unlinking the lock file); a waiter that then gets the old inode must retry on the new file.
  const store2 = new StateStore(root);
  store2.create({ id: 'y', ...base });
  const order: string[] = [];
  const first = store2.withLock('y', async () => { await sleep(40); store2.remove('y'); order.push('removed'); });
  await sleep(5);
  const second = store2.withLock('y', () => { order.push(`second sees ${store2.read('y') === null ? 'nothing' : 'y'}`); });
  await Promise.all([first, second]);
  t.same(order, ['removed', 'second sees nothing']);
});

t.test('the lock holds across processes (flock), and dies with its holder', async (t) => {
  const root = tempRoot(t);
  const lockModule = fileURLToPath(new URL('../../src/oci/lock.js', import.meta.url));
  const path = join(root, 'p.lock');
  const script = `import { lockPath } from ${JSON.stringify(lockModule)};
const l = await lockPath(${JSON.stringify(path)});
process.stdout.write('held\\n');
setTimeout(() => { l.release(); process.exit(0); }, 300);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [chunk] = (await once(child.stdout!, 'data')) as [Buffer];
  t.equal(chunk.toString(), 'held\n');
  const t0 = Date.now();
  const mine = await lockPath(path);
  t.ok(Date.now() - t0 >= 150, `waited for the other process (${Date.now() - t0} ms)`);
  mine.release();

  // A holder killed while holding: the kernel releases it, no stale lock.
  const killer = spawn(process.execPath, ['--input-type=module', '-e', script.replace('300', '60000')], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(killer.stdout!, 'data');
  killer.kill('SIGKILL');
  await once(killer, 'exit');
  const t1 = Date.now();
  (await lockPath(path, { timeoutMs: 2000 })).release();
  t.ok(Date.now() - t1 < 1000, 'the dead holder\'s lock is free at once');
});
