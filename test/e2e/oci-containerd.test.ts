/**
 * End to end: containerd runs containers with our OCI runtime through its runc shim
 * (`ctr run --runc-binary RUNTIME`; RUNTIME from ociRuntime(), TSIBOX_OCI_TEST_RUNTIME
 * overrides). Our own daemon in a temp dir; the image is the Debian test root as a
 * hand-built OCI archive (no registry, no podman). Covers exit status, --env, --cwd, a
 * bind mount both ways, and a detached task ended by SIGTERM and deleted without leftovers.
 * HOST SAFETY: see test/support/oci-engines.ts; no networking (ctr without --cni gives an
 * empty network namespace).
 */
// tsibox-test-kvm: qemu-only (the engines only call tsibox-oci; test/e2e/oci-runtime.test.ts runs the runtime under kvm)
import t, { type Test } from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { testRootPath } from '../../src/guest/test-root.js';
import {
  Containerd, type Result, describe, mountsMentioning, ociPrerequisites, ociRuntime, processesMentioning, uniqueName, waitUntil,
} from '../support/oci-engines.js';

// Each container is a VM boot under emulation with tsibox (~5-15 s).
t.setTimeout(20 * 60_000);
const runtime = ociRuntime();
const root = testRootPath();
let skip = await ociPrerequisites(t, 'containerd', root);
let ctrd: Containerd | undefined;
if (skip === false) {
  const c = await Containerd.start(runtime, root!);
  if (typeof c === 'string') skip = `containerd cannot run here: ${c}`;
  else ctrd = c;
}
t.comment(`runtime: ${runtime}`);

/** `ctr run --rm [args] IMAGE id cmd...`; the container is removed at teardown whatever happens. */
function runIn(tt: Test, args: string[], cmd: string[]): Result {
  const id = uniqueName();
  tt.teardown(() => ctrd!.remove(id));
  return ctrd!.run(id, ['--rm', ...args], cmd);
}

t.test('print(42) and exit statuses pass through', { skip }, async (t) => {
  const r = runIn(t, [], ['python3', '-c', 'print(42)']);
  t.equal(r.status, 0, 'python3 exits 0', { run: describe(r) });
  t.equal(r.stdout.trim(), '42', 'prints 42', { run: describe(r) });
  const e = runIn(t, [], ['sh', '-c', 'exit 4']);
  t.equal(e.status, 4, 'ctr run exits with the container\'s 4', { run: describe(e) });
  t.comment(`timings: print(42) ${r.ms} ms, exit 4 ${e.ms} ms`);
});

t.test('--env, --cwd and a bind mount reach the container; the mount works both ways', { skip }, async (t) => {
  const host = mkdtempSync(join(ctrd!.dir, 'mount-'));
  t.teardown(() => rmSync(host, { recursive: true, force: true }));
  writeFileSync(join(host, 'from-host.txt'), 'written on the host\n');
  const r = runIn(t, ['--env', 'FOO=bar', '--cwd', '/tmp', '--mount', `type=bind,src=${host},dst=/data,options=rbind:rw`],
    ['sh', '-c', 'printenv FOO; pwd; cat /data/from-host.txt; echo written in the container > /data/from-container.txt']);
  t.equal(r.status, 0, 'exits 0', { run: describe(r) });
  t.same(r.stdout.trim().split('\n'), ['bar', '/tmp', 'written on the host'], 'sees FOO, the cwd and the host file', { run: describe(r) });
  const back = join(host, 'from-container.txt');
  t.equal(existsSync(back) ? readFileSync(back, 'utf8') : '(missing)', 'written in the container\n', 'the host sees the container\'s file');
});

t.test('ctr run -d: SIGTERM ends the task; task and container delete leave nothing', { skip }, async (t) => {
  const c = ctrd!;
  const id = uniqueName();
  t.teardown(() => c.remove(id));
  const log = c.logPath(id);
  // A shell as PID 1 only dies of SIGTERM with a handler, so the trap proves delivery.
  const started = c.run(id, ['-d', '--log-uri', `file://${log}`],
    ['sh', '-c', 'trap "echo got TERM; exit 0" TERM; echo ready; while :; do sleep 0.2; done']);
  if (!t.equal(started.status, 0, 'ctr run -d succeeds', { run: describe(started) })) return;
  const t0 = Date.now();
  const ready = await waitUntil(60_000, () => existsSync(log) && readFileSync(log, 'utf8').includes('ready'));
  if (!t.ok(ready, 'the container printed "ready" within 60 s', { log: existsSync(log) ? readFileSync(log, 'utf8') : '(none)' })) return;
  t.comment(`timings: run -d ${started.ms} ms, ready after ${Date.now() - t0} ms`);

  const killed = c.ctr(['task', 'kill', '--signal', 'SIGTERM', id]);
  t.equal(killed.status, 0, 'ctr task kill -s SIGTERM succeeds', { run: describe(killed) });
  const t1 = Date.now();
  const stopped = await waitUntil(30_000, () => /\bSTOPPED\b/.test(c.ctr(['task', 'list']).stdout.split('\n').find((l) => l.startsWith(`${id} `)) ?? ''));
  t.ok(stopped, 'the task is STOPPED within 30 s of SIGTERM');
  t.match(readFileSync(log, 'utf8'), /got TERM/, 'the container saw SIGTERM');
  t.comment(`timings: SIGTERM to STOPPED ${Date.now() - t1} ms`);

  const taskDeleted = c.ctr(['task', 'delete', id]);
  t.equal(taskDeleted.status, 0, 'ctr task delete succeeds', { run: describe(taskDeleted) });
  const containerDeleted = c.ctr(['container', 'delete', id]);
  t.equal(containerDeleted.status, 0, 'ctr container delete succeeds', { run: describe(containerDeleted) });

  // The shim that named the id exits after delete; give it a moment.
  await waitUntil(10_000, () => processesMentioning(id).length === 0);
  t.same(processesMentioning(id), [], 'no process mentions the container id');
  t.same(mountsMentioning(id), [], 'no mount mentions the container id');
  t.notOk(existsSync(c.stateDir(id)), `no runtime state left (${c.stateDir(id)})`);
  t.notOk(existsSync(c.bundleDir(id)), 'no bundle left');
});

t.test('containerd leaves no process or mount behind', { skip }, async (t) => {
  const left = await ctrd!.cleanup();
  t.same(left, { processes: [], mounts: [] });
  t.notOk(existsSync(ctrd!.dir), 'the temp dir is gone');
});

t.teardown(async () => { await ctrd?.cleanup(); });
