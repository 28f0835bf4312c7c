// src/oci/file-binds.ts: single-file binds staged for one share. The guest is root in a
// writable share, so a read-only bind must never be a hard link to the host file there.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { STAGING_GUEST_PATH, stageFileBinds } from '../../src/oci/file-binds.js';

function dir(t: { teardown(fn: () => void): void }, base = tmpdir()): string {
  const d = mkdtempSync(join(base, 'tsibox-oci-files-'));
  t.teardown(() => rmSync(d, { recursive: true, force: true }));
  return d;
}

t.test('all read-only: a read-only share of hard links (live)', async (t) => {
  const d = dir(t);
  writeFileSync(join(d, 'a'), 'A');
  const s = stageFileBinds([{ source: join(d, 'a'), destination: '/etc/a', readOnly: true }], join(d, 'stage'))!;
  t.same(s.mount, { hostPath: join(d, 'stage'), guestPath: STAGING_GUEST_PATH, readOnly: true });
  t.same(s.binds, [{ source: `${STAGING_GUEST_PATH}/0`, path: '/etc/a', readOnly: true }]);
  t.equal(statSync(join(d, 'stage', '0')).ino, statSync(join(d, 'a')).ino, 'a hard link');
  t.equal(stageFileBinds([], join(d, 'none')), null);
});

t.test('mixed: a writable share; read-write binds are links, read-only ones copies', async (t) => {
  const d = dir(t);
  writeFileSync(join(d, 'hosts'), 'h');
  writeFileSync(join(d, 'secret'), 's');
  const s = stageFileBinds([
    { source: join(d, 'hosts'), destination: '/etc/hosts', readOnly: false },
    { source: join(d, 'secret'), destination: '/run/secret', readOnly: true },
  ], join(d, 'stage'))!;
  t.equal(s.mount.readOnly, false);
  t.equal(statSync(join(d, 'stage', '0')).ino, statSync(join(d, 'hosts')).ino, 'rw: the host file itself');
  t.not(statSync(join(d, 'stage', '1')).ino, statSync(join(d, 'secret')).ino, 'ro in a writable share: not the host file');
  writeFileSync(join(d, 'stage', '1'), 'changed by the guest');
  t.equal(readFileSync(join(d, 'secret'), 'utf8'), 's', 'writing the staged copy leaves the host file alone');
});

t.test('a read-write file on another file system is copied, and said so', { skip: statSync('/dev/shm').dev === statSync(tmpdir()).dev ? '/dev/shm and the temp dir share a file system here' : false }, async (t) => {
  const src = dir(t, '/dev/shm');
  const d = dir(t);
  writeFileSync(join(src, 'f'), 'x');
  const lines: string[] = [];
  const s = stageFileBinds([{ source: join(src, 'f'), destination: '/f', readOnly: false }], join(d, 'stage'), (l) => { lines.push(l); })!;
  t.equal(readFileSync(join(d, 'stage', '0'), 'utf8'), 'x');
  t.equal(s.binds.length, 1);
  t.match(lines.join(''), /another file system .* its writes do not reach/);
});

t.test('a source that is not a regular file is refused with its name', async (t) => {
  const d = dir(t);
  t.throws(() => stageFileBinds([{ source: d, destination: '/x', readOnly: true }], join(d, 'stage')), { code: 'INVALID_ARGUMENT', message: /file bind source .* not a regular file/ });
  t.throws(() => stageFileBinds([{ source: join(d, 'missing'), destination: '/x', readOnly: true }], join(d, 'stage2')), { code: 'INVALID_ARGUMENT', message: /ENOENT/ });
});
