/**
 * End to end: a terminal for the guest program (`Sandbox` option `tty`, `resize()`,
 * `tsibox run -t`; docs/guest-init.md "A terminal for the workload"). Through the API:
 * the program's stdio is a pseudo-terminal of the given size, stderr included; end of
 * stdin is Ctrl-D; byte 0x03 is SIGINT in the guest; resize() reaches the program as
 * SIGWINCH, merged and in order; the relay survives `kill -9 -1`; the last output is
 * drained although a background process keeps the terminal open. Through the CLI, in a
 * real host terminal (tmux, detached, fixed size): a prompt, line editing, `stty size`
 * before and after a resize of the tmux window, Ctrl-C ending `sleep 30` inside the
 * guest while tsibox runs on, Ctrl-D ending the shell with status 0, and the host
 * terminal's mode restored afterwards.
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { Sandbox } from '../../src/index.js';

t.setTimeout(600_000);
const { skip } = await e2ePrerequisites(t);

// The CLI of this build (dist/ or wherever the tests were compiled to).
const MAIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every 100 ms until it returns a value, at most `ms`; throws with `what` otherwise. */
async function waitFor<T>(ms: number, what: string, check: () => T | undefined | false, detail: () => string = () => ''): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = check();
    if (v !== undefined && v !== false) return v;
    if (performance.now() >= deadline) throw new Error(`${what}: not within ${ms} ms${detail() ? `\n${detail()}` : ''}`);
    await sleep(100);
  }
}

/** Collects a stream as text. */
function collect(s: NodeJS.ReadableStream | null): () => string {
  let text = '';
  s?.on('data', (d: Buffer) => { text += d.toString('utf8'); });
  return () => text;
}

t.test('Sandbox with a terminal', { skip }, async (t) => {
  await t.test('stdio is a terminal of the given size; stderr goes to it; CR LF; TERM=xterm', async (t) => {
    const r = await Sandbox.run({
      engine: E2E_ENGINE,
      argv: ['sh', '-c', 'tty; stty size; echo "TERM=$TERM"; echo to-stderr >&2; [ -t 0 ] && [ -t 1 ] && [ -t 2 ] && echo all-three; exit 3'],
      tty: { cols: 77, rows: 11 },
    });
    t.equal(r.exitCode, 3);
    t.equal(r.stdout!.toString(), '/dev/pts/0\r\n11 77\r\nTERM=xterm\r\nto-stderr\r\nall-three\r\n');
    t.equal(r.stderr!.length, 0, 'the stderr port stays empty');
    const own = await Sandbox.run({ engine: E2E_ENGINE, argv: ['sh', '-c', 'echo "$TERM"'], env: { TERM: 'vt100' }, tty: { cols: 80, rows: 24 } });
    t.equal(own.stdout!.toString(), 'vt100\r\n', 'a TERM of the caller is kept');
  });

  await t.test('the end of stdin is the terminal\'s end of file (Ctrl-D): cat ends', async (t) => {
    const r = await Sandbox.run({ engine: E2E_ENGINE, argv: ['cat'], tty: { cols: 80, rows: 24 }, stdin: 'abc\n', timeoutMs: 120_000 });
    t.equal(r.exitCode, 0);
    t.equal(r.stdout!.toString(), 'abc\r\nabc\r\n', 'the terminal echoes, cat writes');
  });

  await t.test('byte 0x03 on stdin is SIGINT for the foreground program in the guest', async (t) => {
    const sb = await Sandbox.start({ engine: E2E_ENGINE, argv: ['sh', '-c', 'echo ready; exec sleep 30'], tty: { cols: 80, rows: 24 }, stdin: 'pipe', timeoutMs: 120_000 });
    const out = collect(sb.stdout);
    await waitFor(60_000, 'ready', () => out().includes('ready'));
    await sleep(300); // sleep has been exec'd
    const t0 = performance.now();
    sb.stdin!.write('\x03');
    const r = await sb.exited;
    t.equal(r.exitCode, 130);
    t.equal(r.signal, 'SIGINT');
    t.ok(performance.now() - t0 < 15_000, `ended ${(performance.now() - t0).toFixed(0)} ms after the byte, not after sleep's 30 s`);
    t.match(out(), /\^C/, 'the terminal echoed ^C');
  });

  await t.test('resize(): SIGWINCH and the new size, sizes merged and in order; errors', async (t) => {
    const sb = await Sandbox.start({
      engine: E2E_ENGINE,
      argv: ['sh', '-c', 'trap "echo winch \\$(stty size)" WINCH; echo ready; while :; do sleep 1; done'],
      tty: { cols: 80, rows: 24 },
      timeoutMs: 120_000,
    });
    t.teardown(() => sb.stop({ timeoutMs: 0 }).then(() => {}));
    const out = collect(sb.stdout);
    await waitFor(60_000, 'ready', () => out().includes('ready'));
    await sb.resize(132, 43);
    await waitFor(15_000, 'winch 43 132', () => out().includes('winch 43 132'), out);
    // Several at once: the last one wins, and nothing arrives after it.
    await Promise.all([sb.resize(100, 30), sb.resize(101, 31), sb.resize(102, 32)]);
    await waitFor(15_000, 'winch 32 102', () => out().includes('winch 32 102'), out);
    await sleep(1500);
    t.match(out(), /winch 32 102\r\n$/, 'the last size is the last one the program saw');
    await sb.resize(102, 32); // the size it has: nothing to send
    await t.rejects(sb.resize(0, 24), { code: 'INVALID_ARGUMENT' });
    await t.rejects(sb.resize(80, 65536), { code: 'INVALID_ARGUMENT' });
    await sb.stop({ timeoutMs: 0 });
    await t.rejects(sb.resize(80, 24), { code: 'INVALID_STATE' });
    await t.rejects(Sandbox.start({ engine: E2E_ENGINE, argv: ['true'], tty: { cols: 0, rows: 24 } }), { code: 'INVALID_ARGUMENT' }, 'a bad size fails the start');
  });

  await t.test('resize() without a terminal, or without the agent: NOT_SUPPORTED; the terminal works without the agent', async (t) => {
    const plain = await Sandbox.start({ engine: E2E_ENGINE, argv: ['sleep', '30'], timeoutMs: 120_000 });
    await t.rejects(plain.resize(80, 24), { code: 'NOT_SUPPORTED', message: /no terminal/ });
    await plain.stop({ timeoutMs: 0 });
    const noAgent = await Sandbox.start({ engine: E2E_ENGINE, argv: ['sh', '-c', 'stty size'], tty: { cols: 90, rows: 20 }, agent: false, timeoutMs: 120_000 });
    const out = collect(noAgent.stdout);
    await t.rejects(noAgent.resize(80, 24), { code: 'NOT_SUPPORTED', message: /agent/ });
    t.equal((await noAgent.exited).exitCode, 0);
    t.equal(out(), '20 90\r\n');
  });

  await t.test('the relay is restarted after kill -9 -1; the last output is drained although a background process holds the terminal', async (t) => {
    const r = await Sandbox.run({
      engine: E2E_ENGINE,
      argv: ['sh', '-c', 'kill -9 -1; sleep 1; echo still here; sleep 60 & i=0; while [ $i -lt 300 ]; do echo line$i; i=$((i+1)); done; echo last-line'],
      tty: { cols: 80, rows: 24 },
      timeoutMs: 120_000,
    });
    const out = r.stdout!.toString();
    t.equal(r.exitCode, 0);
    t.match(out, /^still here\r\n/, 'output after the relay was killed');
    const lines = out.split('\r\n');
    t.equal(lines.length, 1 + 300 + 1 + 1, 'every line');
    t.equal(lines.at(-2), 'last-line', 'the last line');
    t.ok(r.ms < 45_000, `ended without waiting for the background sleep 60 (${r.ms.toFixed(0)} ms)`);
  });
});

/** `tmux` on a private socket. */
function tmuxAvailable(): string | false {
  const r = spawnSync('tmux', ['-V'], { encoding: 'utf8' });
  if (r.status === 0) return false;
  const why = 'tmux is not installed (Debian: tmux; scripts/install-guest-deps.sh installs it)';
  if (process.env['CI'] === 'true') throw new Error(`${why}: CI must run this test`);
  return why;
}

class Tmux {
  readonly dir = mkdtempSync(join(tmpdir(), 'tsibox-tty-'));
  readonly sock = join(this.dir, 'tmux.sock');
  run(...args: string[]): string {
    const r = spawnSync('tmux', ['-S', this.sock, ...args], { encoding: 'utf8', env: { ...process.env, SHELL: '/bin/sh' }, timeout: 10_000 });
    if (r.status !== 0) throw new Error(`tmux ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  }
  /** The pane's lines, trailing blanks dropped. */
  screen(): string[] {
    try {
      return this.run('capture-pane', '-p', '-t', 'tty').split('\n').map((l) => l.trimEnd());
    } catch {
      return [];
    }
  }
  size(): { cols: number; rows: number } {
    const [w, h] = this.run('display-message', '-p', '-t', 'tty', '#{pane_width} #{pane_height}').trim().split(' ').map(Number);
    return { cols: w!, rows: h! };
  }
  /** Literal text, then keys by tmux name (Enter, BSpace, C-c). */
  type(text: string, ...keys: string[]): void {
    if (text !== '') this.run('send-keys', '-t', 'tty', '-l', text);
    for (const k of keys) this.run('send-keys', '-t', 'tty', k);
  }
  close(): void {
    spawnSync('tmux', ['-S', this.sock, 'kill-server'], { timeout: 10_000 });
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Runs `stty size; echo MARK` and returns the size line the guest printed, or undefined. */
function sizeReport(screen: string[], mark: string): string | undefined {
  const i = screen.lastIndexOf(mark);
  return i > 0 ? screen[i - 1] : undefined;
}

t.test('tsibox run -t in a real terminal (tmux)', { skip: skip || tmuxAvailable() }, async (t) => {
  await t.test('prompt, line editing, stty size, resize, Ctrl-C inside the guest, Ctrl-D ends it with 0; the terminal is restored', async (t) => {
    const tm = new Tmux();
    t.teardown(() => { tm.close(); });
    const status = join(tm.dir, 'status');
    const before = join(tm.dir, 'stty-before');
    const after = join(tm.dir, 'stty-after');
    const cmd = `stty -g > ${before}; ${JSON.stringify(process.execPath)} ${JSON.stringify(MAIN)} run --engine ${E2E_ENGINE} -t -- sh; echo $? > ${status}; stty -g > ${after}.part; mv ${after}.part ${after}`;
    // The mode is written to a side file and renamed: the shell creates `after` before stty
    // writes it, and a slow host showed that empty file to the check below.
    tm.run('-f', '/dev/null', 'new-session', '-d', '-s', 'tty', '-x', '100', '-y', '30', cmd);
    const show = (): string => `screen:\n${tm.screen().filter((l) => l !== '').join('\n')}`;
    const first = tm.size();
    t.comment(`tmux pane ${first.cols}x${first.rows}`);

    await waitFor(120_000, 'the shell prompt', () => tm.screen().includes('/ #'), show);

    // Line editing: the guest's terminal takes Backspace (DEL) back.
    tm.type('echo hellx', 'BSpace');
    tm.type('o', 'Enter');
    await waitFor(20_000, 'hello', () => tm.screen().includes('hello'), show);
    t.pass('echo hellx, Backspace, o printed hello');

    tm.type('stty size; echo END1', 'Enter');
    const size1 = await waitFor(20_000, 'stty size', () => sizeReport(tm.screen(), 'END1'), show);
    t.equal(size1, `${first.rows} ${first.cols}`, 'the guest terminal has the host terminal\'s size');

    tm.run('resize-window', '-t', 'tty', '-x', '120', '-y', '40');
    const second = tm.size();
    t.not(`${second.cols}x${second.rows}`, `${first.cols}x${first.rows}`, 'the tmux window changed size');
    // The new size travels over vsock, the keys over the console port: ask until it has arrived.
    let size2: string | undefined;
    for (let i = 0; i < 10 && size2 !== `${second.rows} ${second.cols}`; i++) {
      await sleep(1000);
      tm.type(`stty size; echo END2${i}`, 'Enter');
      size2 = await waitFor(20_000, 'stty size after the resize', () => sizeReport(tm.screen(), `END2${i}`), show);
    }
    t.equal(size2, `${second.rows} ${second.cols}`, 'the guest terminal followed the resize');

    tm.type('sleep 30', 'Enter');
    await sleep(1500);
    const t0 = performance.now();
    tm.type('', 'C-c');
    tm.type('echo AFTER_INT', 'Enter');
    await waitFor(15_000, 'the prompt after Ctrl-C', () => tm.screen().includes('AFTER_INT'), show);
    t.ok(performance.now() - t0 < 15_000, `Ctrl-C ended sleep 30 in ${(performance.now() - t0).toFixed(0)} ms`);
    t.notOk(existsSync(status), 'tsibox still runs after Ctrl-C');

    tm.type('', 'C-d');
    const code = await waitFor(60_000, 'tsibox to exit after Ctrl-D', () => existsSync(after) && readFileSync(status, 'utf8').trim(), show);
    t.equal(code, '0', 'tsibox exited 0');
    t.equal(readFileSync(after, 'utf8'), readFileSync(before, 'utf8'), 'the host terminal\'s mode is as it was');
  });

  await t.test('stdout to a file, stdin the terminal: all output, in order, and the status', async (t) => {
    const tm = new Tmux();
    t.teardown(() => { tm.close(); });
    const status = join(tm.dir, 'status');
    const out = join(tm.dir, 'out');
    const script = 'i=0; while [ $i -lt 500 ]; do echo line$i; i=$((i+1)); done; echo last-line; exit 5';
    const cmd = `${JSON.stringify(process.execPath)} ${JSON.stringify(MAIN)} run --engine ${E2E_ENGINE} -t -- sh -c '${script}' > ${out}; echo $? > ${status}`;
    tm.run('-f', '/dev/null', 'new-session', '-d', '-s', 'tty', '-x', '90', '-y', '25', cmd);
    const code = await waitFor(120_000, 'tsibox to exit', () => existsSync(status) && readFileSync(status, 'utf8').trim());
    t.equal(code, '5');
    const lines = readFileSync(out, 'utf8').split('\r\n');
    t.equal(lines.length, 502);
    t.equal(lines[0], 'line0');
    t.equal(lines[499], 'line499');
    t.equal(lines[500], 'last-line');
  });
});
