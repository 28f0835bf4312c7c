/**
 * End to end: the guest exec agent (native/init/agent.c) through AgentClient over the
 * sandbox's own VsockDevice (obtained with `onDevices`), under E2E_ENGINE. The main
 * workload waits on its stdin while the host runs other processes beside it: exit
 * statuses (0, 3, 126, 127, 137, ...), env, workdir, user, stdout apart from stderr,
 * 1 MiB through `cat` (sha256), concurrency, kill(), the 64-exec limit, hostile frames
 * on the agent's port (after which exec still works, from the same agent), and that
 * execs die with the VM while the workload's own status is unaffected. A second
 * sandbox boots with `tsibox.agent=0`: connecting fails with AGENT_UNAVAILABLE.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { PassThrough, type Readable } from 'node:stream';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { memoryLogger, type LogLine } from '../helpers/memory-logger.js';
import { Sandbox, type SandboxResult } from '../../src/index.js';
import { cmdlineArchive } from '../../src/guest/index.js';
import { AgentClient, type ExecHandle } from '../../src/agent/client.js';
import {
  AGENT_PORT, AgentErrorCode, AgentPeerFault, FrameDecoder, MsgType, STDIN_WINDOW, decodeGuestMessage, encodeExec,
  encodeSignal, encodeStdin, encodeStdinEof, encodeWinsize, guestFrames,
} from '../../src/agent/protocol.js';
import type { VsockDevice } from '../../src/virtio/vsock/device.js';
import type { VsockConnection } from '../../src/virtio/vsock/connection.js';

const { skip } = await e2ePrerequisites(t);
t.setTimeout(600_000);

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Rejects when `p` has not settled within `ms` (every wait in this file is bounded). */
function within<T>(ms: number, p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => { timer = setTimeout(() => { reject(new Error(`${what}: no result within ${ms} ms`)); }, ms); });
  return Promise.race([p, limit]).finally(() => { clearTimeout(timer); });
}

function collect(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  r.on('data', (d: Buffer) => chunks.push(d));
  return new Promise((res) => { r.once('end', () => { res(Buffer.concat(chunks)); }); });
}

interface Done { stdout: string; stderr: string; exitCode: number; signal?: string; raw: Buffer }

async function finish(h: ExecHandle, what: string, ms = 60_000): Promise<Done> {
  const [out, err, exit] = await within(ms, Promise.all([collect(h.stdout), collect(h.stderr), h.exited]), what);
  return { stdout: out.toString(), stderr: err.toString(), raw: out, ...exit };
}

/** The first line of the workload's stdout, then everything (a Writable that keeps it). */
function watchStdout(): { stream: PassThrough; ready: Promise<void>; text: () => string } {
  const stream = new PassThrough();
  let text = '';
  let resolve!: () => void;
  const ready = new Promise<void>((r) => { resolve = r; });
  stream.on('data', (d: Buffer) => { text += d.toString(); if (text.includes('\n')) resolve(); });
  return { stream, ready, text: () => text };
}

/** A raw connection to the agent's port: what the agent answers, and how it ended. */
function rawConnection(vsock: VsockDevice, send: (c: VsockConnection) => void): Promise<{ frames: Array<{ type: number; code?: number; text?: string }>; reason: string }> {
  return new Promise((resolve) => {
    const c = vsock.connect(AGENT_PORT);
    const dec = new FrameDecoder('guest');
    const frames: Array<{ type: number; code?: number; text?: string }> = [];
    c.on('data', (d) => {
      c.consumed(d.length);
      dec.push(d);
      for (let f = dec.next(); f !== null && !(f instanceof AgentPeerFault); f = dec.next()) {
        const m = decodeGuestMessage(f);
        if (!(m instanceof AgentPeerFault) && m.type === 'error') frames.push({ type: f.type, code: m.code, text: m.message });
        else frames.push({ type: f.type });
      }
    });
    c.once('connect', () => { send(c); });
    c.once('close', (reason) => { resolve({ frames, reason }); });
  });
}

t.test('exec through the guest agent', { skip }, async (t) => {
  let vsock: VsockDevice | undefined;
  const mainStdin = new PassThrough();
  const main = watchStdout();
  const lines: LogLine[] = [];
  const logger = memoryLogger(lines, (l) => typeof l['event'] === 'string' && String(l['event']).startsWith('agent.'));
  const started = performance.now();
  let result: SandboxResult | undefined;
  let runError: unknown;
  const run = Sandbox.run({
    engine: E2E_ENGINE,
    argv: ['sh', '-c', 'echo main-ready; read x; echo "main got $x"; exit 7'],
    stdin: mainStdin,
    stdout: main.stream,
    timeoutMs: 500_000,
    onDevices: (d) => { vsock = d.vsock; },
  }).then((r) => { result = r; }, (e: unknown) => { runError = e; });
  await within(240_000, Promise.race([main.ready, run]), 'the main workload starting');
  t.equal(runError, undefined, 'the sandbox is running');
  t.ok(vsock !== undefined, 'onDevices gave the vsock device');
  t.comment(`main workload up after ${(performance.now() - started).toFixed(0)} ms`);
  const client = new AgentClient(vsock!, { connectTimeoutMs: 60_000, logger });
  t.teardown(() => {
    client.close();
    if (result === undefined && runError === undefined) mainStdin.end('teardown\n');
  });

  let agentPid = '';
  await t.test('20 commands one after another, each with its own status and output', async (t) => {
    const stdin5000 = Buffer.alloc(5000, 0x61);
    const cases: Array<{ argv: string[]; opts?: Parameters<AgentClient['exec']>[1]; exitCode: number; signal?: string; stdout?: string | RegExp; stderr?: string | RegExp }> = [
      { argv: ['true'], exitCode: 0, stdout: '' },
      { argv: ['false'], exitCode: 1 },
      { argv: ['sh', '-c', 'exit 3'], exitCode: 3 },
      { argv: ['echo', 'hello', 'world'], exitCode: 0, stdout: 'hello world\n' },
      { argv: ['/no/such/program'], exitCode: 127, stdout: '', stderr: /^tsibox-agent: exec \/no\/such\/program: No such file or directory\n$/ },
      { argv: ['nosuchprogram'], exitCode: 127, stderr: /exec nosuchprogram: No such file or directory/ },
      { argv: ['/etc/passwd'], exitCode: 126, stderr: /exec \/etc\/passwd: Permission denied/ },
      { argv: ['sh', '-c', 'kill -9 $$'], exitCode: 137, signal: 'SIGKILL' },
      { argv: ['sh', '-c', 'kill -TERM $$'], exitCode: 143, signal: 'SIGTERM' },
      { argv: ['sh', '-c', 'echo "$FOO|$BAR|$HOME"'], opts: { env: { FOO: 'foo', BAR: 'a b,c' } }, exitCode: 0, stdout: 'foo|a b,c|/\n' },
      { argv: ['sh', '-c', 'echo "$PATH"'], exitCode: 0, stdout: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' },
      { argv: ['pwd'], opts: { workdir: '/tmp/exec/w d' }, exitCode: 0, stdout: '/tmp/exec/w d\n' },
      { argv: ['sh', '-c', 'echo out; echo err >&2; exit 5'], exitCode: 5, stdout: 'out\n', stderr: 'err\n' },
      { argv: ['cat'], opts: { stdin: 'abc' }, exitCode: 0, stdout: 'abc' },
      { argv: ['cat'], exitCode: 0, stdout: '' },
      { argv: ['sh', '-c', 'read a; echo "got $a"'], opts: { stdin: 'line\nrest\n' }, exitCode: 0, stdout: 'got line\n' },
      { argv: ['wc', '-c'], opts: { stdin: stdin5000 }, exitCode: 0, stdout: /^\s*5000\n$/ },
      { argv: ['id', '-u'], opts: { user: { uid: 1000, gid: 1000 } }, exitCode: 0, stdout: '1000\n' },
      { argv: ['hostname'], exitCode: 0, stdout: 'tsibox\n' },
      { argv: ['sh', '-c', 'exit 255'], exitCode: 255 },
    ];
    t.ok(cases.length >= 20);
    for (const c of cases) {
      const what = JSON.stringify(c.argv);
      const h = client.exec(c.argv, c.opts);
      const r = await finish(h, what);
      t.equal(r.exitCode, c.exitCode, `${what}: status ${c.exitCode}`, { stderr: r.stderr });
      t.equal(r.signal, c.signal, `${what}: signal ${c.signal ?? 'none'}`);
      if (c.stdout !== undefined) t.match(r.stdout, typeof c.stdout === 'string' ? new RegExp(`^${c.stdout.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) : c.stdout, `${what}: stdout`);
      if (c.stderr !== undefined) t.match(r.stderr, c.stderr, `${what}: stderr`);
      if (c.exitCode >= 126 && c.exitCode <= 127) await t.rejects(h.pid, { code: 'AGENT_EXEC_FAILED' }, `${what}: pid rejects`);
      else t.ok((await h.pid) > 1, `${what}: has a pid`);
    }
    // The shell's $$ is the pid STARTED reported; its parent is the agent.
    const h = client.exec(['sh', '-c', 'echo $$ $PPID; cat /proc/$PPID/comm']);
    const r = await finish(h, '$$');
    const [self, parent, comm] = r.stdout.trim().split(/\s+/);
    t.equal(Number(self), await h.pid, 'pid is the process\'s own');
    t.equal(comm, 'tsibox-agent', 'its parent is the agent');
    agentPid = parent!;
  });

  await t.test('1 MiB through cat, sha256 on both sides; stderr stays apart', async (t) => {
    const data = randomBytes(1 << 20);
    const viaCat = await finish(client.exec(['cat'], { stdin: data }), 'cat 1 MiB', 120_000);
    t.equal(viaCat.exitCode, 0);
    t.equal(viaCat.raw.length, data.length, 'all bytes back');
    t.equal(sha(viaCat.raw), sha(data), 'same sha256 back');
    const src = new PassThrough();
    const h = client.exec(['sh', '-c', 'sha256sum; echo done >&2'], { stdin: src });
    for (let i = 0; i < 16; i++) src.write(data.subarray(i << 16, (i + 1) << 16));
    src.end();
    const inGuest = await finish(h, 'sha256sum 1 MiB', 120_000);
    t.equal(inGuest.stdout.split(/\s/)[0], sha(data), 'the guest computed the same sha256 (a Readable source)');
    t.equal(inGuest.stderr, 'done\n');
    const big = await finish(client.exec(['sh', '-c', 'head -c 1048576 /dev/zero; echo e >&2']), 'guest → host 1 MiB', 120_000);
    t.equal(big.raw.length, 1 << 20, '1 MiB guest → host');
    t.equal(big.stderr, 'e\n');
  });

  await t.test('5 execs at once', async (t) => {
    const t0 = performance.now();
    const hs = [0, 1, 2, 3, 4].map((i) => client.exec(['sh', '-c', `sleep 1; echo "n=$N"; exit ${10 + i}`], { env: { N: String(i) } }));
    const rs = await Promise.all(hs.map((h, i) => finish(h, `concurrent ${i}`)));
    rs.forEach((r, i) => {
      t.equal(r.exitCode, 10 + i, `exec ${i}: its own status`);
      t.equal(r.stdout, `n=${i}\n`, `exec ${i}: its own output`);
    });
    const pids = await Promise.all(hs.map((h) => h.pid));
    t.equal(new Set(pids).size, 5, 'five processes');
    t.comment(`5 × sleep 1 took ${(performance.now() - t0).toFixed(0)} ms`);
  });

  await t.test('kill() of a running exec', async (t) => {
    const h = client.exec(['sleep', '60']);
    await within(30_000, h.pid, 'sleep pid');
    const t0 = performance.now();
    h.kill('SIGKILL');
    const r = await finish(h, 'killed sleep', 30_000);
    t.same([r.exitCode, r.signal], [137, 'SIGKILL']);
    t.ok(performance.now() - t0 < 20_000, 'ended at once, not after 60 s');
    // The signal goes to the process group: a shell waiting on a child dies with it.
    const tree = client.exec(['sh', '-c', 'sleep 60 & wait']);
    await within(30_000, tree.pid, 'tree pid');
    await new Promise((r) => setTimeout(r, 300));
    tree.kill('SIGTERM');
    const rt = await finish(tree, 'killed tree', 30_000);
    t.same([rt.exitCode, rt.signal], [143, 'SIGTERM']);
    const left = await finish(client.exec(['sh', '-c', 'ps -o comm | grep -c "^sleep$" || true']), 'ps');
    t.equal(left.stdout.trim(), '0', 'no sleep left behind');
  });

  await t.test('the 65th concurrent exec is refused with AGENT_BUSY', async (t) => {
    const hs: ExecHandle[] = [];
    for (let i = 0; i < 64; i++) hs.push(client.exec(['sleep', '120']));
    await within(120_000, Promise.all(hs.map((h) => h.pid)), '64 sleeps');
    const over = client.exec(['true']);
    await t.rejects(within(30_000, over.exited, '65th'), { code: 'AGENT_BUSY' });
    for (const h of hs) h.kill('SIGKILL');
    const rs = await within(60_000, Promise.all(hs.map((h) => h.exited)), '64 kills');
    t.ok(rs.every((r) => r.exitCode === 137), 'all 64 killed');
    t.equal((await finish(client.exec(['true']), 'after busy')).exitCode, 0, 'a slot is free again');
  });

  await t.test('hostile frames on the agent port; a normal exec still works, same agent', async (t) => {
    const v = vsock!;
    const idle = rawConnection(v, () => { /* sends nothing: the agent times it out */ });
    const noise = randomBytes(4096);
    const garbage: Array<[string, (c: VsockConnection) => void, number | null]> = [
      ['random bytes', (c) => { c.write(noise); }, AgentErrorCode.BAD_MESSAGE],
      ['an HTTP request', (c) => { c.write(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')); }, AgentErrorCode.BAD_MESSAGE],
      ['unknown type', (c) => { c.write(guestFrames.raw(99)); }, AgentErrorCode.BAD_MESSAGE],
      ['a guest type', (c) => { c.write(guestFrames.exit(0)); }, AgentErrorCode.BAD_MESSAGE],
      ['version 2', (c) => { const f = encodeExec({ argv: ['true'] }); f[2] = 2; c.write(f); }, AgentErrorCode.BAD_MESSAGE],
      ['4 GiB EXEC', (c) => { c.write(Buffer.from([0x45, 0x58, 1, MsgType.EXEC, 0xff, 0xff, 0xff, 0xff])); }, AgentErrorCode.BAD_MESSAGE],
      ['STDIN before EXEC', (c) => { c.write(encodeStdin(Buffer.from('x'))); }, AgentErrorCode.BAD_MESSAGE],
      ['WINSIZE for a workload without a terminal', (c) => { c.write(encodeWinsize(80, 24)); }, AgentErrorCode.BAD_MESSAGE],
      ['WINSIZE after EXEC', (c) => { c.write(Buffer.concat([encodeExec({ argv: ['sleep', '30'] }), encodeWinsize(80, 24)])); }, AgentErrorCode.BAD_MESSAGE],
      ['WINSIZE of 4 bytes', (c) => { c.write(Buffer.from([0x45, 0x58, 1, MsgType.WINSIZE, 4, 0, 0, 0, 80, 0, 0, 0])); }, AgentErrorCode.BAD_MESSAGE],
      ['WINSIZE 0x24', (c) => { const f = encodeWinsize(80, 24); f.writeUInt32LE(0, 8); c.write(f); }, AgentErrorCode.BAD_MESSAGE],
      ['EXEC with argc 0', (c) => { const f = encodeExec({ argv: ['true'] }); f.writeUInt32LE(0, 8 + 12); c.write(f); }, AgentErrorCode.BAD_MESSAGE],
      ['EXEC with trailing bytes', (c) => {
        const f = encodeExec({ argv: ['true'] });
        const g = Buffer.concat([f, Buffer.from('xx')]);
        g.writeUInt32LE(f.length - 8 + 2, 4);
        c.write(g);
      }, AgentErrorCode.BAD_MESSAGE],
      ['stdin past the window', (c) => {
        c.write(encodeExec({ argv: ['sleep', '30'] }));
        // sleep reads nothing: one pipe's worth (64 KiB) leaves the agent, a window
        // waits in it, and the frame after that is over the window.
        for (let i = 0; i < STDIN_WINDOW / 65536 + 3; i++) c.write(encodeStdin(Buffer.alloc(65536)));
      }, AgentErrorCode.BAD_MESSAGE],
      ['a reset mid-frame', (c) => { c.write(encodeExec({ argv: ['true'] }).subarray(0, 12)); setTimeout(() => { c.destroy(); }, 200); }, null],
      ['a reset while running', (c) => { c.write(encodeExec({ argv: ['sleep', '30'] })); setTimeout(() => { c.destroy(); }, 500); }, null],
    ];
    for (const [what, send, code] of garbage) {
      const r = await within(30_000, rawConnection(v, send), what);
      if (code === null) {
        t.equal(r.reason, 'reset-by-host', `${what}: we reset it`);
        continue;
      }
      const err = r.frames.find((f) => f.type === MsgType.ERROR);
      t.equal(err?.code, code, `${what}: ERROR ${code} (${err?.text ?? 'none'})`);
      t.equal(r.reason, 'closed', `${what}: then the agent closed the connection`);
    }
    // Then a seeded burst: 120 connections, 8 at a time, each carrying 1-4 valid host
    // frames with bytes flipped, lengths lied about, random bytes spliced in, written
    // in random pieces, and ended by us (reset or half-close) or by the agent.
    const seed = Number(process.env['TSIBOX_EXEC_FUZZ_SEED'] ?? 1);
    let s32 = seed >>> 0;
    const rnd = (n: number): number => { s32 = (Math.imul(s32, 1664525) + 1013904223) >>> 0; return s32 % n; };
    // A SIGNAL first on a connection is a valid request to signal the main workload
    // (which would end this sandbox), so it only comes later, and flips spare the
    // type byte (a STDIN of 4 bytes turned into a SIGNAL would be one too).
    const base = (first: boolean): Buffer => [
      () => encodeExec({ argv: ['true'] }),
      () => encodeExec({ argv: ['sh', '-c', 'exit 3'], env: { A: 'b' }, workdir: '/tmp/f' }),
      () => encodeExec({ argv: ['cat'] }),
      () => encodeStdin(randomBytes(rnd(3000))),
      () => encodeStdinEof(),
      () => encodeSignal(1 + rnd(64)),
    ][rnd(first ? 5 : 6)]!();
    const ends = { agent: 0, ours: 0 };
    const one = (): Promise<void> => within(30_000, rawConnection(v, (c) => {
      const frames: Buffer[] = [];
      for (let i = 1 + rnd(4); i > 0; i--) {
        let f = base(frames.length === 0);
        if (rnd(3) === 0) {
          for (let k = 1 + rnd(3); k > 0; k--) {
            const at = rnd(f.length);
            if (at !== 3) f[at] = rnd(256);
          }
        }
        if (rnd(10) === 0) f.writeUInt32LE(rnd(2) === 0 ? 0xffff_ffff : rnd(1 << 20), 4);
        if (rnd(10) === 0) f = Buffer.concat([f, randomBytes(1 + rnd(100))]);
        frames.push(f);
      }
      const all = Buffer.concat(frames);
      for (let at = 0; at < all.length;) {
        const n = 1 + rnd(all.length - at);
        c.write(all.subarray(at, at + n));
        at += n;
      }
      const how = rnd(3);
      setTimeout(() => { if (how === 0) c.destroy(); else if (how === 1) c.end(); }, rnd(300));
      setTimeout(() => { c.destroy(); }, 3000); // whatever it started, at most 3 s
    }), 'random frames').then((r) => { if (r.reason === 'reset-by-host') ends.ours++; else ends.agent++; });
    for (let batch = 0; batch < 15; batch++) await Promise.all(Array.from({ length: 8 }, one));
    t.comment(`120 random connections (seed ${seed}): ${ends.agent} ended by the agent, ${ends.ours} by us`);
    const idleEnd = await within(30_000, idle, 'the idle connection');
    t.same(idleEnd.frames.map((f) => f.code), [AgentErrorCode.TIMEOUT], 'a connection without EXEC is closed after 10 s');
    // Children of the agent now: this shell only (what dropped connections started was killed).
    const h = client.exec(['sh', '-c', 'echo $PPID; ps -o comm | grep -c "^sleep$"; grep -l "^PPid:[[:space:]]*$PPID\$" /proc/[0-9]*/status | wc -l']);
    const r = await finish(h, 'after garbage');
    t.equal(r.exitCode, 0, 'a normal exec still works');
    const [ppid, sleeps, children] = r.stdout.trim().split(/\s+/);
    t.equal(ppid, agentPid, 'served by the same agent (it did not die and restart)');
    t.equal(sleeps, '0', 'processes of dropped connections were killed');
    t.equal(children, '1', 'the agent has no other child left', { stdout: r.stdout });
    t.equal((await finish(client.exec(['sh', '-c', 'exit 9']), 'after garbage 2')).exitCode, 9);
  });

  await t.test('the agent logged one agent.exec line per exec', async (t) => {
    const ok = lines.filter((l) => l['event'] === 'agent.exec' && l['exitCode'] === 0);
    t.ok(ok.length >= 10, `${ok.length} successful execs logged`);
    t.match(ok[0], { argv0: String, pid: Number, ms: Number, stdoutBytes: Number });
  });

  await t.test('ending the main workload ends the sandbox; execs die with it', async (t) => {
    const lingering = client.exec(['sleep', '600']);
    await within(30_000, lingering.pid, 'lingering pid');
    const t0 = performance.now();
    mainStdin.end('go\n');
    await within(120_000, run, 'the sandbox ending');
    t.equal(runError, undefined, 'run() resolved');
    t.equal(result?.exitCode, 7, 'the workload\'s own status, unaffected by the execs');
    t.match(main.text(), /main got go/);
    t.ok(performance.now() - t0 < 60_000, 'without waiting for the exec\'d sleep');
    await t.rejects(within(30_000, lingering.exited, 'lingering exit'), { code: 'AGENT_UNAVAILABLE' }, 'the exec\'s connection ended with the VM');
    t.equal(client.running, 0);
    client.close();
  });
});

t.test('tsibox.agent=0: no agent, connecting fails with AGENT_UNAVAILABLE', { skip }, async (t) => {
  let vsock: VsockDevice | undefined;
  const mainStdin = new PassThrough();
  const main = watchStdout();
  let runError: unknown;
  let result: SandboxResult | undefined;
  const run = Sandbox.run({
    engine: E2E_ENGINE,
    argv: ['sh', '-c', 'echo main-ready; read x; exit 4'],
    // Until SandboxOptions has its own switch, the token travels in /.tsibox/cmdline.
    extraArchives: [cmdlineArchive(['tsibox.agent=0'])],
    stdin: mainStdin,
    stdout: main.stream,
    timeoutMs: 300_000,
    onDevices: (d) => { vsock = d.vsock; },
  }).then((r) => { result = r; }, (e: unknown) => { runError = e; });
  t.teardown(() => { mainStdin.end('x\n'); });
  await within(240_000, Promise.race([main.ready, run]), 'the main workload starting');
  t.equal(runError, undefined, 'the sandbox is running');
  const client = new AgentClient(vsock!, { connectTimeoutMs: 2000 });
  const h = client.exec(['true']);
  await t.rejects(within(30_000, h.exited, 'exec without an agent'),
    { code: 'AGENT_UNAVAILABLE', message: /did not accept a connection on vsock port 52 within 2000 ms .*tsibox\.agent=0/ });
  client.close();
  mainStdin.end('x\n');
  await within(120_000, run, 'the sandbox ending');
  t.equal(result?.exitCode, 4, 'the workload ran as usual');
});
