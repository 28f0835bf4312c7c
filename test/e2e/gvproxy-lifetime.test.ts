/**
 * gvproxy does not outlive a SIGKILLed host process: a child Node process runs a
 * gvproxy sandbox; once the guest runs, the test SIGKILLs that child (a process it
 * started, by PID) and checks that gvproxy, its keeper, QEMU, the sockets and the
 * private directory are all gone within a few seconds.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { alive, descendants, processesMentioning, waitFor } from '../helpers/processes.js';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';

const { skip } = await e2ePrerequisites(t, { gvproxy: true });

t.test('SIGKILL of the host process leaves no gvproxy, socket or directory', { skip }, async (t) => {
  const runtimeDir = mkdtempSync(join(tmpdir(), 'tsibox-gvkill-'));
  const child = spawn(process.execPath, [join(dirname(fileURLToPath(import.meta.url)), 'gvproxy-child.js'), runtimeDir, E2E_ENGINE], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => { out += d; });
  child.stderr.setEncoding('utf8').on('data', (d: string) => { err += d; });
  const exited = new Promise<void>((r) => { child.once('close', () => { r(); }); });
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
    rmSync(runtimeDir, { recursive: true, force: true });
  });
  t.ok(await waitFor(() => out.includes('ready') || child.exitCode !== null, 90_000), `the guest runs (stderr: ${err})`);
  const family = descendants(child.pid!);
  t.ok(family.length >= 3, `gvproxy, its keeper and QEMU run under the child (${family.length} processes)`);
  t.not(readdirSync(runtimeDir).length, 0, 'the private directory exists while it runs');
  child.kill('SIGKILL');
  await exited;
  const gone = await waitFor(() => family.every((p) => !alive(p)) && processesMentioning(runtimeDir).length === 0 && readdirSync(runtimeDir).length === 0, 10_000);
  t.ok(gone, 'everything is gone');
  t.same(family.filter(alive), [], 'no process of the sandbox is left');
  t.same(readdirSync(runtimeDir), [], 'no private directory or socket is left');
});
