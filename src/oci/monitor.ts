// The container monitor: the long-lived process of one container, the one the pid file
// names (docs/oci.md "Lifecycle"). `create` starts it (detached, inside the container's
// network namespace, with create's stdio, which the engine meant for the workload); it
// prepares everything that can fail (bundle, policy, kernel, initramfs, control socket),
// reports readiness, and waits. `start` makes it boot the VM and run the workload;
// `kill` signals the workload through it; it exits with the workload's status, which is
// what conmon and containerd's shim (subreapers that wait for this pid) report as the
// container's exit code.
import { pino, type Logger } from 'pino';
import type { Server } from 'node:net';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { Sandbox } from '../sandbox.js';
import { TsiboxError } from '../errors.js';
import { ensureInitramfs, ensureKernel } from '../guest/index.js';
import { loadBundle, type OciPlan } from './config.js';
import { containerNetwork } from './container-network.js';
import { controlSocketPath, serveControl, type ControlRequest } from './control.js';
import { StateStore } from './state-store.js';
import { stageFileBinds } from './file-binds.js';

export interface MonitorArgs {
  /** The runtime's state root (--root). */
  root: string;
  id: string;
  /** Absolute bundle directory. */
  bundle: string;
  /** With process.terminal: where the terminal's controlling side is handed (SCM_RIGHTS). */
  consoleSocket?: string;
}

/** Exit status when the VM could not be started (as `tsibox run`: guest setup failed). */
const EXIT_START_FAILED = 125;

/**
 * Runs the monitor. `ready` is called once everything that can fail before `start` has
 * been done (the error, if any, is thrown before it). Resolves with the exit status.
 */
export async function runMonitor(args: MonitorArgs, ready: () => void): Promise<number> {
  const log: Logger = pino({ name: 'tsibox-oci', level: process.env['TSIBOX_LOG'] ?? 'silent' }, pino.destination(2));
  // One listener per signal for the whole life, installed before the terminal is taken:
  // an engine closing the console master sends SIGHUP, whose default action would end
  // us before we report anything. What a signal does depends on the phase.
  let onSignal: (signal: number) => void = () => {};
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => { onSignal(sigNumber(sig)); });
  const store = new StateStore(args.root);
  const plan: OciPlan = loadBundle(args.bundle);
  const network = containerNetwork(plan);
  const kernel = plan.sandbox.kernel ?? (await ensureKernel()).bzImage;
  const initrd = plan.sandbox.initrd ?? await ensureInitramfs();
  const files = stageFileBinds(plan.fileBinds, join(store.dir(args.id), 'files'), (line) => { process.stderr.write(line); });
  const consoleRelay = plan.sandbox.tty !== undefined && args.consoleSocket !== undefined
    ? await (await import('./console.js')).openConsole(args.consoleSocket, plan.sandbox.tty)
    : null;

  let onRequest: (req: ControlRequest) => Promise<void> = async () => {};
  const socketPath = controlSocketPath(store.dir(args.id));
  rmSync(socketPath, { force: true });
  const server: Server = await serveControl(socketPath, (req) => onRequest(req));

  // Before start: `start` lets the VM boot; a signal ends the container unstarted (128+N).
  const go = await new Promise<{ start: true } | { signal: number }>((resolve) => {
    onRequest = async (req) => {
      if (req.op === 'start') resolve({ start: true });
      else resolve({ signal: req.signal });
    };
    onSignal = (signal) => { resolve({ signal }); };
    ready();
  });
  if ('signal' in go) {
    consoleRelay?.close();
    await finish(store, args.id, server);
    return 128 + go.signal;
  }

  let sandbox: Sandbox | null = null;
  const pending: number[] = [];
  const deliver = async (signal: number): Promise<void> => {
    if (sandbox === null) {
      pending.push(signal);
      return;
    }
    // SIGKILL cannot be asked of the workload: the VM ends at once.
    if (signal === 9) await sandbox.stop({ timeoutMs: 0 });
    else await sandbox.kill(signal);
  };
  onRequest = async (req) => {
    if (req.op === 'start') throw new TsiboxError('INVALID_STATE', `container ${args.id} is already started`);
    await deliver(req.signal);
  };
  onSignal = (signal) => { void deliver(signal).catch(() => {}); };

  let code: number;
  try {
    sandbox = await Sandbox.start({
      ...plan.sandbox,
      ...(files !== null ? { mounts: [...plan.sandbox.mounts ?? [], files.mount], binds: files.binds } : {}),
      kernel,
      initrd,
      ...(network !== undefined ? { network } : {}),
      stdin: consoleRelay?.input ?? process.stdin,
      stdout: consoleRelay?.output ?? process.stdout,
      stderr: consoleRelay?.output ?? process.stderr,
      logger: log,
    });
    consoleRelay?.onResize((cols: number, rows: number) => { void sandbox?.resize(cols, rows).catch(() => {}); });
    for (const s of pending.splice(0)) await deliver(s).catch(() => {});
    code = (await sandbox.exited).exitCode;
  } catch (err) {
    process.stderr.write(`tsibox-oci: container ${args.id}: ${err instanceof TsiboxError ? `${err.message} [${err.code}]` : String(err)}\n`);
    code = EXIT_START_FAILED;
  }
  consoleRelay?.close();
  process.stdin.destroy();
  await finish(store, args.id, server);
  return code;
}

/** Records `stopped` (unless the container was deleted meanwhile) and closes the control socket. */
async function finish(store: StateStore, id: string, server: Server): Promise<void> {
  server.close();
  // After `delete` there is nothing to record (and locking would leave a lock file behind).
  if (store.read(id) === null) return;
  await store.withLock(id, () => {
    const s = store.read(id);
    if (s !== null && s.status !== 'stopped') store.update(id, 'stopped');
  }).catch(() => { /* the state is gone or corrupt: `state` reads a dead pid as stopped anyway */ });
}

function sigNumber(sig: 'SIGTERM' | 'SIGINT' | 'SIGHUP'): number {
  return sig === 'SIGTERM' ? 15 : sig === 'SIGINT' ? 2 : 1;
}
