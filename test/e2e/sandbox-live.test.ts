/**
 * End to end, a live sandbox (Sandbox.start): one guest, and while it runs: a guest
 * web server published on an OS-chosen port, fetched, unpublished (refused), published
 * on another port; the policy replaced so that an allowed destination is refused;
 * connection events; stdin as a stream; stop() and `await using`. Host servers listen
 * on 127.0.0.1 only; the guest names them through the host-loopback alias.
 */
import t from 'tap';
import { createServer, type AddressInfo } from 'node:net';
import type { Readable } from 'node:stream';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { Sandbox, type ConnectionEvent } from '../../src/index.js';
import { Policy } from '../../src/policy/index.js';
import { fetchPage } from '../helpers/http.js';

const { skip, tools } = await e2ePrerequisites(t, { tools: true });
const ALIAS4 = '10.0.2.2';

/** Lines of `stream`, awaited one at a time (bounded by `ms` each). */
function lineReader(stream: Readable): (ms?: number) => Promise<string> {
  const lines: string[] = [];
  let partial = '';
  let wake: (() => void) | null = null;
  stream.setEncoding('utf8').on('data', (d: string) => {
    partial += d;
    const parts = partial.split('\n');
    partial = parts.pop()!;
    lines.push(...parts);
    wake?.();
  });
  return async (ms = 60_000) => {
    const end = Date.now() + ms;
    while (lines.length === 0) {
      if (Date.now() > end) throw new Error(`no line within ${ms} ms`);
      await new Promise<void>((r) => { wake = r; setTimeout(r, 200); });
    }
    return lines.shift()!;
  };
}

/** A free host port (bound and released at once). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const p = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => { r(); }));
  return p;
}

t.test('one live sandbox: publish, fetch, unpublish, publish elsewhere, replace the policy, watch connections', { skip }, async (t) => {
  let hostHits = 0;
  const server = createServer((s) => { hostHits++; s.end('hi\n'); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => { server.close(); });
  const port = (server.address() as AddressInfo).port;
  const script = [
    'mkdir -p /tmp/w && echo page-from-guest > /tmp/w/index.html && httpd -p 8080 -h /tmp/w',
    'echo ready',
    'while read cmd; do',
    `  case "$cmd" in connect) tsibox-tcp ${ALIAS4} ${port} < /dev/null > /dev/null; echo "connect=$?";; quit) exit 0;; esac`,
    'done',
    'exit 9',
  ].join('\n');
  const allowLoopback = new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: ['127.0.0.0/8'], name: 'host loopback' }] });
  const sb = await Sandbox.start({
    engine: E2E_ENGINE, argv: ['sh', '-c', script], extraArchives: [tools!], timeoutMs: 240_000, stdin: 'pipe',
    network: { mode: 'tsi', hostLoopbackAlias: ALIAS4, policy: allowLoopback },
  });
  t.teardown(() => sb.stop().catch(() => undefined));
  const events: ConnectionEvent[] = [];
  sb.on('connection', (e) => { events.push(e); });
  const iterated: ConnectionEvent[] = [];
  const iterating = (async () => { for await (const e of sb.connections()) iterated.push(e); })();
  const line = lineReader(sb.stdout!);
  t.equal(await line(), 'ready', 'the guest web server is up');
  t.equal(sb.running, true);

  const first = await sb.ports.publish({ guestPort: 8080 });
  t.ok(first.hostPort > 0, `published on an OS-chosen port (${first.hostPort})`);
  t.same(sb.ports.list(), [{ protocol: 'tcp', guestPort: 8080, hostAddress: '127.0.0.1', hostPort: first.hostPort }], 'list() shows it');
  t.equal(await fetchPage(first.hostPort), 'page-from-guest\n', 'a host client fetches the guest page');

  t.equal(await sb.ports.unpublish({ guestPort: 8080 }), true);
  t.equal(await fetchPage(first.hostPort), 'error ECONNREFUSED', 'after unpublish the port refuses');
  t.same(sb.ports.list(), []);
  t.equal(await sb.ports.unpublish({ guestPort: 8080 }), false, 'a second unpublish says it was not published');

  const chosen = await freePort();
  const second = await sb.ports.publish({ guestPort: 8080, hostPort: chosen });
  t.equal(second.hostPort, chosen, 'published again on the port asked for');
  t.equal(await fetchPage(chosen), 'page-from-guest\n', 'and it serves there');
  await t.rejects(sb.ports.publish({ guestPort: 8080 }), { code: 'PORT_MAP_CONFLICT' }, 'the same guest port twice is a conflict');
  await t.rejects(sb.ports.publish({ guestPort: 8081, hostPort: chosen }), { code: 'PORT_MAP_CONFLICT' }, 'the same host port twice too');
  await t.rejects(sb.ports.publish({ guestPort: 9999 }, { timeoutMs: 300 }), { code: 'PORT_PUBLISH_TIMEOUT' }, 'a guest port nobody listens on times out');
  t.equal(sb.ports.list().length, 1, 'and leaves nothing behind');

  sb.stdin!.write('connect\n');
  t.equal(await line(), 'connect=0', 'the allowed host server is reached');
  sb.setPolicy(new Policy({ default: 'deny', rules: [{ action: 'allow', direction: 'inbound', name: 'published ports' }] }));
  sb.stdin!.write('connect\n');
  t.equal(await line(), 'connect=13', 'after setPolicy the same destination is refused (EACCES)');
  t.equal(await fetchPage(chosen), 'page-from-guest\n', 'inbound still allowed by the new policy');
  t.equal(hostHits, 1, 'the host server saw only the first connection');
  allowLoopback.replace(Policy.denyAll());
  sb.stdin!.write('quit\n');
  const r = await sb.exited;
  t.equal(r.exitCode, 0, 'the main process ended as asked');
  t.equal(sb.running, false);
  await iterating;

  const outbound = events.filter((e) => e.event === 'tsi.connection' && e.kind === 'stream');
  t.same(outbound.map((e) => e.decision), ['allow', 'deny'], 'one outbound connection allowed, then one denied, as events');
  t.ok(events.filter((e) => e.event === 'tsi.connection' && e.kind === 'listener').length >= 3, 'the host clients of the published port are events too');
  t.same(iterated, events, 'connections() yielded the same records, then ended with the sandbox');
  await t.rejects(sb.ports.publish({ guestPort: 8080 }), { code: 'INVALID_STATE' }, 'no publishing once ended');
  t.throws(() => { sb.setPolicy(Policy.allowAll()); }, { code: 'INVALID_STATE' });
});

t.test('stop(): SIGTERM first, the VM ended when that is not enough; await using stops at the end of the scope', { skip }, async (t) => {
  const sb = await Sandbox.start({ engine: E2E_ENGINE, argv: ['sh', '-c', 'echo up; sleep 600'], timeoutMs: 120_000 });
  const line = lineReader(sb.stdout!);
  t.equal(await line(), 'up');
  const r = await sb.stop();
  t.equal(r.stopped, true);
  t.equal(r.exitCode, 143, 'the program ended from the SIGTERM');
  t.equal(r.signal, 'SIGTERM');
  t.same(await sb.stop(), r, 'stop() again gives the same result');
  t.throws(() => sb.exec(['true']), { code: 'INVALID_STATE' });

  // A program that ignores SIGTERM: after the timeout the VM is ended.
  const stubborn = await Sandbox.start({ engine: E2E_ENGINE, argv: ['sh', '-c', 'trap "" TERM; echo up; while :; do sleep 1; done'], timeoutMs: 120_000 });
  t.equal(await lineReader(stubborn.stdout!)(), 'up');
  const t0 = Date.now();
  const s = await stubborn.stop({ timeoutMs: 1500 });
  t.same([s.exitCode, s.signal, s.stopped], [137, 'SIGKILL', true], 'ended after the timeout');
  t.ok(Date.now() - t0 >= 1400 && Date.now() - t0 < 15_000, `after about 1.5 s (${Date.now() - t0} ms)`);
  t.throws(() => { sb.setPolicy(Policy.allowAll()); }, { code: 'NOT_SUPPORTED' }, 'no network: no policy to change');
  await t.rejects(sb.ports.publish({ guestPort: 80 }), { code: 'NOT_SUPPORTED' }, 'no network: no ports');

  let kept: Sandbox | undefined;
  {
    await using scoped = await Sandbox.start({ engine: E2E_ENGINE, argv: ['sh', '-c', 'echo up; sleep 600'], timeoutMs: 120_000 });
    kept = scoped;
    t.equal(await lineReader(scoped.stdout!)(), 'up');
  }
  t.equal(kept.running, false, 'the scope stopped it');
  t.equal((await kept.exited).stopped, true);
});

/** All of a readable, as text. */
async function text(r: Readable): Promise<string> {
  let s = '';
  for await (const c of r) s += String(c);
  return s;
}

t.test('exec: 20 commands in one sandbox, each with its own status and output; kill() reaches the main process', { skip }, async (t) => {
  const sb = await Sandbox.start({
    engine: E2E_ENGINE, timeoutMs: 240_000,
    argv: ['sh', '-c', 'trap "echo got-usr1" USR1; echo up; while :; do sleep 0.2; done'],
    env: { FROM_MAIN: 'main-env' },
  });
  t.teardown(() => sb.stop({ timeoutMs: 0 }).catch(() => undefined));
  const line = lineReader(sb.stdout!);
  t.equal(await line(), 'up');
  const results: Array<{ code: number; out: string }> = [];
  for (let i = 0; i < 20; i++) {
    const h = sb.exec(['sh', '-c', `echo "run ${i} $FROM_MAIN $EXTRA"; echo "err ${i}" >&2; exit ${i % 7}`], { env: { EXTRA: `x${i}` } });
    const [out, err, exit] = await Promise.all([text(h.stdout), text(h.stderr), h.exited]);
    t.equal(err, `err ${i}\n`, `exec ${i}: stderr apart`);
    results.push({ code: exit.exitCode, out });
  }
  t.same(results.map((r) => r.code), Array.from({ length: 20 }, (_, i) => i % 7), 'each exit status is its own');
  t.same(results.map((r) => r.out), Array.from({ length: 20 }, (_, i) => `run ${i} main-env x${i}\n`), 'each output is its own (the main environment, plus env)');
  const missing = sb.exec(['no-such-program']);
  t.equal((await missing.exited).exitCode, 127, 'a missing program: 127');
  await t.rejects(missing.pid, { code: 'AGENT_EXEC_FAILED' });
  const piped = sb.exec(['wc', '-c'], { stdin: Buffer.alloc(100_000, 1) });
  t.equal((await text(piped.stdout)).trim(), '100000', 'stdin reaches the exec');

  await sb.kill('SIGUSR1');
  t.equal(await line(), 'got-usr1', 'kill(SIGUSR1) reached the main process\'s trap');
  t.equal(sb.running, true, 'and it runs on');
  await sb.kill('SIGKILL');
  const r = await sb.exited;
  t.same([r.exitCode, r.signal, r.stopped], [137, 'SIGKILL', undefined], 'kill(SIGKILL): the main process died of it; not a stop()');
  await t.rejects(sb.kill(), { code: 'INVALID_STATE' });
});

t.test('agent: false: exec and kill are NOT_SUPPORTED, stop() ends the VM at once', { skip }, async (t) => {
  const sb = await Sandbox.start({ engine: E2E_ENGINE, agent: false, argv: ['sh', '-c', 'echo up; sleep 600'], timeoutMs: 120_000 });
  t.equal(await lineReader(sb.stdout!)(), 'up');
  t.throws(() => sb.exec(['true']), { code: 'NOT_SUPPORTED' });
  await t.rejects(sb.kill(), { code: 'NOT_SUPPORTED' });
  const r = await sb.stop();
  t.same([r.exitCode, r.stopped], [137, true]);
});

t.test('a sandbox that timed out: exited rejects with VM_TIMEOUT, and its ports refuse at once', { skip }, async (t) => {
  const sb = await Sandbox.start({ engine: E2E_ENGINE, argv: ['sleep', '600'], timeoutMs: 3000, network: { mode: 'tsi', policy: Policy.denyAll() } });
  await t.rejects(sb.exited, { code: 'VM_TIMEOUT' });
  t.equal(sb.running, false);
  const t0 = Date.now();
  await t.rejects(sb.ports.publish({ guestPort: 80 }), { code: 'INVALID_STATE' }, 'not a 30 s wait for a listener that cannot come');
  t.ok(Date.now() - t0 < 5000, `at once (${Date.now() - t0} ms)`);
});
