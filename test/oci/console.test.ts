// src/oci/console.ts (with src/sys/pty.ts, src/sys/fd-passing.ts): the container's
// terminal handed over runc's --console-socket protocol. The engine's side is played by
// a python3 script (an independent receiver): it listens, takes the master with
// socket.recv_fds, checks it, and then types, reads and resizes on command.
import t, { type Test } from 'tap';
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { openConsole, type ConsoleRelay } from '../../src/oci/console.js';
import { TsiboxError } from '../../src/errors.js';
import { closeFd } from '../../src/sys/libc.js';
import { socketPair } from '../../src/sys/socket.js';
import { sendFd } from '../../src/sys/fd-passing.js';
import { getWindowSize, isControllingTerminal, openPty, setRaw, setWindowSize } from '../../src/sys/pty.js';

// If this test process happens to lead a session without a terminal, openConsole makes
// the pty its controlling terminal, and the receiver closing the master would SIGHUP us.
process.on('SIGHUP', () => {});

const ENGINE = String.raw`
import fcntl, json, os, select, socket, struct, sys, termios, time
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
def out(o):
    sys.stdout.write(json.dumps(o) + "\n"); sys.stdout.flush()
out({"event": "listening"})
srv.settimeout(20)
conn, _ = srv.accept()
msg, fds, flags, _ = socket.recv_fds(conn, 4096, 4)
conn.close(); srv.close()
m = fds[0]
def winsize():
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(m, termios.TIOCGWINSZ, b"\0" * 8))
    return [cols, rows]
a = termios.tcgetattr(m)
out({"event": "received", "name": msg.decode(), "fds": len(fds), "truncated": bool(flags & socket.MSG_CTRUNC),
     "isatty": os.isatty(m), "winsize": winsize(), "pts": struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"\0" * 4))[0],
     "iflag": a[0], "oflag": a[1], "lflag": a[3],
     "raw": not (a[3] & (termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)) and not (a[1] & termios.OPOST)
            and not (a[0] & (termios.ICRNL | termios.INLCR | termios.IGNCR | termios.IXON | termios.ISTRIP))})
for line in sys.stdin:
    c = json.loads(line)
    op = c["op"]
    if op == "write":
        data = bytes.fromhex(c["hex"])
        while data:
            n = os.write(m, data); data = data[n:]
        out({"ok": True})
    elif op == "read":
        # Up to n bytes, until n arrived or nothing came for quiet seconds.
        got = b""; deadline = time.time() + c["timeout"]
        while len(got) < c["n"] and time.time() < deadline:
            r, _, _ = select.select([m], [], [], max(0, deadline - time.time()))
            if not r: break
            try: got += os.read(m, c["n"] - len(got))
            except OSError: break
        out({"hex": got.hex()})
    elif op == "winsz":
        fcntl.ioctl(m, termios.TIOCSWINSZ, struct.pack("HHHH", c["rows"], c["cols"], 0, 0))
        out({"ok": True})
    elif op == "getwinsz":
        out({"winsize": winsize()})
    elif op == "close":
        os.close(m); m = -1
        out({"ok": True})
`;

type Json = Record<string, any>;

/** The python engine stand-in; killed (by its pid) and its directory removed in teardown. */
class Engine {
  readonly proc: ChildProcess;
  readonly socketPath: string;
  readonly #lines: string[] = [];
  readonly #waiters: Array<(l: string) => void> = [];

  constructor(t: { teardown(fn: () => void): void }) {
    const dir = mkdtempSync(join(tmpdir(), 'tsibox-console-'));
    this.socketPath = join(dir, 'console.sock');
    this.proc = spawn('python3', ['-u', '-c', ENGINE, this.socketPath], { stdio: ['pipe', 'pipe', 'inherit'] });
    const pid = this.proc.pid!;
    t.teardown(() => {
      try { process.kill(pid, 'SIGKILL'); } catch { /* already gone */ }
      rmSync(dir, { recursive: true, force: true });
    });
    createInterface({ input: this.proc.stdout! }).on('line', (l) => {
      const w = this.#waiters.shift();
      if (w !== undefined) w(l);
      else this.#lines.push(l);
    });
  }

  async next(timeoutMs = 5000): Promise<Json> {
    const l = this.#lines.shift();
    if (l !== undefined) return JSON.parse(l) as Json;
    return JSON.parse(await withTimeout(new Promise<string>((resolve) => { this.#waiters.push(resolve); }), timeoutMs, 'the engine stand-in to answer')) as Json;
  }

  async cmd(c: Json, timeoutMs = 5000): Promise<Json> {
    this.proc.stdin!.write(`${JSON.stringify(c)}\n`);
    return this.next(timeoutMs);
  }

  async type(bytes: Buffer | string): Promise<void> {
    await this.cmd({ op: 'write', hex: Buffer.from(bytes).toString('hex') });
  }

  async read(n: number, timeout: number): Promise<Buffer> {
    const r = await this.cmd({ op: 'read', n, timeout }, timeout * 1000 + 5000);
    return Buffer.from(r['hex'] as string, 'hex');
  }
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms); })]);
  } finally {
    clearTimeout(timer);
  }
}

/** Collects `input` until `n` bytes came (or the time is up). */
async function collect(relay: ConsoleRelay, n: number, ms = 3000): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let len = 0;
  await withTimeout(new Promise<void>((resolve) => {
    const on = (d: Buffer): void => {
      chunks.push(d);
      len += d.length;
      if (len >= n) { relay.input.off('data', on); resolve(); }
    };
    relay.input.on('data', on);
    relay.input.resume();
  }), ms, `${n} bytes on input (got ${len})`);
  // Paused between reads, so nothing flows away with no listener.
  relay.input.pause();
  return Buffer.concat(chunks);
}

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

async function ready(t: { teardown(fn: () => void): void }): Promise<Engine> {
  const e = new Engine(t);
  const l = await e.next(10_000);
  if (l['event'] !== 'listening') throw new Error(`engine: ${JSON.stringify(l)}`);
  return e;
}

const ALL_BYTES = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

t.test('the master goes to the console socket (SCM_RIGHTS, named /dev/ptmx), sized, the terminal raw; no descriptor left after close', async (t) => {
  const engine = await ready(t);
  const before = openFds();
  const relay = await openConsole(engine.socketPath, { cols: 100, rows: 30 });
  t.teardown(() => relay.close());
  const got = await engine.next();
  t.match(got, { event: 'received', name: '/dev/ptmx', fds: 1, truncated: false, isatty: true, winsize: [100, 30], raw: true });
  t.type(got['pts'], 'number', 'the master is a pty master (TIOCGPTN answers)');
  t.equal(openFds(), before + 2, 'our slave and libuv\'s reopened slave; the master and the socket are closed');
  relay.close();
  relay.close();
  await sleep(20);
  t.equal(openFds(), before, 'close() released every descriptor');
});

t.test('raw both ways: bytes exactly as sent, no echo, no CR/LF translation, no signal characters', async (t) => {
  const engine = await ready(t);
  const relay = await openConsole(engine.socketPath, { cols: 80, rows: 24 });
  t.teardown(() => relay.close());
  await engine.next();

  await engine.type('a\n');
  t.same(await collect(relay, 2), Buffer.from('a\n'), 'typed "a\\n" arrives as "a\\n" (no ICRNL/INLCR, no line buffering needed)');
  t.same(await engine.read(64, 0.3), Buffer.alloc(0), 'nothing echoed back to the master');

  await engine.type('\r\x03\x04\x1a\x11\x13');
  t.same(await collect(relay, 6), Buffer.from('\r\x03\x04\x1a\x11\x13'), 'CR, ^C, ^D, ^Z, ^Q, ^S are plain bytes');

  await engine.type(ALL_BYTES);
  t.same(await collect(relay, 256), ALL_BYTES, 'all 256 byte values typed arrive unchanged');

  relay.output.write('hello\n');
  t.same(await engine.read(6, 3), Buffer.from('hello\n'), 'written "hello\\n" is read as "hello\\n" (no ONLCR)');
  relay.output.write(ALL_BYTES);
  t.same(await engine.read(256, 3), ALL_BYTES, 'all 256 byte values written arrive unchanged');
  t.same(await engine.read(16, 0.2), Buffer.alloc(0), 'and nothing more');
});

t.test('output never blocks the event loop; backpressure until the engine reads', async (t) => {
  const engine = await ready(t);
  const relay = await openConsole(engine.socketPath, { cols: 80, rows: 24 });
  t.teardown(() => relay.close());
  await engine.next();
  const big = Buffer.alloc(1 << 20);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 10)) & 0xff;
  let flushed = false;
  const t0 = Date.now();
  const more = relay.output.write(big, () => { flushed = true; });
  t.ok(Date.now() - t0 < 100, `write() returned at once (${Date.now() - t0} ms)`);
  t.equal(more, false, 'write() asks the writer to wait (backpressure)');
  const t1 = Date.now();
  await sleep(50);
  t.ok(Date.now() - t1 < 250, `a 50 ms timer fired after ${Date.now() - t1} ms while 1 MiB waited on an unread terminal`);
  t.notOk(flushed, 'not flushed while the engine does not read');
  const got = await engine.read(big.length, 15);
  t.equal(got.length, big.length, 'the engine read 1 MiB');
  t.ok(got.equals(big), 'byte for byte');
  await withTimeout(new Promise<void>((resolve) => { if (flushed) resolve(); else relay.output.once('drain', () => resolve()); }), 3000, 'drain');
});

t.test('resizes by the engine are reported (poll or SIGWINCH), once each, within a bounded time', async (t) => {
  const engine = await ready(t);
  const relay = await openConsole(engine.socketPath, { cols: 80, rows: 24 });
  t.teardown(() => relay.close());
  await engine.next();
  t.ok(relay.resizeWatch === 'poll' || relay.resizeWatch === 'sigwinch', relay.resizeWatch);

  await engine.cmd({ op: 'winsz', cols: 132, rows: 43 });
  await sleep(50);
  // Registered after the resize: told the current size once.
  const seen: Array<[number, number]> = [];
  const first = new Promise<number>((resolve) => {
    const t0 = Date.now();
    relay.onResize((c, r) => { seen.push([c, r]); resolve(Date.now() - t0); });
  });
  await withTimeout(first, 2000, 'the first resize');
  t.same(seen, [[132, 43]], 'a late listener hears of the resize that came before it');

  const t0 = Date.now();
  await engine.cmd({ op: 'winsz', cols: 200, rows: 50 });
  await withTimeout((async () => { while (seen.length < 2) await sleep(5); })(), 2000, 'the second resize');
  const latency = Date.now() - t0;
  t.ok(latency < 1000, `reported after ${latency} ms (${relay.resizeWatch})`);
  await engine.cmd({ op: 'winsz', cols: 200, rows: 50 });
  await sleep(600);
  t.same(seen, [[132, 43], [200, 50]], 'the same size again is no resize');
  relay.close();
  await engine.cmd({ op: 'winsz', cols: 10, rows: 10 });
  await sleep(600);
  t.equal(seen.length, 2, 'nothing after close()');
});

t.test('the engine closing the master: input ends, output discards without error, close() still idempotent', async (t) => {
  const engine = await ready(t);
  const relay = await openConsole(engine.socketPath, { cols: 80, rows: 24 });
  t.teardown(() => relay.close());
  await engine.next();
  const errors: unknown[] = [];
  relay.output.on('error', (e) => errors.push(e));
  relay.input.on('error', (e) => errors.push(e));
  const ended = new Promise<void>((resolve) => relay.input.once('end', () => resolve()));
  relay.input.resume();
  await engine.cmd({ op: 'close' });
  await withTimeout(ended, 3000, 'input to end');
  t.pass('input ended');
  await withTimeout(new Promise<void>((resolve, reject) => relay.output.write('late\n', (e) => (e ? reject(e) : resolve()))), 3000, 'a late write');
  relay.output.end();
  relay.close();
  relay.close();
  await sleep(50);
  t.same(errors, [], 'no error events');
});

t.test('errors: no socket (ENOENT), nobody listening (ECONNREFUSED), path too long; nothing leaks', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-console-err-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const before = openFds();

  const missing = join(dir, 'missing.sock');
  await t.rejects(openConsole(missing, { cols: 80, rows: 24 }), { code: 'SYSCALL', errno: 2, message: /ENOENT/ });

  const dead = join(dir, 'dead.sock');
  execFileSync('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', dead]);
  await t.rejects(openConsole(dead, { cols: 80, rows: 24 }), { code: 'SYSCALL', errno: 111, message: /ECONNREFUSED/ });

  const long = join(dir, 'x'.repeat(120));
  const err = await openConsole(long, { cols: 80, rows: 24 }).then(() => null, (e: unknown) => e);
  t.ok(err instanceof TsiboxError, 'a TsiboxError');
  t.match(err, { code: 'INVALID_ARGUMENT', message: /longer than 107 bytes/ });

  await t.rejects(openConsole(missing, { cols: 70000, rows: 24 }), { code: 'INVALID_ARGUMENT' }, 'size out of range');
  t.throws(() => sendFd(missing, 0, ''), { code: 'INVALID_ARGUMENT' }, 'sendFd: an empty name cannot carry SCM_RIGHTS on a stream');
  t.throws(() => sendFd(missing, 0, 'x'.repeat(4096)), { code: 'INVALID_ARGUMENT' }, 'sendFd: a name receivers cannot take whole');
  t.throws(() => sendFd(missing, 0, '/dev/ptmx'), { code: 'SYSCALL', errno: 2 });
  t.equal(openFds(), before, 'no descriptor left open by the failures');
});

const CHILD = fileURLToPath(new URL('../support/console-child.js', import.meta.url));

interface Child {
  engine: Engine;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  waitFor(event: string, ms: number): Promise<Json>;
}

/** Starts test/support/console-child.js against a fresh engine stand-in (both killed by pid in teardown). */
async function startChild(t: Test, detached: boolean, extra: string[] = []): Promise<Child> {
  const engine = await ready(t);
  const child = spawn(process.execPath, [CHILD, engine.socketPath, '90', '25', ...extra], { detached, stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = child.pid!;
  t.teardown(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const lines: Json[] = [];
  const waiters: Array<() => void> = [];
  createInterface({ input: child.stdout! }).on('line', (l) => { lines.push(JSON.parse(l) as Json); waiters.splice(0).forEach((w) => w()); });
  const waitFor = (event: string, ms: number): Promise<Json> => withTimeout((async () => {
    for (;;) {
      const i = lines.findIndex((l) => l['event'] === event);
      if (i >= 0) return lines.splice(i, 1)[0]!;
      await new Promise<void>((resolve) => waiters.push(resolve));
    }
  })(), ms, `the child's ${event}`);
  return { engine, exited, waitFor };
}

async function childRun(t: Test, detached: boolean): Promise<void> {
  const { engine, exited, waitFor } = await startChild(t, detached);
  t.match(await engine.next(10_000), { event: 'received', name: '/dev/ptmx', winsize: [90, 25], raw: true });
  const open = await waitFor('open', 10_000);
  t.equal(open['resizeWatch'], detached ? 'sigwinch' : 'poll', detached ? 'a session leader gets SIGWINCH' : 'not a session leader: polls');
  await engine.type('hi\n');
  t.same(await engine.read(3, 3), Buffer.from('HI\n'), 'relayed through the child');
  const t0 = Date.now();
  await engine.cmd({ op: 'winsz', cols: 111, rows: 33 });
  t.match(await waitFor('resize', 3000), { cols: 111, rows: 33 });
  const latency = Date.now() - t0;
  t.ok(latency < 1000, `${detached ? 'SIGWINCH' : 'poll'}: reported after ${latency} ms`);
  await engine.type('q');
  await waitFor('closed', 3000);
  const end = await withTimeout(exited, 5000, 'the child to exit by itself after close()');
  t.same(end, { code: 0, signal: null }, 'the child exited by itself, status 0, with the engine still holding the master');
}

t.test('in a detached child (a session leader, as the monitor): SIGWINCH, and it exits by itself after close()', async (t) => {
  await childRun(t, true);
});

t.test('in a child that leads no session: polling, and it exits by itself after close()', async (t) => {
  await childRun(t, false);
});

t.test('a session leader holding the terminal: the engine closing the master sends it SIGHUP (fatal unless handled) and ends input', async (t) => {
  const handled = await startChild(t, true, ['hup']);
  t.match(await handled.engine.next(10_000), { event: 'received' });
  t.match(await handled.waitFor('open', 10_000), { resizeWatch: 'sigwinch' });
  await handled.engine.cmd({ op: 'close' });
  await handled.waitFor('sighup', 3000);
  await handled.waitFor('input-end', 3000);
  t.same(await withTimeout(handled.exited, 5000, 'the child to exit'), { code: 0, signal: null }, 'with a SIGHUP handler: input ends, close(), and it exits by itself');

  const unhandled = await startChild(t, true);
  t.match(await unhandled.engine.next(10_000), { event: 'received' });
  await unhandled.waitFor('open', 10_000);
  await unhandled.engine.cmd({ op: 'close' });
  t.same(await withTimeout(unhandled.exited, 5000, 'the child to die'), { code: null, signal: 'SIGHUP' }, 'without one, SIGHUP ends it');
});

t.test('a session leader whose openConsole fails keeps no terminal: no SIGHUP, the error is reported', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-console-err-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const child = spawn(process.execPath, [CHILD, join(dir, 'missing.sock'), '80', '24'], { detached: true, stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = child.pid!;
  t.teardown(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  const end = await withTimeout(new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))), 10_000, 'the child to exit');
  t.same(end, { code: 3, signal: null }, 'exited with its own status, not killed by SIGHUP');
  t.match(JSON.parse(out.trim().split('\n')[0]!), { event: 'error', code: 'SYSCALL', message: /ENOENT/ });
});

t.test('src/sys/pty.ts: window size both sides, ENOTTY errors, sizes checked; `controlling` for a session leader', async (t) => {
  const p = openPty({ size: { cols: 81, rows: 25 } });
  t.teardown(() => { closeFd(p.master); closeFd(p.slave); });
  t.match(p.slavePath, /^\/dev\/pts\/\d+$/);
  t.same(getWindowSize(p.slave), { cols: 81, rows: 25 }, 'the slave sees the size set on the master');
  setWindowSize(p.slave, 300, 100);
  t.same(getWindowSize(p.master), { cols: 300, rows: 100 }, 'and the other way round');
  t.notOk(isControllingTerminal(p.slave), 'opened with O_NOCTTY: nobody\'s terminal');
  t.throws(() => setWindowSize(p.master, 65536, 1), { code: 'INVALID_ARGUMENT' });
  t.throws(() => openPty({ size: { cols: 1.5, rows: 1 } }), { code: 'INVALID_ARGUMENT' });
  const [r, w] = socketPair();
  t.teardown(() => { closeFd(r); closeFd(w); });
  t.throws(() => setRaw(r), { code: 'SYSCALL', errno: 25, message: /ENOTTY/ });
  t.throws(() => getWindowSize(r), { code: 'SYSCALL', errno: 25 });

  const ptyModule = fileURLToPath(new URL('../../src/sys/pty.js', import.meta.url));
  const script = `import { openPty, isControllingTerminal, takeControllingTerminal } from ${JSON.stringify(ptyModule)};
const a = openPty({ controlling: true });
const b = openPty();
process.stdout.write(JSON.stringify({ a: isControllingTerminal(a.slave), b: isControllingTerminal(b.slave), takeB: takeControllingTerminal(b.slave) }));
process.exit(0);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { detached: true, stdio: ['ignore', 'pipe', 'inherit'] });
  const pid = child.pid!;
  t.teardown(() => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  await withTimeout(new Promise((resolve) => child.once('exit', resolve)), 10_000, 'the session-leader child');
  t.same(JSON.parse(out), { a: true, b: false, takeB: false }, 'a session leader acquires the slave opened with controlling: true, and then no second one');
});
