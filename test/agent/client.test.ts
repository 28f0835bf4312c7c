/**
 * AgentClient against a simulated agent (test/support/agent/fake-agent.ts) through the
 * real VsockDevice and a software guest driver: connect retries, streams, the stdin
 * window, kill, back-pressure, and a hostile agent (every violation ends that exec with
 * AGENT_PROTOCOL, nothing throws). The real agent is tested in test/e2e/exec.test.ts.
 */
import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { PassThrough, type Readable } from 'node:stream';
import { AgentClient, type ExecHandle } from '../../src/agent/client.js';
import { MAX_DATA, MsgType, STDIN_WINDOW, guestFrames } from '../../src/agent/protocol.js';
import { FakeAgent, type FakeExec, type FakeHandler } from '../support/agent/fake-agent.js';
import { GuestVsock } from '../support/vsock/guest.js';

function guest(t: Test): GuestVsock {
  const g = new GuestVsock({ memorySize: 32 << 20, queueSize: 64 });
  t.teardown(() => { g.close(); });
  return g;
}

function client(t: Test, g: GuestVsock, connectTimeoutMs = 2000): AgentClient {
  const c = new AgentClient(g.device, { connectTimeoutMs });
  t.teardown(() => { c.close(); });
  return c;
}

function collect(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  r.on('data', (d: Buffer) => chunks.push(d));
  return new Promise((res) => { r.once('end', () => { res(Buffer.concat(chunks)); }); });
}

async function run(h: ExecHandle): Promise<{ stdout: string; stderr: string; exitCode: number; signal?: string }> {
  const [stdout, stderr, exit] = await Promise.all([collect(h.stdout), collect(h.stderr), h.exited]);
  return { stdout: stdout.toString(), stderr: stderr.toString(), ...exit };
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const handlers: Record<string, FakeHandler> = {
  echo: (x) => { x.started(100); x.stdout(x.argv.slice(1).join(' ') + '\n'); x.exit(0); },
  env: (x) => { x.started(101); x.stdout(x.env.map(([k, v]) => `${k}=${v}\n`).join('') + `cwd=${x.workdir}\n`); x.exit(0); },
  fail: (x) => { x.started(102); x.stderr('oops\n'); x.exit(Number(x.argv[1])); },
  cat: (x) => {
    x.started(103);
    x.onStdin = (d) => { x.stdout(d); };
    x.onStdinEof = () => { x.exit(0); };
  },
  sleep: (x) => {
    x.started(104);
    x.onSignal = (n) => { x.exit(128 + n, n); };
  },
};

t.test('exec: output, stderr apart, exit codes, env and workdir in EXEC', async (t) => {
  const g = guest(t);
  const agent = new FakeAgent(g, { handlers });
  const c = client(t, g);
  const h = c.exec(['echo', 'hello', 'world']);
  t.equal(await h.pid, 100);
  t.same(await run(h), { stdout: 'hello world\n', stderr: '', exitCode: 0 });
  t.same(await run(c.exec(['fail', '3'])), { stdout: '', stderr: 'oops\n', exitCode: 3 });
  t.same(await run(c.exec(['env'], { env: { A: '1', B: 'x y' }, workdir: '/tmp/w' })), { stdout: 'A=1\nB=x y\ncwd=/tmp/w\n', stderr: '', exitCode: 0 });
  const missing = c.exec(['nosuch']);
  await t.rejects(missing.pid, { code: 'AGENT_EXEC_FAILED', errno: 2, message: /No such file/ });
  t.same(await run(missing), { stdout: '', stderr: 'tsibox-agent: exec nosuch: No such file or directory\n', exitCode: 127 });
  t.equal(c.running, 0, 'nothing left running');
  t.equal(agent.stats.badHostMessages, 0);
  await new Promise((r) => setTimeout(r, 20));
  t.equal(g.device.stats().connections, 0, 'every connection closed');
});

t.test('connect is retried while the agent is not listening, then it works', async (t) => {
  const g = guest(t);
  const c = client(t, g, 5000);
  const h = c.exec(['echo', 'late']);
  await new Promise((r) => setTimeout(r, 150));
  new FakeAgent(g, { handlers });
  t.same(await run(h), { stdout: 'late\n', stderr: '', exitCode: 0 });
});

t.test('no agent: AGENT_UNAVAILABLE after the connect timeout, with the reason', async (t) => {
  const g = guest(t);
  const c = client(t, g, 300);
  const started = performance.now();
  const h = c.exec(['true']);
  const out = collect(h.stdout);
  await t.rejects(h.exited, { code: 'AGENT_UNAVAILABLE', message: /did not accept a connection on vsock port 52 within 300 ms \(\d+ attempts, last: refused/ });
  await t.rejects(h.pid, { code: 'AGENT_UNAVAILABLE' });
  t.ok(performance.now() - started < 1500, 'bounded by the timeout');
  t.equal((await out).length, 0, 'stdout ends empty');
});

t.test('1 MiB of stdin through the window, sha256 on both sides', async (t) => {
  const g = guest(t);
  const agent = new FakeAgent(g, { handlers });
  const c = client(t, g);
  const data = randomBytes(1 << 20);
  const viaBuffer = c.exec(['cat'], { stdin: data });
  t.equal(sha(await collect(viaBuffer.stdout)), sha(data), 'a Buffer source: same bytes back');
  t.same(await viaBuffer.exited, { exitCode: 0 });
  const src = new PassThrough();
  const h = c.exec(['cat'], { stdin: src });
  const out = collect(h.stdout);
  for (let i = 0; i < 16; i++) src.write(data.subarray(i << 16, (i + 1) << 16));
  src.end();
  t.equal(sha(await out), sha(data), 'a Readable source, same bytes');
  t.same(await h.exited, { exitCode: 0 });
  t.ok(agent.stats.maxUnacked <= STDIN_WINDOW, `never more than the window unacknowledged (${agent.stats.maxUnacked})`);
  t.equal(agent.stats.badHostMessages, 0);
});

t.test('stdin waits for acknowledgements: an agent that acks nothing gets one window', async (t) => {
  const g = guest(t);
  let fx: FakeExec | null = null;
  let received = 0;
  const agent = new FakeAgent(g, { autoAck: false, handlers: { hold: (x) => { fx = x; x.started(5); x.onStdin = (d) => { received += d.length; }; } } });
  const c = client(t, g);
  const h = c.exec(['hold'], { stdin: Buffer.alloc(1 << 20) });
  await new Promise((r) => setTimeout(r, 100));
  t.equal(received, STDIN_WINDOW, 'exactly one window arrived');
  fx!.ack(STDIN_WINDOW);
  await new Promise((r) => setTimeout(r, 100));
  t.equal(received, 2 * STDIN_WINDOW, 'an ack lets the next window go');
  h.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 20));
  t.same(agent.stats.signals, [9], 'a signal gets through although stdin is held');
  fx!.exit(137, 9);
  t.same(await h.exited, { exitCode: 137, signal: 'SIGKILL' });
});

t.test('kill: queued while connecting, sent after EXEC; default SIGTERM; ignored after exit', async (t) => {
  const g = guest(t);
  const agent = new FakeAgent(g, { handlers });
  const c = client(t, g);
  const h = c.exec(['sleep']);
  h.kill('SIGKILL');
  t.same(await h.exited, { exitCode: 137, signal: 'SIGKILL' });
  h.kill();
  const h2 = c.exec(['sleep']);
  await h2.pid;
  h2.kill();
  t.same(await h2.exited, { exitCode: 143, signal: 'SIGTERM' });
  t.throws(() => h2.kill('SIGNOPE' as NodeJS.Signals), { code: 'INVALID_ARGUMENT' });
  t.same(agent.stats.signals, [9, 15]);
});

t.test('signalMain and resizeMain: one frame on a connection of its own; refusals are AGENT_PROTOCOL', async (t) => {
  const g = guest(t);
  const withTty = new FakeAgent(g, { handlers, terminal: true });
  const c = client(t, g);
  await c.signalMain('SIGINT');
  await c.resizeMain(132, 43);
  await c.resizeMain(80, 24);
  t.same(withTty.stats.mainSignals, [2]);
  t.same(withTty.stats.winsizes, [{ cols: 132, rows: 43 }, { cols: 80, rows: 24 }]);
  t.equal(withTty.stats.badHostMessages, 0);
  await t.rejects(c.resizeMain(0, 24), { code: 'INVALID_ARGUMENT' });
  t.equal(withTty.stats.connections, 3, 'nothing sent for a bad size');
  withTty.close();

  const g2 = guest(t);
  const noTty = new FakeAgent(g2, { handlers });
  const c2 = client(t, g2);
  await t.rejects(c2.resizeMain(100, 30), { code: 'AGENT_PROTOCOL', message: /could not set the terminal size: WINSIZE: the workload has no terminal/ });
  t.same(noTty.stats.winsizes, []);
  c2.close();
  await t.rejects(c2.resizeMain(100, 30), { code: 'INVALID_STATE' });

  const g3 = guest(t);
  const c3 = client(t, g3, 200);
  await t.rejects(c3.resizeMain(100, 30), { code: 'AGENT_UNAVAILABLE' }, 'no agent listening: retried until the connect timeout');
});

t.test('back-pressure: an unread stdout stops crediting the guest', async (t) => {
  const g = guest(t);
  let fx: FakeExec | null = null;
  new FakeAgent(g, { handlers: { flood: (x) => { fx = x; x.started(9); } } });
  const c = client(t, g);
  const h = c.exec(['flood']);
  await h.pid;
  const chunk = Buffer.alloc(MAX_DATA, 7);
  for (let i = 0; i < 32; i++) fx!.stdout(chunk); // 2 MiB offered
  await new Promise((r) => setTimeout(r, 100));
  const st = g.device.stats();
  t.ok(st.unconsumed <= 256 * 1024, `the host holds at most one buf_alloc uncredited (${st.unconsumed})`);
  t.ok(fx!.socket.queuedOut > 1 << 20, `the guest is held back (${fx!.socket.queuedOut} bytes waiting in the guest)`);
  const all = collect(h.stdout);
  await new Promise((r) => setTimeout(r, 100));
  fx!.exit(0);
  t.equal((await all).length, 32 * MAX_DATA, 'reading resumes the flow; nothing lost');
  t.same(await h.exited, { exitCode: 0 });
});

t.test('a destroyed output stream drops its data and does not stall the other', async (t) => {
  const g = guest(t);
  let fx: FakeExec | null = null;
  new FakeAgent(g, { handlers: { both: (x) => { fx = x; x.started(9); } } });
  const c = client(t, g);
  const h = c.exec(['both']);
  await h.pid;
  h.stdout.destroy();
  const err = collect(h.stderr);
  for (let i = 0; i < 16; i++) { fx!.stdout(Buffer.alloc(MAX_DATA)); fx!.stderr(Buffer.alloc(1000)); }
  fx!.exit(0);
  t.equal((await err).length, 16000);
  t.same(await h.exited, { exitCode: 0 });
});

t.test('a hostile agent: each violation ends that exec with AGENT_PROTOCOL, nothing throws', async (t) => {
  const cases: Array<[string, (x: FakeExec) => void, RegExp]> = [
    ['unknown type', (x) => { x.raw(guestFrames.raw(99)); }, /unknown message type 99/],
    ['a host type', (x) => { x.raw(guestFrames.raw(MsgType.STDIN, Buffer.from('x'))); }, /unknown message type 2/],
    ['bad magic', (x) => { x.raw(Buffer.from('GET / HTTP/1.1\r\n\r\n')); }, /bad magic/],
    ['4 GiB length', (x) => { x.raw(Buffer.from([0x45, 0x58, 1, MsgType.STDOUT, 0xff, 0xff, 0xff, 0xff])); }, /length 4294967295/],
    ['output before STARTED', (x) => { x.stdout('early'); }, /stdout before the start result/],
    ['EXIT before STARTED', (x) => { x.exit(0); }, /EXIT before the start result/],
    ['two STARTED', (x) => { x.started(1); x.started(2); }, /a second STARTED/],
    ['START_FAILED after STARTED', (x) => { x.started(1); x.startFailed(127, 2, 'x'); }, /START_FAILED after/],
    ['ack of unsent stdin', (x) => { x.started(1); x.raw(guestFrames.stdinAck(10)); }, /STDIN_ACK of 10 bytes/],
    ['exit status 300', (x) => { x.started(1); x.raw(guestFrames.raw(MsgType.EXIT, Buffer.from([44, 1, 0, 0, 0, 0, 0, 0]))); }, /EXIT with status 300/],
    ['pid 0', (x) => { x.started(0); }, /STARTED with pid 0/],
  ];
  const g = guest(t);
  const byName = new Map(cases.map(([n, f]) => [n, f]));
  const agent = new FakeAgent(g, { fallback: (x) => { byName.get(x.argv[0]!)!(x); } });
  const c = client(t, g);
  for (const [name, , reason] of cases) {
    const h = c.exec([name]);
    const out = collect(h.stdout);
    await t.rejects(h.exited, { code: 'AGENT_PROTOCOL', message: reason }, name);
    await out;
  }
  await new Promise((r) => setTimeout(r, 20));
  t.equal(agent.sockets.size, 0, 'every hostile connection was reset');
  t.equal(g.device.stats().connections, 0);
  t.equal(c.running, 0);
});

t.test('agent errors and lost connections', async (t) => {
  const g = guest(t);
  new FakeAgent(g, {
    handlers: {
      busy: (x) => { x.raw(guestFrames.error(1, 'too many execs running')); x.close(); },
      bad: (x) => { x.raw(guestFrames.error(2, 'STDIN past the window')); x.close(); },
      reset: (x) => { x.started(1); x.stdout('partial'); x.reset(); },
      hangup: (x) => { x.started(1); x.close(); },
    },
  });
  const c = client(t, g);
  await t.rejects(c.exec(['busy']).exited, { code: 'AGENT_BUSY', message: /too many execs/ });
  await t.rejects(c.exec(['bad']).exited, { code: 'AGENT_PROTOCOL', message: /refused: STDIN past the window/ });
  const r = c.exec(['reset']);
  const out = collect(r.stdout);
  await t.rejects(r.exited, { code: 'AGENT_UNAVAILABLE', message: /ended before the exit status: reset-by-guest/ });
  t.equal((await out).toString(), 'partial', 'output before the loss is kept');
  await t.rejects(c.exec(['hangup']).exited, { code: 'AGENT_UNAVAILABLE' });
});

t.test('close() ends running execs and resets their connections', async (t) => {
  const g = guest(t);
  const agent = new FakeAgent(g, { handlers });
  const c = new AgentClient(g.device, { connectTimeoutMs: 2000 });
  const a = c.exec(['sleep']);
  const b = c.exec(['sleep']);
  await Promise.all([a.pid, b.pid]);
  t.equal(c.running, 2);
  c.close();
  await t.rejects(a.exited, { code: 'AGENT_UNAVAILABLE', message: /closed/ });
  await t.rejects(b.exited, { code: 'AGENT_UNAVAILABLE' });
  await new Promise((r) => setTimeout(r, 20));
  t.equal(agent.sockets.size, 0, 'the agent saw both connections reset');
  t.throws(() => c.exec(['echo']), { code: 'INVALID_STATE' });
  c.close();
});

t.test('promises nobody awaits never become unhandled rejections', async (t) => {
  const g = guest(t);
  const c = client(t, g, 50);
  const seen: unknown[] = [];
  const on = (e: unknown): void => { seen.push(e); };
  process.on('unhandledRejection', on);
  t.teardown(() => { process.off('unhandledRejection', on); });
  c.exec(['x']);
  await new Promise((r) => setTimeout(r, 300));
  t.same(seen, []);
});
