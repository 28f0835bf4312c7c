/**
 * End to end: `tsibox run` and Sandbox.run with a real guest under QEMU (TCG here),
 * our devices over vhost-user. Each boot is ~1 s of TCG.
 */
import t from 'tap';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { PassThrough } from 'node:stream';
import pino from 'pino';
import { Sandbox, ensureInitramfs, ensureKernel } from '../../src/index.js';
import { POWEROFF_GRACE_MS } from '../../src/engine/guest-boot.js';
import { runKvm } from '../../src/engine/kvm.js';
import { runQemu } from '../../src/engine/qemu.js';
import { qemuAccel } from '../../src/engine/select.js';

// The CLI of this build (dist/ or wherever the tests were compiled to; bin/tsibox.js
// runs dist/'s, and test/cli/usage.test.ts runs the bin itself).
const BIN = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

const { skip } = await e2ePrerequisites(t);

interface CliResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }

function cli(args: string[], input?: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => { resolve({ code, signal, stdout, stderr }); });
    child.stdin.end(input ?? '');
  });
}

/** Children of `pid` named `comm` (from /proc). */
function childrenNamed(pid: number, comm: string): number[] {
  const out: number[] = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid && name.startsWith(comm)) out.push(Number(e));
    } catch {
      // gone
    }
  }
  return out;
}

/** Alive and not a zombie. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

t.test('tsibox run under QEMU', { skip }, async (t) => {
  await t.test("sh -c 'echo hi; exit 3' prints hi and exits 3", async (t) => {
    const r = await cli(['run', '--engine', E2E_ENGINE, '--', 'sh', '-c', 'echo hi; exit 3']);
    t.equal(r.stdout, 'hi\n');
    t.equal(r.code, 3, 'exit status', { stderr: r.stderr });
  });

  await t.test('stdin is piped through', async (t) => {
    const input = 'line one\nline two\n' + 'x'.repeat(100_000) + '\n';
    const r = await cli(['run', '--engine', E2E_ENGINE, '--', 'cat'], input);
    t.equal(r.code, 0, 'exit status', { stderr: r.stderr });
    t.equal(r.stdout.length, input.length, 'same length');
    t.ok(r.stdout === input, 'same bytes');
  });

  await t.test('env and workdir apply, stderr is separate', async (t) => {
    const r = await cli(['run', '--engine', E2E_ENGINE, '--env', 'GREETING=hello world', '--env', 'N=2', '--workdir', '/tmp/w d', '--',
      'sh', '-c', 'echo "$GREETING/$N/$(pwd)"; echo oops >&2']);
    t.equal(r.code, 0, 'exit status', { stderr: r.stderr });
    t.equal(r.stdout, 'hello world/2//tmp/w d\n');
    t.equal(r.stderr, 'oops\n');
  });

  await t.test('a missing command exits 127', async (t) => {
    const r = await cli(['run', '--engine', E2E_ENGINE, '--', 'no-such-command']);
    t.equal(r.code, 127);
    t.match(r.stderr, /no-such-command: No such file or directory/);
  });

  await t.test('--verbose with auto says which engine it picked', async (t) => {
    const r = await cli(['run', '--verbose', '--', 'true']);
    t.equal(r.code, 0, 'exit status', { stderr: r.stderr });
    t.match(r.stderr, /^tsibox: engine (qemu|kvm): .+$/m);
  });

  await t.test('the guest reads random bytes from our vhost-user rng', async (t) => {
    const r = await Sandbox.run({
      engine: E2E_ENGINE,
      argv: ['sh', '-c', 'cat /sys/class/misc/hw_random/rng_current; head -c 4096 /dev/hwrng | wc -c; head -c 64 /dev/hwrng | od -An -tx1 | tr -d " \\n"; echo'],
    });
    t.equal(r.exitCode, 0, 'exit status', { stderr: r.stderr?.toString() });
    const [current, count, hex] = r.stdout!.toString().trim().split('\n');
    t.match(current, /^virtio_rng/, 'the hw_random device is virtio-rng');
    t.equal(count?.trim(), '4096', 'read 4096 bytes');
    t.match(hex, /^[0-9a-f]{128}$/, '64 bytes as hex');
    t.notMatch(hex, /^(00)+$/, 'not all zero');
    t.equal(r.engine, E2E_ENGINE);
  });

  await t.test('Sandbox.run streams stdio and reports signals', async (t) => {
    const out = new PassThrough();
    let seen = '';
    out.setEncoding('utf8').on('data', (d: string) => (seen += d));
    const r = await Sandbox.run({ engine: E2E_ENGINE, argv: ['sh', '-c', 'read x; echo "got $x"; kill -TERM $$'], stdin: 'abc\n', stdout: out });
    t.equal(seen, 'got abc\n');
    t.equal(r.exitCode, 143);
    t.equal(r.signal, 'SIGTERM');
    t.equal(r.stdout, undefined, 'streamed, not collected');
  });

  await t.test('init forwards a termination signal to the workload\'s whole process group', async (t) => {
    // The background job is forked before sh ignores TERM, so only a signal to the
    // group reaches it; sh itself survives to report.
    const script = '(sleep 3; echo child-alive) & trap "" TERM; kill -TERM 1; wait $!; echo done=$?';
    const r = await Sandbox.run({ engine: E2E_ENGINE, argv: ['sh', '-c', script], timeoutMs: 60_000 });
    const out = r.stdout!.toString();
    t.equal(r.exitCode, 0, 'sh ignored TERM and finished', { stdout: out, stderr: r.stderr?.toString() });
    t.match(out, /^done=143$/m, 'the background job died of SIGTERM');
    t.notMatch(out, /child-alive/, 'and never printed');
  });

  await t.test('a guest that reports its status and then never ends: the status comes back after the power-off grace', async (t) => {
    const kernel = (await ensureKernel()).bzImage;
    const initrd = await ensureInitramfs();
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (l: string) => { lines.push(l); } });
    // RB_HALT_SYSTEM stops the CPUs without ending the VM: a power-off that hangs.
    const init = { argv: ['sh', '-c', 'echo bye; exit 7'], poweroff: 'halt' as const };
    const stdout = new PassThrough();
    let seen = '';
    stdout.setEncoding('utf8').on('data', (d: string) => (seen += d));
    const t0 = performance.now();
    const r = E2E_ENGINE === 'kvm'
      ? await runKvm({ kernel, initrd, init, logger, stdout, timeoutMs: 120_000 })
      : await runQemu({ kernel, initrd, init, logger, stdout, timeoutMs: 120_000, accel: await qemuAccel() });
    const ms = performance.now() - t0;
    t.equal(r.exitCode, 7, 'the reported status, not VM_TIMEOUT');
    t.equal(seen, 'bye\n');
    t.ok(ms >= POWEROFF_GRACE_MS, `the engine waited the grace first (${Math.round(ms)} ms)`);
    t.ok(lines.some((l) => l.includes('"event":"vm.poweroff_forced"')), 'and said it ended the VM itself', { lines });
  });

  // The QEMU engine's own lifetime (the KVM engine's VM lives in the process itself).
  await t.test('killing the host process leaves no QEMU behind', { skip: E2E_ENGINE === 'kvm' ? 'QEMU engine only' : false }, async (t) => {
    const child = spawn(process.execPath, [BIN, 'run', '--engine', 'qemu', '--', 'sleep', '60'], { stdio: ['pipe', 'ignore', 'ignore'] });
    let qemu: number[] = [];
    // Bounded wait, not a timing claim: under the nested host's TCG (and a busy machine)
    // node alone takes seconds to load tsibox.
    const deadline = Date.now() + 90_000;
    while (qemu.length === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      qemu = childrenNamed(child.pid!, 'qemu-system');
    }
    t.equal(qemu.length, 1, 'QEMU started as a child of the host process');
    await new Promise((r) => setTimeout(r, 500)); // let the guest get going
    child.kill('SIGKILL');
    await new Promise((r) => child.once('close', r));
    const gone = Date.now() + 5000;
    while (qemu.some(running) && Date.now() < gone) await new Promise((r) => setTimeout(r, 50));
    t.notOk(qemu.some(running), 'QEMU is gone');
    for (const p of qemu) if (running(p)) process.kill(p, 'SIGKILL');
  });

  await t.test('Ctrl-C (SIGINT) to tsibox run stops the guest: exit status 130, nothing left running', async (t) => {
    const child = spawn(process.execPath, [BIN, 'run', '--engine', E2E_ENGINE, '--', 'sh', '-c', 'echo up; sleep 600'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const closed = new Promise<number | null>((r) => child.once('close', (code) => { r(code); }));
    const deadline = Date.now() + 60_000;
    while (!out.includes('up\n') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    t.match(out, /^up$/m, 'the guest runs');
    const qemu = childrenNamed(child.pid!, 'qemu-system');
    const t0 = Date.now();
    child.kill('SIGINT');
    const timer = setTimeout(() => { child.kill('SIGKILL'); }, 20_000);
    const code = await closed;
    clearTimeout(timer);
    t.equal(code, 130, 'exit status 130, as a shell reports a program ended by SIGINT', { stderr: err });
    t.ok(Date.now() - t0 < 10_000, `at once (${Date.now() - t0} ms)`);
    t.equal(err, '', 'no error printed');
    t.notOk(qemu.some(running), 'no QEMU left');
  });

  await t.test('a QEMU start-up failure reports QEMU\'s own message', async (t) => {
    await t.rejects(Sandbox.run({ engine: 'qemu', argv: ['true'], kernel: '/nonexistent/kernel' }), { code: 'VM_ERROR', message: /qemu-system-x86_64.*nonexistent/s });
  });

  await t.test('QEMU missing is a clear error naming the package', async (t) => {
    const saved = process.env['TSIBOX_QEMU'];
    process.env['TSIBOX_QEMU'] = '/nonexistent/qemu-system-x86_64';
    try {
      await t.rejects(Sandbox.run({ engine: 'qemu', argv: ['true'] }), { code: 'ENGINE_UNAVAILABLE', message: /qemu-system-x86/ });
    } finally {
      if (saved === undefined) delete process.env['TSIBOX_QEMU'];
      else process.env['TSIBOX_QEMU'] = saved;
    }
  });
});

t.test('no qemu-system process is left over by this file', { skip }, async (t) => {
  const r = spawnSync('pgrep', ['-P', String(process.pid), 'qemu'], { encoding: 'utf8' });
  t.equal(r.stdout.trim(), '', 'no QEMU children');
});
