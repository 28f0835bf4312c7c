/**
 * End to end: podman runs containers with our OCI runtime (ociRuntime(): bin/tsibox-oci.js,
 * or TSIBOX_OCI_TEST_RUNTIME=/usr/sbin/runc to check the test itself). The image is the
 * Debian test root imported into podman's own temporary storage (no registry). Covers
 * what a user types first: exit status, -e/-w/-v, -i, -t, and a detached web server
 * published on a host loopback port, stopped and removed without leftovers.
 * HOST SAFETY: see test/support/oci-engines.ts; the port is published on 127.0.0.1 only.
 */
// tsibox-test-kvm: qemu-only (the engines only call tsibox-oci; test/e2e/oci-runtime.test.ts runs the runtime under kvm)
import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { testRootPath } from '../../src/guest/test-root.js';
import {
  Podman, TEST_IMAGE, type Result, describe, freePort, listening, ociPrerequisites, ociRuntime, processesMentioning, runtimeStateDir,
  run, shellQuote, sleep, uniqueName, waitUntil, which,
} from '../support/oci-engines.js';

// Each container is a VM boot under emulation with tsibox (~5-15 s).
t.setTimeout(20 * 60_000);
const runtime = ociRuntime();
const root = testRootPath();
let skip = await ociPrerequisites(t, 'podman', root);
let podman: Podman | undefined;
if (skip === false) {
  const p = Podman.start(runtime, root!);
  if (typeof p === 'string') skip = `podman cannot run here: ${p}`;
  else podman = p;
}
t.comment(`runtime: ${runtime}`);

/** `podman run --rm --name N [args] TEST_IMAGE cmd...`; the container is removed at teardown whatever happens. */
function runIn(tt: Test, args: string[], cmd: string[], input?: string): Result {
  const name = uniqueName();
  tt.teardown(() => podman!.remove(name));
  return podman!.podman(['run', '--rm', '--pull', 'never', '--name', name, ...args, TEST_IMAGE, ...cmd], input === undefined ? {} : { input });
}

t.test('print(42) and exit statuses pass through', { skip }, async (t) => {
  const r = runIn(t, [], ['python3', '-c', 'print(42)']);
  t.equal(r.status, 0, 'python3 exits 0', { run: describe(r) });
  t.equal(r.stdout.trim(), '42', 'prints 42', { run: describe(r) });
  const e = runIn(t, [], ['sh', '-c', 'exit 7']);
  t.equal(e.status, 7, 'podman run exits with the container\'s 7', { run: describe(e) });
  t.comment(`timings: print(42) ${r.ms} ms, exit 7 ${e.ms} ms`);
});

t.test('-e, -w and -v reach the container; -v works both ways', { skip }, async (t) => {
  const host = mkdtempSync(join(podman!.dir, 'volume-'));
  t.teardown(() => rmSync(host, { recursive: true, force: true }));
  writeFileSync(join(host, 'from-host.txt'), 'written on the host\n');
  const r = runIn(t, ['-e', 'FOO=bar', '-w', '/tmp', '-v', `${host}:/data`],
    ['sh', '-c', 'printenv FOO; pwd; cat /data/from-host.txt; echo written in the container > /data/from-container.txt']);
  t.equal(r.status, 0, 'exits 0', { run: describe(r) });
  t.same(r.stdout.trim().split('\n'), ['bar', '/tmp', 'written on the host'], 'sees FOO, the cwd and the host file', { run: describe(r) });
  const back = join(host, 'from-container.txt');
  t.equal(existsSync(back) ? readFileSync(back, 'utf8') : '(missing)', 'written in the container\n', 'the host sees the container\'s file');
});

t.test('-i: piped stdin reaches the container and ends with EOF', { skip }, async (t) => {
  const r = runIn(t, ['-i'], ['python3', '-c', 'import sys; print(sys.stdin.read().upper())'], 'hello');
  t.equal(r.status, 0, 'exits 0', { run: describe(r) });
  t.equal(r.stdout.trim(), 'HELLO', 'prints stdin upper-cased', { run: describe(r) });
});

t.test('-t: the container gets a terminal', { skip: skip !== false ? skip : which('script') === undefined ? 'script is not installed (Debian: bsdutils)' : false }, async (t) => {
  const name = uniqueName();
  t.teardown(() => podman!.remove(name));
  // util-linux's script gives podman a pty as its stdin/stdout, as a terminal user would (-e: its status).
  const cmd = podman!.argv(['run', '--rm', '-t', '--pull', 'never', '--name', name, TEST_IMAGE, 'sh', '-c', 'tty; test -t 0 && test -t 1 && echo stdio-is-a-tty'])
    .map(shellQuote).join(' ');
  const r = run('script', ['-qfec', cmd, '/dev/null'], { env: podman!.env, cwd: podman!.dir });
  t.equal(r.status, 0, 'exits 0', { run: describe(r) });
  t.match(r.stdout, /^\/dev\/pts\/\d+\r?$/m, '`tty` names a pty', { run: describe(r) });
  t.match(r.stdout, /^stdio-is-a-tty\r?$/m, 'stdin and stdout are terminals', { run: describe(r) });
});

t.test('-d -p 127.0.0.1:H:80: a web server is reachable, stops within the grace period, leaves nothing', { skip }, async (t) => {
  const name = uniqueName();
  t.teardown(() => podman!.remove(name));
  const port = await freePort();
  const started = podman!.podman(['run', '-d', '--pull', 'never', '--name', name, '-p', `127.0.0.1:${port}:80`, TEST_IMAGE, 'python3', '-m', 'http.server', '80']);
  if (!t.equal(started.status, 0, 'podman run -d succeeds', { run: describe(started) })) return;
  const id = started.stdout.trim();
  t.match(id, /^[0-9a-f]{64}$/, 'podman run -d prints the container id');

  // Bounded: a VM boots under emulation first.
  const t0 = Date.now();
  let got: { status: number; body: string } | undefined;
  let lastError = '';
  for (const end = t0 + 60_000; got?.status !== 200 && Date.now() < end; await sleep(500)) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(5_000) });
      got = { status: res.status, body: await res.text() };
    } catch (e) {
      lastError = String((e as Error).cause ?? e);
    }
  }
  t.equal(got?.status, 200, `GET http://127.0.0.1:${port}/ within 60 s (last error: ${lastError})`);
  t.match(got?.body ?? '', /Directory listing for \//, 'the body is http.server\'s listing of /');
  t.comment(`timings: run -d ${started.ms} ms, first 200 after ${Date.now() - t0} ms`);

  // python as PID 1 ignores SIGTERM: podman waits the grace period, then SIGKILL.
  const GRACE_S = 5;
  const stopped = podman!.podman(['stop', '-t', String(GRACE_S), name]);
  t.equal(stopped.status, 0, 'podman stop succeeds', { run: describe(stopped) });
  t.ok(stopped.ms < (GRACE_S + 10) * 1000, `podman stop -t ${GRACE_S} took ${stopped.ms} ms (< ${GRACE_S + 10} s)`);
  const removed = podman!.podman(['rm', name]);
  t.equal(removed.status, 0, 'podman rm succeeds', { run: describe(removed) });
  t.comment(`timings: stop ${stopped.ms} ms, rm ${removed.ms} ms`);

  // podman's `container cleanup` exit command names the id too and may still be finishing.
  await waitUntil(10_000, () => processesMentioning(id).length === 0);
  t.same(processesMentioning(id), [], 'no process mentions the container id');
  t.notOk(existsSync(runtimeStateDir(id)), `no runtime state left (${runtimeStateDir(id)})`);
  t.notOk(listening(port), `nothing listens on ${port} any more`);
});

t.test('podman leaves no process or mount behind', { skip }, async (t) => {
  const left = await podman!.cleanup();
  t.same(left, { processes: [], mounts: [] });
  t.notOk(existsSync(podman!.dir), 'the temp dir is gone');
});

t.teardown(async () => { await podman?.cleanup(); });
