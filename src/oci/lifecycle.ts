// The runtime commands that move a container through its life (runtime-spec runtime.md
// "Lifecycle", "Operations"): create starts the container monitor and records `created`,
// start and kill talk to the monitor over its control socket, delete removes what is
// left. Every command holds the container's lock while it reads and changes the state;
// none holds it while it waits for the monitor to exit (the monitor records `stopped`
// under the same lock).
import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import { existsSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TsiboxError } from '../errors.js';
import type { OciPlan } from './config.js';
import { controlSocketPath, sendControl } from './control.js';
import type { MonitorArgs } from './monitor.js';
import { StateStore, notFound, ociState, processAlive } from './state-store.js';
import { requireStatusFor } from './status.js';

const MONITOR_MAIN = fileURLToPath(new URL('./monitor-main.js', import.meta.url));
/** nsenter(1) from util-linux: enters the container's network namespace, then execs (same pid). */
const NSENTER = '/usr/bin/nsenter';
/** unshare(1) from util-linux: a new network namespace, then execs (same pid; no --fork). */
const UNSHARE = '/usr/bin/unshare';
/** ip(8) from iproute2: brings the new namespace's loopback up, as runc does. */
const IP = '/usr/sbin/ip';
/** How long create waits for the monitor (a first run may build the guest kernel: minutes). */
const READY_TIMEOUT_MS = 30 * 60_000;
/** How long delete --force waits for a killed monitor to exit before SIGKILLing it. */
const EXIT_WAIT_MS = 15_000;

export interface CreateOptions {
  id: string;
  plan: OciPlan;
  pidFile?: string;
  consoleSocket?: string;
}

/**
 * `create`: records the container, starts its monitor (detached, in the config's network
 * namespace, with our stdio), waits until it is ready, records `created` with its pid
 * and writes the pid file. On any failure nothing is left: no monitor, no state.
 */
export async function createContainer(store: StateStore, o: CreateOptions): Promise<number> {
  controlSocketPath(store.dir(o.id)); // a path too long for a socket fails here, not in the monitor
  const netns = o.plan.network.netnsPath;
  if (netns !== undefined && !existsSync(NSENTER)) {
    throw new TsiboxError('NOT_SUPPORTED', `config.json names network namespace ${netns}, and entering it needs ${NSENTER} (Debian: util-linux)`);
  }
  if (o.plan.network.newNetns === true && !(existsSync(UNSHARE) && existsSync(IP))) {
    throw new TsiboxError('NOT_SUPPORTED', `config.json asks for a new network namespace, which needs ${UNSHARE} (Debian: util-linux) and ${IP} (Debian: iproute2)`);
  }
  return store.withLock(o.id, async () => {
    if (store.read(o.id) !== null) throw new TsiboxError('INVALID_STATE', `container ${o.id} already exists`);
    store.create({ id: o.id, bundle: o.plan.bundle, configOciVersion: o.plan.ociVersion, annotations: o.plan.annotations });
    let pid: number | undefined;
    try {
      pid = await startMonitor(store.root, o, netns);
      store.update(o.id, 'created', { pid });
      if (o.pidFile !== undefined) writePidFile(o.pidFile, pid);
      return pid;
    } catch (err) {
      if (pid !== undefined && processAlive(pid)) process.kill(pid, 'SIGKILL');
      store.remove(o.id);
      throw err;
    }
  });
}

/**
 * Spawns the monitor (in the config's network namespace, a new one, or ours) and waits
 * for its readiness line; resolves with its pid (nsenter, unshare and sh exec: one pid).
 */
async function startMonitor(root: string, o: CreateOptions, netns: string | undefined): Promise<number> {
  const args: MonitorArgs = { root, id: o.id, bundle: o.plan.bundle, ...(o.consoleSocket !== undefined ? { consoleSocket: o.consoleSocket } : {}) };
  const node = [process.execPath, MONITOR_MAIN, JSON.stringify(args)];
  const argv = netns !== undefined ? [NSENTER, `--net=${netns}`, '--', ...node]
    : o.plan.network.newNetns === true ? [UNSHARE, '--net', '--', '/bin/sh', '-c', `${IP} link set lo up && exec "$@"`, 'tsibox-oci-netns', ...node]
      : node;
  // Our stdin/stdout/stderr are what the engine meant for the container (conmon's pipes,
  // the shim's fifos): the monitor keeps them. fd 3 is the readiness pipe.
  const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: ['inherit', 'inherit', 'inherit', 'pipe'] });
  const pipe = child.stdio[3] as Readable;
  const line = await new Promise<string>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => { reject(new TsiboxError('OCI_MONITOR', `the container monitor was not ready within ${READY_TIMEOUT_MS / 60_000} min`)); }, READY_TIMEOUT_MS);
    pipe.setEncoding('utf8');
    pipe.on('data', (d: string) => { if (buf.length < 8192) buf += d; });
    pipe.on('close', () => { clearTimeout(timer); resolve(buf); });
    child.on('error', (err) => { clearTimeout(timer); reject(new TsiboxError('OCI_MONITOR', `cannot start the container monitor (${argv[0]}): ${err.message}`, { cause: err })); });
  }).catch((err: unknown) => {
    if (child.pid !== undefined && child.exitCode === null) child.kill('SIGKILL');
    throw err;
  });
  if (line === 'ok\n' && child.pid !== undefined) {
    child.unref();
    pipe.destroy();
    return child.pid;
  }
  // "error CODE MESSAGE" from the monitor, or nothing when it died (nsenter's own error went to stderr).
  const m = /^error ([A-Z_]+) (.*)\n?$/s.exec(line);
  const exited = await new Promise<number | null>((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once('exit', (c) => { resolve(c); });
  });
  if (m !== null) throw new TsiboxError(m[1] as TsiboxError['code'], m[2]!.trim());
  throw new TsiboxError('OCI_MONITOR', `the container monitor exited (status ${exited}) before it was ready${netns !== undefined ? ` (entering network namespace ${netns})` : o.plan.network.newNetns === true ? ' (making its network namespace)' : ''}`);
}

/** The pid file, written whole (temporary file + rename): conmon and the shim read it once create returns. */
function writePidFile(path: string, pid: number): void {
  const tmp = join(dirname(path), `.${process.pid}.tsibox-oci-pid`);
  try {
    writeFileSync(tmp, String(pid), { mode: 0o644 });
    renameSync(tmp, path);
  } catch (err) {
    throw new TsiboxError('INVALID_ARGUMENT', `cannot write the pid file ${path}: ${(err as Error).message}`, { cause: err });
  }
}

/** `start`: the container must be `created`; its monitor boots the VM and runs the workload. */
export async function startContainer(store: StateStore, id: string): Promise<void> {
  await store.withLock(id, async () => {
    const s = store.read(id);
    if (s === null) throw notFound(id);
    requireStatusFor('start', id, ociState(s).status);
    await sendControl(controlSocketPath(store.dir(id)), { op: 'start' });
    store.update(id, 'running');
  });
}

/** `kill`: the container must be `created` or `running`; the monitor delivers the signal (docs/oci.md). */
export async function killContainer(store: StateStore, id: string, signal: number): Promise<void> {
  await store.withLock(id, async () => {
    const s = store.read(id);
    if (s === null) throw notFound(id);
    requireStatusFor('kill', id, ociState(s).status);
    await sendControl(controlSocketPath(store.dir(id)), { op: 'kill', signal });
  });
}

/**
 * `delete`: a stopped container's state goes; with `force` a live one is killed first
 * (SIGKILL through its monitor; the monitor itself after 15 s) and waited for. Missing:
 * an error, or nothing to do with `force` (runc's rule).
 */
export async function deleteContainer(store: StateStore, id: string, force: boolean): Promise<void> {
  const live = await store.withLock(id, () => {
    const s = store.read(id);
    if (s === null) {
      if (!force) throw notFound(id);
      store.remove(id); // leftovers of a half-made container
      return null;
    }
    const status = ociState(s).status;
    requireStatusFor('delete', id, status, force);
    return status === 'stopped' ? (s.pid !== undefined && processAlive(s.pid) ? s.pid : null) : s.pid ?? null;
  });
  if (live !== null) {
    await sendControl(controlSocketPath(store.dir(id)), { op: 'kill', signal: 9 }).catch(() => { /* gone already, or wedged: see below */ });
    if (!(await exitedWithin(live, EXIT_WAIT_MS))) {
      process.kill(live, 'SIGKILL');
      await exitedWithin(live, 5_000);
    }
  }
  await store.withLock(id, () => { store.remove(id); });
}

/** Polls (every 50 ms, bounded) until `pid` is gone. */
async function exitedWithin(pid: number, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (processAlive(pid)) {
    if (Date.now() > until) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}
