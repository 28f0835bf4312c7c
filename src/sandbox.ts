// The public way to run a program in a microVM: `await Sandbox.run({ argv })`.
// Picks the engine (KVM where guest ring 0 runs natively, QEMU otherwise), makes sure
// the guest kernel and default root exist, streams stdio and returns the exit status.
import { EventEmitter } from 'node:events';
import { PassThrough, Writable, type Readable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { TsiboxError } from './errors.js';
import { checkTerminalSize, ensureInitramfs, ensureKernel, type InitConfig, type Rlimit, type TerminalSize } from './guest/index.js';
import { runKvm } from './engine/kvm.js';
import { runQemu, type VhostUserDeviceSpec } from './engine/qemu.js';
import { chooseEngine, kvmKind, qemuAccel, ring0ProbeOnce, type EngineChoice, type EngineName } from './engine/select.js';
import { RngDevice } from './virtio/rng.js';
import { VsockDevice } from './virtio/vsock/device.js';
import { addVsockPort, type VsockBridge } from '../proxies/unix-bridge.js';
import { ConnectionLog } from '../proxies/connection-log.js';
import { RateLimitedLog } from './log-rate.js';
import { checkPasstPolicy, type PasstNetwork } from './engine/network-passt.js';
import { checkTsiNetwork, type TsiNetwork } from './engine/network-tsi.js';
import { checkGvproxyNetwork, type GvproxyNetwork } from './engine/network-gvproxy.js';
import { startNetwork } from './engine/network.js';
import type { NetworkSetup } from './engine/network-setup.js';
import type { ConnectionEvent } from './connection-records.js';
import { Policy } from './policy/index.js';
import { PortMap } from './portmap/index.js';
import { SandboxPorts } from './sandbox-ports.js';
import { AgentClient, type ExecHandle, type ExecOptions } from './agent/index.js';
import { checkDirectoryShares, checkGuestBinds, type DirectoryMount, type GuestBind } from './engine/directory-share-options.js';
import { checkVirtiofsdUsable, startVirtiofsShares, type VirtiofsShares } from './engine/virtiofsd.js';
import { checkDeviceSlots } from './engine/device-slots.js';
import { checkDisks, type DiskImage, type RootDiskImage } from './engine/disk-options.js';
import { kvmDiskDevices, qemuDiskArgs, startDiskBackends, type DiskBackends } from './engine/disks.js';

export type { EngineChoice, EngineName } from './engine/select.js';
export type { PasstNetwork } from './engine/network-passt.js';
export type { GvproxyNetwork } from './engine/network-gvproxy.js';
export type { TsiLimitOptions } from '../proxies/limits.js';
export type { TsiNetwork } from './engine/network-tsi.js';
export type { ConnectionEvent } from './connection-records.js';
export type { PublishSpec, PublishedPort, PublishOptions, SandboxPorts } from './sandbox-ports.js';
export type { ExecHandle, ExecOptions, ExecExit } from './agent/index.js';
export type { TerminalSize } from './guest/index.js';
export type { DirectoryMount, GuestBind } from './engine/directory-share-options.js';
export type { DiskFormat, DiskImage, RootDiskFsType, RootDiskImage } from './engine/disk-options.js';

export interface SandboxOptions {
  /** The program and its arguments (argv[0] is looked up in PATH when it has no '/'). */
  argv: string[];
  env?: Record<string, string>;
  /** Working directory in the guest (created when missing). */
  workdir?: string;
  /** The guest's host name (sethostname(2) by init; 1..64 characters). Default: the kernel's. */
  hostname?: string;
  /**
   * Run the program as this user and group (init's setgid/setuid before exec; no
   * supplementary groups). Default: root (0:0). Non-negative integers, else INVALID_ARGUMENT.
   */
  user?: { uid: number; gid?: number };
  /** Resource limits init sets (setrlimit(2)) before exec, e.g. `{ resource: 'NOFILE', cur: 1024, max: 4096 }`. */
  rlimits?: Rlimit[];
  cpus?: number;
  memoryMiB?: number;
  /** 'auto' (default): KVM where ring 0 runs natively, else QEMU. */
  engine?: EngineChoice;
  /** Guest kernel (bzImage or vmlinux); default: the project's kernel, built when missing. */
  kernel?: string;
  /** Guest initramfs; default: the busybox root, built when missing. */
  initrd?: string;
  /** Extra newc archives appended to the initramfs (files the workload needs). */
  extraArchives?: Buffer[];
  /**
   * Data for the workload's stdin; it sees end of file afterwards (none: empty stdin).
   * 'pipe' (start() only): write to `sandbox.stdin`, end() it for end of file.
   */
  stdin?: Readable | Buffer | string | 'pipe';
  /** Where the workload's stdout goes; without one it is collected into the result. */
  stdout?: Writable;
  stderr?: Writable;
  /** Kill the VM after this long (TsiboxError VM_TIMEOUT). */
  timeoutMs?: number;
  /**
   * Stops the sandbox when aborted: the VM ends at once and run() rejects with the
   * signal's reason (e.g. the PORT_MAP_BIND_FAILED error a `PortMap` 'failed' event carried).
   */
  signal?: AbortSignal;
  logger?: Logger;
  /** Called with QEMU's pid (QEMU engine only; for tests and supervisors). */
  onQemuStart?: (pid: number) => void;
  /**
   * Called with the sandbox's devices before the guest boots (both engines; for tests
   * and supervisors), e.g. `vsock.resetTransport()` to do what a snapshot restore does.
   */
  onDevices?: (devices: { vsock: VsockDevice }) => void;
  /**
   * The guest exec agent (docs/exec-agent.md), which `exec()` and `kill()` use: a child
   * of init listening on guest vsock port 52. Default true; false: neither works
   * (NOT_SUPPORTED) and the guest has one process fewer.
   */
  agent?: boolean;
  /**
   * Give the main process a terminal of this window size, as `docker run -t` does
   * (docs/guest-init.md "A terminal for the workload"): in the guest a pseudo-terminal
   * is its stdin, stdout, stderr and controlling terminal, so the guest's line
   * discipline echoes, edits lines and turns Ctrl-C (byte 0x03 on stdin) into SIGINT
   * for the foreground process group. stdin's bytes go to the terminal as they are
   * (a host terminal belongs in raw mode); stdout carries everything the terminal
   * shows, stderr included (`stderr` stays empty), with the terminal's CR LF line
   * ends. The end of stdin reaches the program as the terminal's end-of-file
   * character (Ctrl-D), once. `TERM=xterm` is added to `env` unless it names TERM.
   * `resize()` changes the size later (needs the exec agent). cols and rows 1..65535,
   * else INVALID_ARGUMENT.
   */
  tty?: TerminalSize;
  /** vsock ports joined to host unix sockets (QEMU engine for now); the guest is CID 3, the host CID 2. */
  vsockPorts?: VsockPort[];
  /**
   * Guest networking (QEMU engine for now). Without it the guest has loopback only.
   * `{ mode: 'passt', policy }`: a virtio-net NIC (eth0) wired to a passt process instead
   * of TSI; the policy filters its frames (docs/netstack.md). `{ mode: 'gvproxy', policy,
   * portMap? }`: the same NIC wired to gvproxy, configured by DHCP, ports published
   * through gvproxy's API (changeable while it runs). If passt or gvproxy ends while the
   * sandbox runs, the VM is stopped and run() rejects with NETWORK_ERROR.
   */
  network?: TsiNetwork | PasstNetwork | GvproxyNetwork;
  /**
   * The guest's root is this host directory (absolute path), shared over virtio-fs by a
   * virtiofsd that tsibox starts and stops with the sandbox (either engine: QEMU's
   * vhost-user-fs-device, or the KVM engine's own vhost-user front end; needs root on
   * the host). init still comes from the initramfs: it mounts the share,
   * puts /proc, /sys, /dev, /dev/pts, /tmp and /run (tmpfs) and, with a network's DNS,
   * /etc/resolv.conf (a bind mount, the host file is not written) inside it, and
   * switches root before the workload and the exec agent start (docs/directory-root.md).
   * Writes in the guest reach the host directory. INVALID_ARGUMENT for a relative,
   * missing or non-directory path; NOT_SUPPORTED without root;
   * ENGINE_UNAVAILABLE without virtiofsd; a virtiofsd that dies mid-run stops the
   * sandbox with DEVICE_ERROR.
   */
  root?: string;
  /**
   * Serve `root` read-only: writes fail with EROFS, enforced on the host (virtiofsd runs
   * in a mount namespace where the directory is bind-mounted read-only), so a guest that
   * remounts read-write cannot write either. Needs `root`.
   */
  rootReadOnly?: boolean;
  /**
   * More host directories (absolute paths) at `guestPath` (absolute) in the guest, each
   * through its own virtiofsd, read-only in the guest with `readOnly`. A missing mount
   * point is created, except on a read-only root, where it is the workload's failure
   * (exit status 125, the reason on stderr). At most 8.
   */
  mounts?: DirectoryMount[];
  /**
   * Bind mounts inside the guest, made by init after `mounts`: the guest path `source` (a
   * file or a directory, typically inside a `mounts` entry) is bound onto `path`, read-only
   * with `readOnly`. A missing `path` is created (an empty file for a file), except on a
   * read-only root, where it is the workload's failure (125, the reason on stderr). This
   * is how single host files reach the guest: share their directory, bind the file.
   * Absolute paths without NUL, at most 4096 bytes each; at most 64 binds; else
   * INVALID_ARGUMENT.
   */
  binds?: GuestBind[];
  /**
   * Host image files the guest sees as virtio-blk disks, each served by a
   * qemu-storage-daemon that tsibox starts and stops with the sandbox (vhost-user-blk,
   * under either engine). The guest names them /dev/vda, /dev/vdb, ... in this
   * order, after `rootDisk` (docs/disks.md). `format` 'raw' or 'qcow2'; `readOnly`: the
   * guest sees a read-only disk. The guest's flush (fsync, sync) reaches the image file
   * (fdatasync) and its discard (fstrim, blkdiscard) frees space in it. At most 8 disks
   * with `rootDisk`. INVALID_ARGUMENT for a relative, missing or non-file path, a bad
   * format or a path given twice; ENGINE_UNAVAILABLE without qemu-storage-daemon;
   * DEVICE_ERROR when it cannot open an image, or dies mid-run (the sandbox stops).
   */
  disks?: DiskImage[];
  /**
   * The guest's root is the file system (`fsType`, default ext4; ext2/ext3 too) on this
   * whole disk image (no partition table), attached as /dev/vda like a `disks` entry.
   * init (from the initramfs) mounts it, read-only with `readOnly`, and sets it up as
   * for `root` (/proc, /sys, /dev, /tmp, /run, resolv.conf) before the workload starts.
   * Not with `root` (INVALID_ARGUMENT). Make one with `mkfs.ext4 -d DIR IMAGE SIZE`.
   */
  rootDisk?: RootDiskImage;
  /**
   * A virtio-balloon device with free page reporting (virtio 1.2 §5.5.6.7; Linux
   * CONFIG_PAGE_REPORTING): the guest tells the host which RAM it freed, in chunks of
   * 2 MiB or more a few seconds after freeing, and the host gives those pages back to
   * its kernel, so the sandbox's resident memory falls after a large allocation is freed
   * (docs/balloon.md). Under the KVM engine it is our own device (MADV_DONTNEED on
   * private RAM, MADV_REMOVE on shared RAM); under QEMU it is QEMU's
   * virtio-balloon-device with free-page-reporting=on. Default true; false leaves it out.
   */
  balloon?: boolean;
}

/**
 * A vsock port bridged to a host unix socket (like libkrun's krun_add_vsock_port2);
 * bytes pass through unchanged, one unix connection per vsock connection.
 */
export interface VsockPort {
  /** 'guest-to-host': host vsock port the guest connects to (CID 2). 'host-to-guest': the guest port tsibox connects to. */
  port: number;
  /**
   * 'guest-to-host': the unix socket tsibox connects to for each guest connection (it must be listening).
   * 'host-to-guest': where tsibox listens (must not exist yet; removed when the sandbox ends).
   */
  path: string;
  /** Who opens connections (default 'guest-to-host'). */
  direction?: 'guest-to-host' | 'host-to-guest';
}

export interface SandboxResult {
  /** The workload's exit status (125 init failed, 126 not executable, 127 not found, 128+n signal n). */
  exitCode: number;
  /** The signal name when exitCode is 128+n for a known signal n (init's convention). */
  signal?: NodeJS.Signals;
  engine: EngineName;
  /** Collected stdout / stderr when no stream was given. */
  stdout?: Buffer;
  stderr?: Buffer;
  /** Wall time of the run in ms. */
  ms: number;
  /** Set when stop() ended the VM (exitCode 137, signal SIGKILL). */
  stopped?: boolean;
}

const SIGNALS: Record<number, NodeJS.Signals> = {
  1: 'SIGHUP', 2: 'SIGINT', 3: 'SIGQUIT', 4: 'SIGILL', 5: 'SIGTRAP', 6: 'SIGABRT', 7: 'SIGBUS', 8: 'SIGFPE', 9: 'SIGKILL',
  10: 'SIGUSR1', 11: 'SIGSEGV', 12: 'SIGUSR2', 13: 'SIGPIPE', 14: 'SIGALRM', 15: 'SIGTERM', 24: 'SIGXCPU', 25: 'SIGXFSZ',
};

let defaultLogger: Logger | undefined;

/** Events of a running sandbox. */
export interface SandboxEvents {
  /** A connection or flow finished (every one, never rate-limited). */
  connection: [event: ConnectionEvent];
  /** The sandbox ended: the same result `exited` resolves with. */
  exit: [result: SandboxResult];
}

/** The reason `stop()` aborts with: the engine's abort then means "stopped", not an error. */
class StopRequest {
  readonly reason = 'stopped';
}

/** Records `connections()` holds for a slow reader before it drops the oldest. */
const CONNECTION_BUFFER = 10_000;

/**
 * A microVM sandbox. `Sandbox.run(options)` runs a program to its end and returns its
 * status; `Sandbox.start(options)` returns this handle while it runs: its stdio streams,
 * `exited`, run-time ports (`ports`), the egress policy (`setPolicy`), connection events
 * (`'connection'`, `connections()`), `exec()`, `kill()`, the terminal's size
 * (`resize()`, with `tty`), `stop()`, and `await using` (AsyncDisposable).
 */
export class Sandbox extends EventEmitter<SandboxEvents> implements AsyncDisposable {
  #engine: EngineName = 'qemu';
  #stdin: Writable | null = null;
  #stdout: Readable | null = null;
  #stderr: Readable | null = null;
  /** Replaced in #boot; never settles before. */
  #exited: Promise<SandboxResult> = new Promise(() => { /* not started */ });
  #ports: SandboxPorts | null = null;
  /** The sandbox's own copy of the network policy (setPolicy replaces its rules). */
  #policy: Policy | null = null;
  readonly #abort = new AbortController();
  #running = true;
  #agent: AgentClient | null = null;
  /** stop() asked: the result says stopped, whichever way the VM ended. */
  #stopRequested = false;
  /** The terminal size asked for last, and the one the guest has (tty only). */
  #ttyWanted: TerminalSize | null = null;
  #ttySent: TerminalSize | null = null;
  #resizing: Promise<void> | null = null;
  #stopping: Promise<SandboxResult> | null = null;

  private constructor() {
    super();
  }

  /** The engine running it. */
  get engine(): EngineName { return this.#engine; }
  /** The main process's stdin, when `stdin: 'pipe'` was given (end() it for end of file). */
  get stdin(): Writable | null { return this.#stdin; }
  /** The main process's stdout, unless a stream was given in the options (start() only). */
  get stdout(): Readable | null { return this.#stdout; }
  get stderr(): Readable | null { return this.#stderr; }
  /**
   * Resolves with the main process's result when the sandbox ends (after `stop()`:
   * exitCode 137, signal 'SIGKILL', stopped true). Rejects with VM_TIMEOUT, VM_ERROR,
   * NETWORK_ERROR or the AbortSignal's reason.
   */
  get exited(): Promise<SandboxResult> { return this.#exited; }
  /** Ports published on the host, changeable while the sandbox runs (TSI and gvproxy). */
  get ports(): SandboxPorts { return this.#ports!; }
  /** Whether the VM still runs. */
  get running(): boolean { return this.#running; }

  /** Runs `opts.argv` in a new microVM and resolves when it ends (start + exited). */
  static async run(opts: SandboxOptions): Promise<SandboxResult> {
    if (opts.stdin === 'pipe') throw new TsiboxError('INVALID_ARGUMENT', "stdin: 'pipe' needs Sandbox.start() (run() has no handle to write to)");
    const sb = new Sandbox();
    await sb.#boot(opts, true);
    return await sb.#exited;
  }

  /**
   * Boots a microVM running `opts.argv` and resolves once it started, with the handle.
   * Without `stdout` / `stderr` in the options, read them from the handle. Rejects
   * (nothing left running) with INVALID_ARGUMENT, ENGINE_UNAVAILABLE,
   * PORT_MAP_BIND_FAILED, NETWORK_ERROR, GUEST_BUILD.
   */
  static async start(opts: SandboxOptions): Promise<Sandbox> {
    const sb = new Sandbox();
    await sb.#boot(opts, false);
    return sb;
  }

  /**
   * Replaces the egress (and inbound) policy at once: every connection, datagram flow
   * and listener connection decided from now on follows `policy`; connections already
   * open stay open (docs/security.md). The sandbox keeps its own copy: changing the
   * object later does nothing. TSI's guest-side list of unix socket paths is fixed at
   * boot (the host still judges every unix connect by the new rules).
   * Errors: NOT_SUPPORTED without a network, INVALID_ARGUMENT for a non-Policy,
   * INVALID_STATE once ended.
   */
  setPolicy(policy: Policy): void {
    if (this.#policy === null) throw new TsiboxError('NOT_SUPPORTED', 'this sandbox has no network: there is no policy to change');
    if (!(policy instanceof Policy)) throw new TsiboxError('INVALID_ARGUMENT', 'setPolicy needs a Policy (new Policy({ default, rules }))');
    if (!this.#running) throw new TsiboxError('INVALID_STATE', 'the sandbox ended');
    this.#policy.replace(policy);
  }

  /**
   * Every finished connection record from now until the sandbox ends, as an async
   * iterator. A reader slower than the guest loses the oldest records beyond
   * `maxBuffered` (default 10 000); the iterator ends when the sandbox does.
   */
  async *connections(opts: { maxBuffered?: number } = {}): AsyncGenerator<ConnectionEvent, void, undefined> {
    const max = opts.maxBuffered ?? CONNECTION_BUFFER;
    const queue: ConnectionEvent[] = [];
    let wake: (() => void) | null = null;
    let ended = !this.#running;
    const onConnection = (ev: ConnectionEvent): void => {
      if (queue.length >= max) queue.shift();
      queue.push(ev);
      wake?.();
    };
    const onEnd = (): void => { ended = true; wake?.(); };
    this.on('connection', onConnection);
    this.once('exit', onEnd);
    void this.#exited.catch(onEnd);
    try {
      for (;;) {
        const next = queue.shift();
        if (next !== undefined) { yield next; continue; }
        if (ended) return;
        await new Promise<void>((r) => { wake = r; });
        wake = null;
      }
    } finally {
      this.off('connection', onConnection);
      this.off('exit', onEnd);
    }
  }

  /**
   * Runs another process in the running guest, beside the main one (through the exec
   * agent; docs/exec-agent.md): its streams, pid and exit status are on the handle
   * (`stdout`, `stderr`, `pid`, `exited` → `{ exitCode, signal? }`, `kill(sig)`).
   * Defaults (environment, workdir, user, rlimits) are the main workload's; `env` adds
   * to them. Processes still running when the main one ends die with the VM.
   * Errors: NOT_SUPPORTED (`agent: false`), INVALID_STATE (ended), INVALID_ARGUMENT;
   * later, on the handle: AGENT_UNAVAILABLE, AGENT_BUSY (64 at once), AGENT_EXEC_FAILED
   * (`pid` only: `exited` still gives 126/127), AGENT_PROTOCOL.
   */
  exec(argv: string[], opts: ExecOptions = {}): ExecHandle {
    if (this.#agent === null) throw new TsiboxError('NOT_SUPPORTED', 'this sandbox runs without the exec agent (agent: false)');
    if (!this.#running) throw new TsiboxError('INVALID_STATE', 'the sandbox ended');
    return this.#agent.exec(argv, opts);
  }

  /**
   * Sends `signal` (default SIGTERM) to the main process's process group in the guest,
   * any signal, SIGKILL included; resolves once the guest's init has it. The sandbox
   * ends when the main process does (`exited`). Errors: NOT_SUPPORTED (`agent: false`),
   * INVALID_STATE (ended), INVALID_ARGUMENT (not a signal), AGENT_UNAVAILABLE.
   */
  async kill(signal: NodeJS.Signals | number = 'SIGTERM'): Promise<void> {
    if (this.#agent === null) throw new TsiboxError('NOT_SUPPORTED', 'this sandbox runs without the exec agent (agent: false), which carries kill()');
    if (!this.#running) throw new TsiboxError('INVALID_STATE', 'the sandbox ended');
    await this.#agent.signalMain(signal);
  }

  /**
   * Changes the window size of the main process's terminal (a sandbox started with
   * `tty`); the guest kernel sends SIGWINCH to the terminal's foreground process
   * group. Resolves once the guest has this size or one asked for after it: calls
   * made while one is on its way are merged, so sizes never arrive out of order, and
   * asking for the size the terminal has sends nothing. Errors: NOT_SUPPORTED (no
   * `tty`, or `agent: false`), INVALID_ARGUMENT (cols and rows not 1..65535),
   * INVALID_STATE (ended), AGENT_UNAVAILABLE, AGENT_PROTOCOL.
   */
  async resize(cols: number, rows: number): Promise<void> {
    if (this.#ttySent === null) throw new TsiboxError('NOT_SUPPORTED', 'this sandbox has no terminal (start it with tty: { cols, rows })');
    if (this.#agent === null) throw new TsiboxError('NOT_SUPPORTED', 'this sandbox runs without the exec agent (agent: false), which carries resize()');
    checkTerminalSize({ cols, rows }, 'resize');
    if (!this.#running) throw new TsiboxError('INVALID_STATE', 'the sandbox ended');
    this.#ttyWanted = { cols, rows };
    // One sender at a time; it sends the latest size until the guest has it. (finally()
    // runs a turn later, so the sender is recorded before it is cleared.)
    this.#resizing ??= this.#sendSizes(this.#agent).finally(() => { this.#resizing = null; });
    await this.#resizing;
  }

  async #sendSizes(agent: AgentClient): Promise<void> {
    for (;;) {
      const want = this.#ttyWanted!;
      const sent = this.#ttySent!;
      if (want.cols === sent.cols && want.rows === sent.rows) return;
      await agent.resizeMain(want.cols, want.rows);
      this.#ttySent = want;
    }
  }

  /**
   * Stops the sandbox, bounded: SIGTERM to the main process (through the agent), then,
   * if it has not ended within `timeoutMs` (default 10 000; 0: at once), the VM is ended
   * (exitCode 137, signal 'SIGKILL'). Resolves with the result, `stopped: true` unless it
   * had ended by itself before. Idempotent: later calls get the same result.
   */
  async stop(opts: { timeoutMs?: number } = {}): Promise<SandboxResult> {
    if (!this.#running || this.#abort.signal.aborted) return await this.#exited;
    this.#stopping ??= (async () => {
      const timeoutMs = opts.timeoutMs ?? 10_000;
      this.#stopRequested = true;
      if (timeoutMs > 0 && this.#agent !== null) {
        const ended = this.#exited.then(() => true, () => true);
        const signalled = this.kill('SIGTERM').then(() => true, () => false);
        const timer = new Promise<boolean>((r) => { setTimeout(() => { r(false); }, timeoutMs).unref(); });
        const done = await Promise.race([ended, signalled.then((ok) => (ok ? Promise.race([ended, timer]) : false)), timer]);
        if (done) return await this.#exited;
      }
      if (this.#running && !this.#abort.signal.aborted) this.#abort.abort(new StopRequest());
      return await this.#exited;
    })();
    return await this.#stopping;
  }

  /** `await using sb = await Sandbox.start(...)`: stop() when the scope ends; errors are not rethrown. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop().catch(() => { /* the scope is over: nobody to tell */ });
  }

  async #boot(opts: SandboxOptions, collect: boolean): Promise<void> {
    const start = performance.now();
    if (!Array.isArray(opts.argv) || opts.argv.length === 0) throw new TsiboxError('INVALID_ARGUMENT', 'argv must name a program');
    if (opts.tty !== undefined) checkTerminalSize(opts.tty);
    const log = opts.logger ?? (defaultLogger ??= pino({ name: 'tsibox', level: process.env['TSIBOX_LOG'] ?? 'silent' }));
    const decision = await chooseEngine(opts.engine ?? 'auto');
    this.#engine = decision.engine;
    log.info({ engine: decision.engine, reason: decision.reason }, `engine ${decision.engine}: ${decision.reason}`);

    // Shares and disks are checked before a kernel is built or anything starts.
    const shares = checkDirectoryShares(opts);
    const disks = checkDisks(opts);
    if (disks?.root && shares?.root) throw new TsiboxError('INVALID_ARGUMENT', 'root and rootDisk exclude each other: the guest has one root');
    if (shares !== null) checkVirtiofsdUsable();
    checkDeviceSlots(decision.engine, {
      shares: shares === null ? 0 : (shares.root === null ? 0 : 1) + shares.mounts.length,
      disks: disks === null ? 0 : disks.disks.length,
      balloon: opts.balloon !== false,
      net: opts.network?.mode === 'passt' || opts.network?.mode === 'gvproxy',
    });

    const kernel = opts.kernel ?? (await ensureKernel({ onProgress: (l) => { log.info(l); } })).bzImage;
    const initrd = opts.initrd ?? await ensureInitramfs({ onProgress: (l) => { log.info(l); } });
    if (opts.agent !== undefined && typeof opts.agent !== 'boolean') throw new TsiboxError('INVALID_ARGUMENT', 'agent must be a boolean');
    // As docker run -t: a terminal program needs TERM, and busybox's tools speak xterm.
    const env = opts.tty !== undefined && !Object.hasOwn(opts.env ?? {}, 'TERM') ? { ...opts.env, TERM: 'xterm' } : opts.env;
    const init: InitConfig = {
      argv: opts.argv,
      ...(opts.agent === false ? { agent: false } : {}),
      ...(env ? { env } : {}),
      ...(opts.workdir !== undefined ? { workdir: opts.workdir } : {}),
      ...(opts.hostname !== undefined ? { hostname: opts.hostname } : {}),
      ...(opts.user !== undefined ? { user: opts.user } : {}),
      ...(opts.rlimits !== undefined && opts.rlimits.length > 0 ? { rlimits: opts.rlimits } : {}),
      ...(opts.tty !== undefined ? { tty: { cols: opts.tty.cols, rows: opts.tty.rows } } : {}),
    };
    if (opts.tty !== undefined) this.#ttySent = this.#ttyWanted = { cols: opts.tty.cols, rows: opts.tty.rows };
    const collected: { stdout: Buffer[]; stderr: Buffer[] } = { stdout: [], stderr: [] };
    const sink = (which: 'stdout' | 'stderr'): Writable => {
      if (!collect) {
        const p = new PassThrough();
        if (which === 'stdout') this.#stdout = p;
        else this.#stderr = p;
        return p;
      }
      return new Writable({ write(chunk: Buffer, _e, done) { collected[which].push(chunk); done(); } });
    };
    const stdout = opts.stdout ?? sink('stdout');
    const stderr = opts.stderr ?? sink('stderr');
    let stdin = opts.stdin;
    if (stdin === 'pipe') {
      const p = new PassThrough();
      this.#stdin = p;
      stdin = p;
    }
    const common = {
      kernel, initrd, init, stdout, stderr, logger: log,
      ...(opts.cpus !== undefined ? { cpus: opts.cpus } : {}),
      ...(opts.memoryMiB !== undefined ? { memoryMiB: opts.memoryMiB } : {}),
      ...(opts.extraArchives ? { extraArchives: opts.extraArchives } : {}),
      ...(stdin !== undefined ? { stdin } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    };

    // One rate limit per sandbox for every log line the guest can trigger.
    const guestLog = new RateLimitedLog(log);
    const vsockPorts = opts.vsockPorts ?? [];
    checkVsockPorts(vsockPorts);
    if (shares !== null) {
      if (shares.root !== null) init.root = { tag: shares.root.tag, readOnly: shares.root.readOnly };
      if (shares.mounts.length > 0) init.mounts = shares.mounts.map((m) => ({ tag: m.tag, path: m.guestPath, readOnly: m.readOnly }));
    }
    if (opts.binds !== undefined) init.binds = checkGuestBinds(opts.binds);
    if (disks !== null) {
      if (disks.root !== null) init.rootDisk = { device: `/dev/${disks.root.guestDevice}`, fsType: disks.root.fsType, readOnly: disks.root.readOnly };
    }

    const given = opts.network;
    if (given !== undefined && given.mode !== 'passt' && given.mode !== 'gvproxy') checkTsiNetwork(given);
    if (given?.mode === 'passt') checkPasstPolicy(given);
    if (given?.mode === 'gvproxy') checkGvproxyNetwork(given);
    if (decision.engine === 'kvm') await checkKvmUsable(opts.engine === 'kvm', log);
    // The sandbox decides by its own policy copy (setPolicy) and, for the modes that can
    // change ports while running, by a port map it can always add to.
    let network: TsiNetwork | PasstNetwork | GvproxyNetwork | undefined;
    let portMap: PortMap | null = null;
    if (given !== undefined) {
      this.#policy = given.policy.clone();
      if (given.mode === 'passt') {
        network = { ...given, policy: this.#policy };
      } else {
        portMap = given.portMap ?? new PortMap();
        network = { ...given, policy: this.#policy, portMap };
      }
    }
    // Settles when the VM ended, however (result, error, abort): run-time ports stop then.
    let markEnded: () => void = () => { /* replaced below */ };
    const ended = new Promise<void>((resolve) => { markEnded = resolve; this.#abort.signal.addEventListener('abort', () => { resolve(); }); });
    this.#ports = new SandboxPorts(portMap, given === undefined ? 'it has no network' : 'passt fixes its port forwards when it starts (use TSI or gvproxy to publish while running)', ended);

    // The devices are the same for both engines; each engine attaches them its own way
    // (KVM: virtio-mmio in this process; QEMU: vhost-user back ends).
    const vsock = new VsockDevice({ guestCid: 3, queueSize: QEMU_RING_SIZE });
    const bridges: VsockBridge[] = [];
    let net: NetworkSetup | undefined;
    let fs: VirtiofsShares | undefined;
    let blk: DiskBackends | undefined;
    const abort = this.#abort;
    const onUserAbort = (): void => { abort.abort(opts.signal?.reason); };
    const onConnection = (ev: ConnectionEvent): void => { this.emit('connection', ev); };
    if (opts.agent !== false) this.#agent = new AgentClient(vsock, { logger: log, guestLog });
    const cleanup = async (): Promise<void> => {
      this.#agent?.close();
      opts.signal?.removeEventListener('abort', onUserAbort);
      await net?.close();
      await fs?.close();
      await blk?.close();
      await Promise.all(bridges.map((b) => b.close()));
      guestLog.flush();
    };
    // The network process dying mid-run, the caller's signal and stop() all stop the VM
    // (runKvm / runQemu throw the reason).
    opts.signal?.addEventListener('abort', onUserAbort, { once: true });
    if (opts.signal?.aborted === true) onUserAbort();
    let launch: Promise<{ exitCode: number }>;
    try {
      if (network !== undefined) {
        net = await startNetwork(network, vsock, log, guestLog, { onConnection });
        if (net.guest !== undefined) init.net = net.guest;
        void net.failed?.then((err) => {
          log.warn({ event: 'net.failed', code: err.code }, err.message);
          abort.abort(err);
        });
      }
      if (shares !== null) {
        fs = startVirtiofsShares(shares, log);
        void fs.failed.then((err) => {
          log.warn({ event: 'virtiofs.failed', code: err.code }, err.message);
          abort.abort(err);
        });
      }
      if (disks !== null) {
        blk = await startDiskBackends(disks.disks, log);
        void blk.failed.then((err) => {
          log.warn({ event: 'disk.failed', code: err.code }, err.message);
          abort.abort(err);
        });
      }
      const connLog = new ConnectionLog(guestLog, (rec) => { onConnection(Object.assign({ event: 'tsi.connection' as const }, rec)); });
      for (const p of vsockPorts) bridges.push(addVsockPort(vsock, p.port, p.path, p.direction === 'host-to-guest', connLog));
      await Promise.all(bridges.map((b) => b.ready));
      opts.onDevices?.({ vsock });
      if (decision.engine === 'kvm') {
        launch = runKvm({
          ...common, abort: abort.signal, devices: [vsock, ...(net?.devices ?? [])], ...(net?.kernelArgs ? { kernelArgs: net.kernelArgs } : {}),
          balloon: opts.balloon !== false,
          // Shares, then disks in guest order (vda first): virtio-fs takes no vdX name.
          ...(fs || blk ? { vhostUserDevices: [...(fs?.kvmDevices ?? []), ...(blk ? kvmDiskDevices(blk.backends) : [])] } : {}),
        });
      } else {
        const accel = await qemuAccel();
        log.debug({ accel }, 'QEMU accelerator');
        launch = runQemu({
          ...common, accel, abort: abort.signal, devices: [...defaultQemuDevices(vsock), ...(net?.qemuDevices ?? [])],
          ...(net?.kernelArgs ? { kernelArgs: net.kernelArgs } : {}),
          ...(opts.onQemuStart ? { onStart: opts.onQemuStart } : {}),
          extraArgs: [...(fs?.qemuArgs ?? []), ...(opts.balloon !== false ? QEMU_BALLOON_ARGS : []), ...(blk ? qemuDiskArgs(blk.backends) : [])],
          ...(fs || blk ? { modernVirtio: true } : {}),
        });
      }
    } catch (err) {
      this.#running = false;
      markEnded();
      await cleanup();
      if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
        throw new TsiboxError('INVALID_ARGUMENT', `vsockPorts: a unix socket path is already in use: ${(err as Error).message}`, { cause: err });
      }
      throw err;
    }
    this.#exited = (async (): Promise<SandboxResult> => {
      let exitCode: number;
      let stopped = false;
      try {
        ({ exitCode } = await launch);
      } catch (err) {
        if (!(err instanceof StopRequest)) throw err;
        exitCode = 137;
        stopped = true;
      } finally {
        this.#running = false;
        markEnded();
        await cleanup();
        for (const s of [this.#stdout, this.#stderr]) (s as PassThrough | null)?.end();
      }
      const result: SandboxResult = { exitCode, engine: decision.engine, ms: performance.now() - start };
      const sig = exitCode > 128 ? SIGNALS[exitCode - 128] : undefined;
      if (sig !== undefined) result.signal = sig;
      if (stopped || this.#stopRequested) result.stopped = true;
      if (collect && opts.stdout === undefined) result.stdout = Buffer.concat(collected.stdout);
      if (collect && opts.stderr === undefined) result.stderr = Buffer.concat(collected.stderr);
      this.emit('exit', result);
      return result;
    })();
    // A caller of start() who never awaits `exited` must not crash the process with an
    // unhandled rejection; run() and anyone awaiting it still get the error.
    this.#exited.catch(() => { /* seen by whoever awaits exited */ });
  }
}

function checkVsockPorts(ports: readonly VsockPort[]): void {
  const seen = new Set<string>();
  for (const p of ports) {
    if (!Number.isInteger(p.port) || p.port < 0 || p.port >= 0xffff_ffff) throw new TsiboxError('INVALID_ARGUMENT', `vsockPorts: port ${p.port} is not a u32 vsock port`);
    if (typeof p.path !== 'string' || p.path === '') throw new TsiboxError('INVALID_ARGUMENT', `vsockPorts: port ${p.port} needs a unix socket path`);
    const dir = p.direction ?? 'guest-to-host';
    if (dir !== 'guest-to-host' && dir !== 'host-to-guest') throw new TsiboxError('INVALID_ARGUMENT', `vsockPorts: direction ${String(dir)} is not 'guest-to-host' or 'host-to-guest'`);
    const key = `${dir}:${p.port}`;
    if (seen.has(key)) throw new TsiboxError('INVALID_ARGUMENT', `vsockPorts: port ${p.port} (${dir}) is given twice`);
    seen.add(key);
  }
}


/**
 * KVM must run guest ring 0 natively. Deterministic answers (the KVM module) refuse;
 * the timed probe, used only when the module is unknown, never vetoes an explicit
 * `engine: 'kvm'`: it warns.
 */
async function checkKvmUsable(explicit: boolean, log: Logger): Promise<void> {
  const k = kvmKind();
  if (k.kind === 'absent') throw new TsiboxError('ENGINE_UNAVAILABLE', "the KVM engine cannot run here: /dev/kvm does not exist; use engine 'qemu' (or 'auto')");
  if (k.kind === 'pvm' && process.env['TSIBOX_FORCE_KVM'] !== '1') {
    throw new TsiboxError('ENGINE_UNAVAILABLE', "the KVM engine cannot boot Linux here: KVM is kvm_pvm, which emulates guest ring 0; use engine 'qemu' (or 'auto')");
  }
  if (k.kind !== 'unknown') return;
  const { probe, error } = await ring0ProbeOnce();
  if (probe === null) throw new TsiboxError('ENGINE_UNAVAILABLE', `the KVM engine cannot run here: ${error}; use engine 'qemu' (or 'auto')`);
  if (!probe.native) {
    const line = `the ring-0 probe suggests KVM emulates guest ring 0 (CPL0 ${probe.ratio.toFixed(0)}x slower than CPL3); running under KVM anyway${explicit ? ' as asked' : ''}`;
    log.warn({ probe }, line);
  }
}

/** Ring size for vsock: QEMU's virtio-mmio offers 1024 under microvm; our transport takes it too. */
const QEMU_RING_SIZE = 1024;

/** Our devices every QEMU sandbox gets, served over vhost-user (`vsock`: the sandbox's own). */
/** QEMU's own balloon with free page reporting (hw/virtio/virtio-balloon.c); see SandboxOptions.balloon. */
const QEMU_BALLOON_ARGS = ['-device', 'virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on'];

export function defaultQemuDevices(vsock: VsockDevice = new VsockDevice({ guestCid: 3, queueSize: QEMU_RING_SIZE })): VhostUserDeviceSpec[] {
  return [
    // QEMU's vhost-user-rng uses 1024-entry rings.
    { device: new RngDevice({ queueSize: 1024 }), qemuDevice: 'vhost-user-rng', name: 'rng' },
    // QEMU 7.2's vhost-user-vsock-device (hw/virtio/vhost-vsock-common.c) hands only rx
    // and tx to the back end (vhost_vqs[2]: activeQueues 2), keeps the event ring itself
    // and reads guest_cid from our config space (config: true). Its rings are declared
    // with 128 entries (VHOST_VSOCK_QUEUE_SIZE), but under -M microvm QEMU's virtio-mmio
    // reports QueueNumMax 1024 (VIRTQUEUE_MAX_SIZE) and Linux takes it: QEMU sends
    // SET_VRING_NUM 1024, so our rings must allow 1024 (measured; 256 was refused).
    { device: vsock, qemuDevice: 'vhost-user-vsock-device', activeQueues: 2, config: true, name: 'vsock' },
  ];
}
