// The KVM engine as a whole sandbox (issue 9): SMP through the MP table, stop on
// timeout with running vCPUs (no thread or fd left), 1 MiB of stdin through the console,
// and a guest kernel panic as a clear VM_ERROR. Runs only under TSIBOX_E2E_ENGINE=kvm
// (`npm run test:kvm`, inside the nested SVM test host); elsewhere it says why it skips.
import t from 'tap';
import { createHash } from 'node:crypto';
import { readdirSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox } from '../../src/index.js';
import { E2E_ENGINE, e2ePrerequisites } from './prerequisites.js';

const skip = E2E_ENGINE !== 'kvm' ? 'KVM-engine tests run under TSIBOX_E2E_ENGINE=kvm (npm run test:kvm, in the nested SVM test host)' : false;
const fds = (): number => readdirSync('/proc/self/fd').length;
const threads = (): number => readdirSync('/proc/self/task').length;

t.test('the KVM engine', { skip }, async (t) => {
  const pre = await e2ePrerequisites(t);
  if (pre.skip) {
    t.comment(`skipped: ${pre.skip}`);
    return;
  }

  for (const cpus of [1, 2, 4]) {
    await t.test(`--cpus ${cpus}: the guest sees ${cpus} processors`, async (t) => {
      const r = await Sandbox.run({ engine: 'kvm', cpus, argv: ['sh', '-c', 'grep -c ^processor /proc/cpuinfo; cat /sys/devices/system/cpu/online'] });
      t.equal(r.exitCode, 0, r.stderr?.toString() ?? '');
      const [count, online] = r.stdout!.toString().trim().split('\n');
      t.equal(Number(count), cpus);
      t.equal(online, cpus === 1 ? '0' : `0-${cpus - 1}`);
    });
  }

  await t.test('a timeout stops running vCPUs and leaves no thread or fd behind', async (t) => {
    await Sandbox.run({ engine: 'kvm', argv: ['true'] }); // warm: lazily opened things stay open
    const before = { fds: fds(), threads: threads() };
    const started = Date.now();
    await t.rejects(Sandbox.run({ engine: 'kvm', cpus: 2, timeoutMs: 4000, argv: ['sh', '-c', 'while :; do :; done & while :; do :; done'] }), { code: 'VM_TIMEOUT' });
    t.ok(Date.now() - started < 60_000, 'returned');
    await new Promise((r) => setTimeout(r, 500));
    t.equal(fds(), before.fds, 'file descriptors back to where they were');
    t.equal(threads(), before.threads, 'threads back to where they were');
  });

  await t.test('1 MiB of stdin arrives intact', async (t) => {
    const data = Buffer.alloc(1 << 20);
    for (let i = 0; i < data.length; i++) data[i] = (i * 31 + (i >> 9)) & 0xff;
    const r = await Sandbox.run({ engine: 'kvm', argv: ['sh', '-c', 'sha256sum | cut -d" " -f1'], stdin: data, timeoutMs: 120_000 });
    t.equal(r.exitCode, 0, r.stderr?.toString() ?? '');
    t.equal(r.stdout!.toString().trim(), createHash('sha256').update(data).digest('hex'));
  });

  await t.test('a guest kernel panic is a clear VM_ERROR, not a hang', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'tsibox-panic-'));
    t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });
    const initrd = join(dir, 'garbage.cpio');
    writeFileSync(initrd, Buffer.alloc(4096, 0x5a)); // no init: the kernel panics, then resets
    await t.rejects(Sandbox.run({ engine: 'kvm', argv: ['true'], initrd, timeoutMs: 120_000 }), { code: 'VM_ERROR', message: /without reporting an exit status/ });
  });
});
