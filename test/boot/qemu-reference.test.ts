/**
 * Reference boot (issue 4, test 5b): our kernel + our initramfs under plain QEMU TCG
 * (`-M microvm`, QEMU's own 8250 serial, QEMU's virtio-serial for the port cases).
 * Proves the kernel config and init independently of tsibox's own devices.
 *
 * The kernel is built here when missing (scripts/build-kernel.sh, ~4 min on 2 cores);
 * the tests skip only when that build is impossible.
 */
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cmdlineArchive,
  buildCmdline,
  ensureInitramfs,
  ensureKernel,
  initTokens,
  kernelPaths,
  padTo4,
  parseStatusMarker,
  parseStatusPort,
  type InitConfig,
  type KernelPaths,
} from '../../src/guest/index.js';

const QEMU = 'qemu-system-x86_64';
const BASE_CMDLINE = 'console=ttyS0 reboot=t panic=-1 quiet';
const BOOT_TIMEOUT_MS = 60_000;

const live = new Set<ChildProcess>();
const tmp = mkdtempSync(join(tmpdir(), 'tsibox-boot-'));
t.teardown(() => {
  for (const c of live) if (c.pid !== undefined && c.exitCode === null) process.kill(c.pid, 'SIGKILL');
  rmSync(tmp, { recursive: true, force: true });
});

let kernel: KernelPaths | undefined;
let initrd: string | undefined;
let skipReason: string | undefined;

// A kernel build in this setup takes minutes: lift tap's per-file timeout for it.
if (kernelPaths() === undefined) t.setTimeout(20 * 60_000);
try {
  kernel = await ensureKernel({ onProgress: (l) => t.comment(l) });
  initrd = await ensureInitramfs({ onProgress: (l) => t.comment(l) });
} catch (e) {
  skipReason = `the guest kernel/initramfs cannot be built here: ${(e as Error).message}`;
}

interface BootResult {
  status: number | undefined;
  output: string;
  ms: number;
  ports: Record<string, string>;
}

interface BootOptions {
  /** virtio-serial ports to attach (name -> captured to a file). */
  ports?: string[];
  /** Extra archive appended to the initramfs. */
  extraArchive?: Buffer;
  /** Raw extra command-line text (after the init tokens). */
  rawAppend?: string;
}

let bootNo = 0;

function boot(cfg: InitConfig, opts: BootOptions = {}): Promise<BootResult> {
  if (!kernel || !initrd) throw new Error('no kernel');
  const n = ++bootNo;
  let initrdPath = initrd;
  if (opts.extraArchive) {
    initrdPath = join(tmp, `initrd-${n}.img`);
    writeFileSync(initrdPath, Buffer.concat([padTo4(readFileSync(initrd)), opts.extraArchive]));
  }
  const args = [
    '-M', `microvm,x-option-roms=off,isa-serial=on,acpi=off`,
    '-accel', 'tcg', '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-m', '256', '-smp', '1', '-serial', 'stdio',
    '-kernel', kernel.bzImage, '-initrd', initrdPath,
  ];
  const portFiles: Record<string, string> = {};
  if (opts.ports && opts.ports.length > 0) {
    args.push('-device', 'virtio-serial-device');
    opts.ports.forEach((name, i) => {
      const f = join(tmp, `port-${n}-${i}.out`);
      portFiles[name] = f;
      args.push('-chardev', `file,id=p${i},path=${f}`, '-device', `virtserialport,chardev=p${i},name=${name}`);
    });
  }
  let cmdline = buildCmdline(BASE_CMDLINE, cfg);
  if (opts.rawAppend) cmdline += ' ' + opts.rawAppend;
  args.push('-append', cmdline);

  return new Promise((resolve, reject) => {
    const start = performance.now();
    const child = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (output += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (output += d));
    const timer = setTimeout(() => {
      if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
    }, BOOT_TIMEOUT_MS);
    child.on('error', (e) => {
      clearTimeout(timer);
      live.delete(child);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      const ms = performance.now() - start;
      const ports: Record<string, string> = {};
      for (const [name, f] of Object.entries(portFiles)) {
        try {
          ports[name] = readFileSync(f, 'utf8');
        } catch {
          ports[name] = '';
        }
      }
      if (signal !== null || code !== 0) {
        reject(new Error(`qemu ended with ${signal ?? 'status ' + code} after ${Math.round(ms)} ms:\n${output.slice(-3000)}`));
        return;
      }
      resolve({ status: parseStatusMarker(output), output, ms, ports });
    });
  });
}

/** Output lines the workload printed (the console minus kernel and init lines). */
function workloadLines(output: string): string[] {
  return output
    .split(/\r?\n/)
    .filter((l) => l !== '' && !l.startsWith('tsibox') && !l.startsWith('reboot:') && !/^\[?\s*\d+\.\d+\]/.test(l));
}

t.test('qemu reference boot', { skip: skipReason ?? false }, async (t) => {
  const q = spawnSync(QEMU, ['--version'], { encoding: 'utf8' });
  if (q.status !== 0) {
    t.fail(`${QEMU} is not installed; run scripts/install-guest-deps.sh (Debian: apt-get install qemu-system-x86)`);
    return;
  }
  t.comment(`kernel ${kernel!.bzImage}`);
  t.comment(`initrd ${initrd}`);

  await t.test('/bin/true exits 0', async (t) => {
    const r = await boot({ argv: ['/bin/true'] });
    t.equal(r.status, 0, 'exit status', { console: r.output.slice(-2000) });
    t.comment(`boot-to-exit under TCG: ${Math.round(r.ms)} ms`);
  });

  await t.test("sh -c 'exit 7' exits 7", async (t) => {
    const r = await boot({ argv: ['sh', '-c', 'exit 7'] });
    t.equal(r.status, 7, 'exit status', { console: r.output.slice(-2000) });
  });

  await t.test('a missing binary is 127', async (t) => {
    const abs = await boot({ argv: ['/no/such/program'] });
    t.equal(abs.status, 127, 'exit status', { console: abs.output.slice(-2000) });
    t.match(abs.output, /tsibox-init: exec \/no\/such\/program: No such file or directory/);
    const viaPath = await boot({ argv: ['no-such-program', 'x'] });
    t.equal(viaPath.status, 127, 'exit status', { console: viaPath.output.slice(-2000) });
  });

  await t.test('a file that cannot be executed is 126', async (t) => {
    const r = await boot({ argv: ['/etc/passwd'] });
    t.equal(r.status, 126, 'exit status', { console: r.output.slice(-2000) });
  });

  await t.test('killed by a signal is 128+n', async (t) => {
    const kill = await boot({ argv: ['sh', '-c', 'kill -KILL $$'] });
    t.equal(kill.status, 128 + 9, 'exit status', { console: kill.output.slice(-2000) });
    const term = await boot({ argv: ['sh', '-c', 'kill -TERM $$'] });
    t.equal(term.status, 128 + 15, 'exit status', { console: term.output.slice(-2000) });
  });

  await t.test('argv, env, workdir, hostname, rlimits and loopback', async (t) => {
    const weird = 'a b,c=d%e"f\'g\\h\ttab ünï';
    const script = [
      'test "$1" = "$WEIRD" || { echo "bad arg: [$1]"; exit 10; }',
      'test "$(pwd)" = "/tmp/work dir" || { echo "bad pwd: $(pwd)"; exit 11; }',
      'test "$(hostname)" = guest-1 || { echo "bad hostname"; exit 12; }',
      'test "$(ulimit -n)" = 77 || { echo "bad nofile: $(ulimit -n)"; exit 13; }',
      'ip link show lo | grep -q "UP" || { echo "lo down"; exit 14; }',
      'test "$EMPTY" = "" && test "${EMPTY+set}" = set || { echo "bad EMPTY"; exit 15; }',
      'test "$HOME" = / && test -n "$PATH" || exit 16',
      'echo "workload-ok $#"',
    ].join('\n');
    const r = await boot({
      argv: ['sh', '-c', script, 'argv0', weird, ''],
      env: { WEIRD: weird, EMPTY: '' },
      workdir: '/tmp/work dir',
      hostname: 'guest-1',
      rlimits: [{ resource: 'NOFILE', cur: 77, max: 77 }],
    });
    t.equal(r.status, 0, 'exit status', { console: r.output.slice(-2000) });
    t.ok(workloadLines(r.output).includes('workload-ok 2'), 'script ran with both arguments (one empty)');
  });

  await t.test('a workload description too long for the command line goes in an extra archive', async (t) => {
    const big = 'x'.repeat(5000);
    const cfg: InitConfig = { argv: ['sh', '-c', 'test ${#BIG} -eq 5000 && test "$SMALL" = s'], env: { BIG: big, SMALL: 's' } };
    t.throws(() => buildCmdline(BASE_CMDLINE, cfg), { code: 'INVALID_ARGUMENT' });
    const r = await boot({}, { extraArchive: cmdlineArchive(initTokens(cfg)) });
    t.equal(r.status, 0, 'exit status', { console: r.output.slice(-2000) });
  });

  await t.test('leftover processes are killed and reaped', async (t) => {
    const r = await boot({ argv: ['sh', '-c', 'sleep 1000 & sleep 1000 & exit 3'] });
    t.equal(r.status, 3, 'exit status', { console: r.output.slice(-2000) });
  });

  await t.test('bad init parameters are 125', async (t) => {
    const r = await boot({}, { rawAppend: 'tsibox.argv=a%00b' });
    t.equal(r.status, 125, 'exit status', { console: r.output.slice(-2000) });
  });

  await t.test('stdio and status on virtio-console ports', async (t) => {
    const r = await boot(
      { argv: ['sh', '-c', 'echo to-stdout; echo to-stderr >&2; exit 42'], ports: ['tsibox.stdout', 'tsibox.stderr', 'tsibox.status'] },
      { ports: ['tsibox.stdout', 'tsibox.stderr', 'tsibox.status'] },
    );
    t.equal(parseStatusPort(r.ports['tsibox.status'] ?? ''), 42, 'status port');
    t.equal(r.status, 42, 'console marker');
    t.equal(r.ports['tsibox.stdout'], 'to-stdout\n');
    t.equal(r.ports['tsibox.stderr'], 'to-stderr\n');
    t.notMatch(r.output, /to-stdout/, 'stdout did not go to the console');
  });

  await t.test('a port that never appears is 125', async (t) => {
    const r = await boot({ argv: ['true'], ports: ['tsibox.status'], portTimeoutMs: 200 });
    t.equal(r.status, 125, 'exit status', { console: r.output.slice(-2000) });
  });
});
