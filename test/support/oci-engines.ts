/**
 * Real container engines (podman, containerd) driving an OCI runtime, for
 * test/e2e/oci-podman.test.ts and test/e2e/oci-containerd.test.ts.
 *
 * The runtime under test comes from one place, ociRuntime(): the repo's bin/tsibox-oci.js,
 * or TSIBOX_OCI_TEST_RUNTIME (e.g. /usr/sbin/runc, to check the tests themselves).
 *
 * HOST SAFETY: each engine lives in its own temporary directory and never sees the
 * host's engine state. Podman gets its own containers.conf (CONTAINERS_CONF replaces
 * every system file, so /etc/containers/containers.conf is not read), storage.conf,
 * storage, tmp dir, file locks (not the host's /dev/shm/libpod_lock) and network config
 * dir; containerd is our own daemon with its own config, root, state, socket and
 * runtime --root. What stays shared is what CNI shares by design (podman only): the
 * cni-podman0 bridge, its IPAM directory and the CNI iptables chains, all released by
 * podman per container. Only PIDs we start are killed (the containerd daemon); the
 * rest is removed through the engines themselves, and cleanup() reports what is left.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { DEFAULT_STATE_ROOT } from '../../src/oci/state-store.js';
import { findVirtiofsd, VIRTIOFSD_DEBIAN_PACKAGE } from '../../src/engine/virtiofsd.js';
import { E2E_ENGINE, e2ePrerequisites } from '../e2e/prerequisites.js';

/** The name both engines know the Debian test root under (imported, never pulled). */
export const TEST_IMAGE = 'localhost/tsibox-test-debian:1';

/** The OCI runtime under test: TSIBOX_OCI_TEST_RUNTIME, else this checkout's bin/tsibox-oci.js. */
export function ociRuntime(): string {
  // Compiled, this file is <out>/test/support/oci-engines.js; bin/ is at the repo root.
  return process.env['TSIBOX_OCI_TEST_RUNTIME'] || fileURLToPath(new URL('../../../bin/tsibox-oci.js', import.meta.url));
}

export function isTsiboxRuntime(runtime: string = ociRuntime()): boolean {
  return basename(runtime).startsWith('tsibox');
}

/**
 * Where the runtime keeps container `id` under global --root `root` (the root an engine
 * passes; podman passes none, so the runtime's default: /run/tsibox-oci or runc's
 * /run/runc; TSIBOX_OCI_TEST_STATE_ROOT overrides for other runtimes, e.g. /run/crun).
 */
export function runtimeStateDir(id: string, root?: string): string {
  return join(root ?? process.env['TSIBOX_OCI_TEST_STATE_ROOT'] ?? (isTsiboxRuntime() ? DEFAULT_STATE_ROOT : '/run/runc'), id);
}

/** A container name/id that no other run shares (the leftover scans look for it). */
export function uniqueName(prefix = 'tsibox-oci-test'): string {
  return `${prefix}-${randomBytes(4).toString('hex')}`;
}

/** `cmd` on PATH or in the sbin directories (runc lives in /usr/sbin). */
export function which(cmd: string): string | undefined {
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  return dirs.filter((d) => d !== '').map((d) => join(d, cmd)).find((p) => existsSync(p));
}

const ENGINE_TOOLS = {
  podman: [['podman', 'podman'], ['conmon', 'conmon']],
  containerd: [['containerd', 'containerd'], ['ctr', 'containerd'], ['containerd-shim-runc-v2', 'containerd']],
} as const;

/**
 * Why the OCI end-to-end tests of `engine` cannot run here, or false; checked before
 * any engine starts (an engine that then fails to start gives its own error as reason).
 */
export async function ociPrerequisites(t: Test, engine: keyof typeof ENGINE_TOOLS, testRoot: string | undefined): Promise<string | false> {
  // The engines only call tsibox-oci; what differs per tsibox engine is the runtime
  // itself, which test/e2e/oci-runtime.test.ts runs under kvm too.
  if (E2E_ENGINE === 'kvm') return 'podman and containerd drive tsibox-oci under the QEMU engine only; oci-runtime.test.ts covers the runtime under kvm';
  if (process.getuid?.() !== 0) return 'these tests run the engines rootful: run them as root';
  for (const [cmd, pkg] of ENGINE_TOOLS[engine]) if (which(cmd) === undefined) return `${cmd} is not installed (Debian: ${pkg})`;
  if (engine === 'podman' && !['/usr/lib/cni/bridge', '/usr/libexec/cni/bridge', '/opt/cni/bin/bridge'].some(existsSync)) {
    return 'the CNI plugins are not installed (Debian: containernetworking-plugins)';
  }
  if (testRoot === undefined) return 'the Debian test root is not built: run `sudo bash scripts/build-test-root.sh` (about a minute; needs debootstrap and the Debian archive)';
  const runtime = ociRuntime();
  if (!existsSync(runtime)) return `the OCI runtime ${runtime} does not exist (TSIBOX_OCI_TEST_RUNTIME)`;
  if (!isTsiboxRuntime(runtime)) return false;
  // bin/tsibox-oci.js runs ../dist/src/oci/cli.js.
  if (!existsSync(join(dirname(runtime), '..', 'dist', 'src', 'oci', 'cli.js'))) return `${runtime} has no dist/ next to it: run \`npm run build\``;
  if (findVirtiofsd() === undefined) return `virtiofsd is not installed (Debian: ${VIRTIOFSD_DEBIAN_PACKAGE})`;
  return (await e2ePrerequisites(t)).skip;
}

export interface Result {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** Set when the command could not start or ran past its timeout. */
  error?: Error;
}

export interface RunOptions {
  input?: string;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Runs a command to completion; never longer than timeoutMs (default 120 s: a VM boot under emulation). */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Result {
  const t0 = Date.now();
  const r = spawnSync(cmd, args, {
    input: opts.input ?? '', env: opts.env ?? process.env, cwd: opts.cwd, timeout: opts.timeoutMs ?? 120_000,
    killSignal: 'SIGKILL', maxBuffer: 64 * 1024 * 1024, encoding: 'utf8',
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout ?? '', stderr: r.stderr ?? '', ms: Date.now() - t0, ...(r.error ? { error: r.error } : {}) };
}

/** A Result in one line, for assertion messages and skip reasons. */
export function describe(r: Result): string {
  const why = r.error ? ` (${r.error.message})` : r.signal ? ` (signal ${r.signal})` : '';
  return `status ${r.status}${why} after ${r.ms} ms; stdout: ${JSON.stringify(r.stdout.slice(-800))}; stderr: ${JSON.stringify(r.stderr.slice(-1500))}`;
}

export const shellQuote = (s: string): string => `'${s.replaceAll("'", `'\\''`)}'`;
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve, reject) => { s.once('error', reject); s.listen(0, '127.0.0.1', resolve); });
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Whether anything on the host listens on TCP `port` (any address), from /proc/net/tcp{,6}. */
export function listening(port: number): boolean {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return ['/proc/net/tcp', '/proc/net/tcp6'].some((f) => existsSync(f) && readFileSync(f, 'utf8').split('\n').slice(1)
    .some((l) => { const c = l.trim().split(/\s+/); return c[1]?.endsWith(hex) === true && c[3] === '0A'; }));
}

/** Live processes (not this one, not zombies: their cmdline is empty) whose command line contains `needle`. */
export function processesMentioning(needle: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d) && Number(d) !== process.pid)) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
      if (cmdline.includes(needle)) found.push(`${pid}: ${cmdline.slice(0, 300)}`);
    } catch { /* exited meanwhile */ }
  }
  return found;
}

/** Mount points (this mount namespace) whose path contains `needle`, deepest first. */
export function mountsMentioning(needle: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '')
    .map((p) => p.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p.includes(needle)).sort((a, b) => b.length - a.length);
}

/** Polls `check` every 250 ms until it is true or `ms` pass; returns its last answer. */
export async function waitUntil(ms: number, check: () => boolean): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; await sleep(250)) if (check()) return true;
  return check();
}

export interface Leftovers { processes: string[]; mounts: string[] }

/**
 * The end of an engine's temp dir: waits (bounded) for processes that name it to exit
 * (podman's `container cleanup` exit commands, containerd shims), unmounts what is still
 * mounted under it (only there), removes it. Returns what it found left, to assert on.
 */
async function removeWorkDir(dir: string): Promise<Leftovers> {
  const mountsUnder = (): string[] => mountsMentioning(dir).filter((m) => m === dir || m.startsWith(`${dir}/`));
  await waitUntil(15_000, () => processesMentioning(`${dir}/`).length === 0);
  const left: Leftovers = { processes: processesMentioning(`${dir}/`), mounts: mountsUnder() };
  for (const m of left.mounts) run('umount', ['--lazy', m], { timeoutMs: 10_000 });
  // rmSync would descend into a bind mount and delete the host files under it.
  if (mountsUnder().length === 0) rmSync(dir, { recursive: true, force: true });
  return left;
}

/** Creates a tar of the Debian test root (read-only: the root is a shared cache). */
function tarRoot(root: string, out: string): Result {
  return run('tar', ['-C', root, '-cf', out, '.'], { timeoutMs: 300_000 });
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/**
 * An OCI image archive (oci-layout, index.json, blobs) of `root` as one uncompressed
 * layer, named TEST_IMAGE through the annotation containerd's import reads. Built by
 * hand so that the containerd test needs neither podman nor a registry.
 */
async function ociArchive(root: string, dir: string): Promise<string> {
  const layout = join(dir, 'oci-layout-dir');
  const blobs = join(layout, 'blobs', 'sha256');
  mkdirSync(blobs, { recursive: true });
  const layerTmp = join(layout, 'layer.tar');
  const tr = tarRoot(root, layerTmp);
  if (tr.status !== 0) throw new Error(`tar of the test root failed: ${describe(tr)}`);
  const layer = { digest: `sha256:${await sha256File(layerTmp)}`, size: statSync(layerTmp).size };
  renameSync(layerTmp, join(blobs, layer.digest.slice(7)));
  const blob = (json: unknown): { digest: string; size: number } => {
    const data = Buffer.from(JSON.stringify(json));
    const digest = createHash('sha256').update(data).digest('hex');
    writeFileSync(join(blobs, digest), data);
    return { digest: `sha256:${digest}`, size: data.length };
  };
  const config = blob({
    architecture: 'amd64', os: 'linux',
    config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: [layer.digest] },
  });
  const manifest = blob({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  });
  writeFileSync(join(layout, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{
      mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, platform: { architecture: 'amd64', os: 'linux' },
      annotations: { 'io.containerd.image.name': TEST_IMAGE, 'org.opencontainers.image.ref.name': TEST_IMAGE.split(':').pop() },
    }],
  }));
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const out = join(dir, 'image-oci.tar');
  const ar = run('tar', ['-C', layout, '-cf', out, '.'], { timeoutMs: 300_000 });
  rmSync(layout, { recursive: true, force: true });
  if (ar.status !== 0) throw new Error(`tar of the OCI layout failed: ${describe(ar)}`);
  return out;
}

/** Podman with its own configuration and storage in a temp dir, running containers with `runtime`. */
export class Podman {
  readonly dir: string;
  readonly runtime: string;
  readonly env: NodeJS.ProcessEnv;
  #driver = 'overlay';

  private constructor(runtime: string) {
    this.runtime = runtime;
    this.dir = mkdtempSync(join(tmpdir(), 'tsibox-oci-podman-'));
    this.env = {
      ...process.env,
      CONTAINERS_CONF: join(this.dir, 'containers.conf'),
      CONTAINERS_STORAGE_CONF: join(this.dir, 'storage.conf'),
      CONTAINERS_REGISTRIES_CONF: join(this.dir, 'registries.conf'),
      SHELL: '/bin/sh', // what `script` runs the -t command with
      TMPDIR: join(this.dir, 'tmpdir'), // podman's own temporary files (conmon's console sockets still go to /tmp)
    };
    mkdirSync(join(this.dir, 'tmp'));
    mkdirSync(join(this.dir, 'tmpdir'));
    mkdirSync(join(this.dir, 'networks'));
    writeFileSync(join(this.dir, 'containers.conf'), [
      '[containers]',
      // Podman's default asks for more than this host's hard limits allow.
      'default_ulimits = ["nofile=20000:20000", "nproc=1024:1024"]',
      'log_driver = "k8s-file"',
      '[engine]',
      'events_logger = "file"',
      `tmp_dir = "${join(this.dir, 'tmp')}"`,
      'lock_type = "file"', // locks under tmp_dir, not the host-wide /dev/shm/libpod_lock
      `image_copy_tmp_dir = "${join(this.dir, 'tmpdir')}"`, // not /var/tmp
      '[network]',
      // Debian 12's podman picks netavark when it is installed (a Recommends); CNI is what we test.
      'network_backend = "cni"',
      `network_config_dir = "${join(this.dir, 'networks')}"`, // the default network stays in memory
      '',
    ].join('\n'));
    writeFileSync(join(this.dir, 'registries.conf'), 'unqualified-search-registries = []\n');
    this.#writeStorageConf();
  }

  #writeStorageConf(): void {
    writeFileSync(join(this.dir, 'storage.conf'), [
      '[storage]', `driver = "${this.#driver}"`,
      `graphroot = "${join(this.dir, 'root')}"`, `runroot = "${join(this.dir, 'runroot')}"`, '',
    ].join('\n'));
  }

  /** Sets podman up and imports the test image; a string is podman's own error (the reason to skip). */
  static start(runtime: string, testRoot: string): Podman | string {
    const p = new Podman(runtime);
    let info = p.podman(['info'], { timeoutMs: 60_000 });
    const overlayError = info.stderr.trim();
    if (info.status !== 0) {
      // overlay cannot nest on some temp filesystems (e.g. inside an overlayfs container); vfs always works.
      p.#driver = 'vfs';
      p.#writeStorageConf();
      info = p.podman(['info'], { timeoutMs: 60_000 });
    }
    const imported = info.status === 0 ? p.#importImage(testRoot) : info;
    if (imported.status === 0) return p;
    const why = info.status === 0 ? `podman import: ${imported.stderr.trim() || describe(imported)}`
      : `podman info: ${overlayError} (with the vfs driver: ${info.stderr.trim() || describe(info)})`;
    rmSync(p.dir, { recursive: true, force: true });
    return why;
  }

  /** The full podman command line for `args` (for running it through a pty). */
  argv(args: string[]): string[] {
    // cgroupfs: hybrid cgroups here and no systemd to ask (podman passes it on to its exit commands).
    return ['podman', '--runtime', this.runtime, '--cgroup-manager', 'cgroupfs', ...args];
  }

  podman(args: string[], opts: RunOptions = {}): Result {
    const [cmd, ...rest] = this.argv(args);
    return run(cmd!, rest, { env: this.env, cwd: this.dir, ...opts });
  }

  #importImage(root: string): Result {
    const tar = join(this.dir, 'rootfs.tar');
    const tr = tarRoot(root, tar);
    const r = tr.status === 0 ? this.podman(['import', tar, TEST_IMAGE], { timeoutMs: 300_000 }) : tr;
    rmSync(tar, { force: true });
    return r;
  }

  /** Removes container `name` if it exists (a teardown: never throws). */
  remove(name: string): void {
    this.podman(['rm', '--force', '--time', '0', '--ignore', name], { timeoutMs: 60_000 });
  }

  /** Removes every container and image through podman, then the temp dir; returns what was left. */
  async cleanup(): Promise<Leftovers> {
    if (!existsSync(this.dir)) return { processes: [], mounts: [] };
    this.podman(['rm', '--all', '--force', '--time', '0'], { timeoutMs: 120_000 });
    this.podman(['rmi', '--all', '--force'], { timeoutMs: 60_000 });
    return removeWorkDir(this.dir);
  }
}

/** Our own containerd daemon in a temp dir, running containers with `runtime` through the runc shim. */
export class Containerd {
  readonly dir: string;
  readonly runtime: string;
  readonly socket: string;
  /** The --runc-root we give ctr; the shim passes `--root <this>/<namespace>` to the runtime. */
  readonly runtimeRoot: string;
  readonly namespace = 'default';
  #daemon: ChildProcess | undefined;

  private constructor(runtime: string) {
    this.runtime = runtime;
    this.dir = mkdtempSync(join(tmpdir(), 'tsibox-oci-containerd-'));
    this.socket = join(this.dir, 'containerd.sock');
    this.runtimeRoot = join(this.dir, 'runtime-root');
    mkdirSync(join(this.dir, 'logs'));
    writeFileSync(join(this.dir, 'config.toml'), [
      'version = 2',
      `root = "${join(this.dir, 'root')}"`,
      `state = "${join(this.dir, 'state')}"`,
      // No Kubernetes here: without CRI the daemon starts in a second and touches no CNI.
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]', `  address = "${this.socket}"`,
      // Its default is /opt/containerd, created at start.
      '[plugins."io.containerd.internal.v1.opt"]', `  path = "${join(this.dir, 'opt')}"`,
      '',
    ].join('\n'));
  }

  /** Starts the daemon and imports the test image; a string is containerd's own error (the reason to skip). */
  static async start(runtime: string, testRoot: string): Promise<Containerd | string> {
    const c = new Containerd(runtime);
    const log = join(c.dir, 'containerd.log');
    const fd = openSync(log, 'a');
    const daemon = spawn('containerd', ['--config', join(c.dir, 'config.toml')], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    c.#daemon = daemon;
    let exited = false;
    daemon.once('exit', () => { exited = true; });
    daemon.once('error', () => { exited = true; });
    const answers = (): boolean => existsSync(c.socket) && c.ctr(['version'], { timeoutMs: 10_000 }).status === 0;
    const up = await waitUntil(30_000, () => exited || answers()) && !exited;
    let why = up ? undefined : `containerd did not come up: ${readFileSync(log, 'utf8').trim().split('\n').slice(-5).join(' | ')}`;
    if (why === undefined) {
      try {
        const archive = await ociArchive(testRoot, c.dir);
        const r = c.ctr(['images', 'import', archive], { timeoutMs: 300_000 });
        rmSync(archive, { force: true });
        if (r.status !== 0) why = `ctr images import: ${r.stderr.trim() || describe(r)}`;
      } catch (e) {
        why = (e as Error).message;
      }
    }
    if (why === undefined) return c;
    await c.cleanup();
    return why;
  }

  ctr(args: string[], opts: RunOptions = {}): Result {
    return run('ctr', ['--address', this.socket, '--namespace', this.namespace, ...args], { cwd: this.dir, ...opts });
  }

  /** `ctr run [ctrArgs] TEST_IMAGE id cmd...` with the runtime under test. */
  run(id: string, ctrArgs: string[], cmd: string[], opts: RunOptions = {}): Result {
    return this.ctr(['run', '--runc-binary', this.runtime, '--runc-root', this.runtimeRoot, ...ctrArgs, TEST_IMAGE, id, ...cmd], opts);
  }

  /** The runtime's state directory of container `id` (under the --root the shim passes). */
  stateDir(id: string): string {
    return runtimeStateDir(id, join(this.runtimeRoot, this.namespace));
  }

  /** The bundle directory the shim made for `id`. */
  bundleDir(id: string): string {
    return join(this.dir, 'state', 'io.containerd.runtime.v2.task', this.namespace, id);
  }

  logPath(id: string): string {
    return join(this.dir, 'logs', `${id}.log`);
  }

  #alive(): boolean {
    return this.#daemon !== undefined && this.#daemon.exitCode === null && this.#daemon.signalCode === null;
  }

  /** Removes container `id` and its task if they exist, through ctr (a teardown: never throws). */
  remove(id: string): void {
    if (!this.#alive()) return;
    this.ctr(['task', 'kill', '--signal', 'SIGKILL', id], { timeoutMs: 30_000 });
    this.ctr(['task', 'delete', '--force', id], { timeoutMs: 60_000 });
    this.ctr(['container', 'delete', id], { timeoutMs: 30_000 });
  }

  /** Stops the daemon we started (SIGTERM, then SIGKILL after 15 s). */
  async stop(): Promise<void> {
    const d = this.#daemon;
    if (d === undefined || !this.#alive()) return;
    this.#daemon = undefined;
    const gone = new Promise<void>((r) => d.once('exit', () => r()));
    // Bounded waits whose timers do not keep the test process alive after the daemon is gone.
    const within = (ms: number): Promise<boolean> => new Promise((r) => {
      const timer = setTimeout(() => r(false), ms);
      void gone.then(() => { clearTimeout(timer); r(true); });
    });
    d.kill('SIGTERM');
    if (!await within(15_000)) {
      d.kill('SIGKILL');
      await within(5_000);
    }
  }

  /** Removes every container through ctr, stops the daemon, removes the temp dir; returns what was left. */
  async cleanup(): Promise<Leftovers> {
    if (!existsSync(this.dir)) return { processes: [], mounts: [] };
    if (this.#alive()) {
      const ids = this.ctr(['container', 'list', '--quiet'], { timeoutMs: 30_000 }).stdout.split('\n').filter((l) => l !== '');
      for (const id of ids) this.remove(id);
    }
    await this.stop();
    return removeWorkDir(this.dir);
  }
}
