// The public way to run a program in a microVM: `await Sandbox.run({ argv })`.
// Picks the engine (KVM where guest ring 0 runs natively, QEMU otherwise), makes sure
// the guest kernel and default root exist, streams stdio and returns the exit status.
import { Writable, type Readable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { TsiboxError } from './errors.js';
import { ensureInitramfs, ensureKernel, type InitConfig } from './guest/index.js';
import { runKvm } from './engine/kvm.js';
import { runQemu, type VhostUserDeviceSpec } from './engine/qemu.js';
import { chooseEngine, kvmKind, qemuAccel, ring0ProbeOnce, type EngineChoice, type EngineName } from './engine/select.js';
import { RngDevice } from './virtio/rng.js';
import { VsockDevice } from './virtio/vsock/device.js';
import { addVsockPort, type VsockBridge } from '../proxies/unix-bridge.js';
import { ConnectionLog } from '../proxies/log.js';
import { RateLimitedLog } from './log-rate.js';
import { checkPasstPolicy, type PasstNetwork } from './engine/network-passt.js';
import { checkTsiNetwork, type SandboxNetwork } from './engine/network-tsi.js';
import { checkGvproxyNetwork, type GvproxyNetwork } from './engine/network-gvproxy.js';
import { startNetwork, type NetworkSetup } from './engine/network.js';

export type { EngineChoice, EngineName } from './engine/select.js';
export type { PasstNetwork } from './engine/network-passt.js';
export type { GvproxyNetwork } from './engine/network-gvproxy.js';
export type { TsiLimitOptions } from '../proxies/limits.js';
export type { SandboxNetwork } from './engine/network-tsi.js';

export interface SandboxOptions {
  /** The program and its arguments (argv[0] is looked up in PATH when it has no '/'). */
  argv: string[];
  env?: Record<string, string>;
  /** Working directory in the guest (created when missing). */
  workdir?: string;
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
  /** Data for the workload's stdin; it sees end of file afterwards (none: empty stdin). */
  stdin?: Readable | Buffer | string;
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
  network?: SandboxNetwork | PasstNetwork | GvproxyNetwork;
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
}

const SIGNALS: Record<number, NodeJS.Signals> = {
  1: 'SIGHUP', 2: 'SIGINT', 3: 'SIGQUIT', 4: 'SIGILL', 5: 'SIGTRAP', 6: 'SIGABRT', 7: 'SIGBUS', 8: 'SIGFPE', 9: 'SIGKILL',
  10: 'SIGUSR1', 11: 'SIGSEGV', 12: 'SIGUSR2', 13: 'SIGPIPE', 14: 'SIGALRM', 15: 'SIGTERM', 24: 'SIGXCPU', 25: 'SIGXFSZ',
};

let defaultLogger: Logger | undefined;

export class Sandbox {
  private constructor() {}

  static async run(opts: SandboxOptions): Promise<SandboxResult> {
    const start = performance.now();
    if (!Array.isArray(opts.argv) || opts.argv.length === 0) throw new TsiboxError('INVALID_ARGUMENT', 'argv must name a program');
    const log = opts.logger ?? (defaultLogger ??= pino({ name: 'tsibox', level: process.env['TSIBOX_LOG'] ?? 'silent' }));
    const decision = await chooseEngine(opts.engine ?? 'auto');
    log.info({ engine: decision.engine, reason: decision.reason }, `engine ${decision.engine}: ${decision.reason}`);

    const kernel = opts.kernel ?? (await ensureKernel({ onProgress: (l) => { log.info(l); } })).bzImage;
    const initrd = opts.initrd ?? await ensureInitramfs({ onProgress: (l) => { log.info(l); } });
    const init: InitConfig = {
      argv: opts.argv,
      ...(opts.env ? { env: opts.env } : {}),
      ...(opts.workdir !== undefined ? { workdir: opts.workdir } : {}),
    };
    const collected: { stdout: Buffer[]; stderr: Buffer[] } = { stdout: [], stderr: [] };
    const sink = (which: 'stdout' | 'stderr'): Writable => {
      return new Writable({ write(chunk: Buffer, _e, done) { collected[which].push(chunk); done(); } });
    };
    const stdout = opts.stdout ?? sink('stdout');
    const stderr = opts.stderr ?? sink('stderr');
    const common = {
      kernel, initrd, init, stdout, stderr, logger: log,
      ...(opts.cpus !== undefined ? { cpus: opts.cpus } : {}),
      ...(opts.memoryMiB !== undefined ? { memoryMiB: opts.memoryMiB } : {}),
      ...(opts.extraArchives ? { extraArchives: opts.extraArchives } : {}),
      ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}),
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
    };

    // One rate limit per sandbox for every log line the guest can trigger.
    const guestLog = new RateLimitedLog(log);
    const vsockPorts = opts.vsockPorts ?? [];
    checkVsockPorts(vsockPorts);

    let exitCode: number;
    const network = opts.network;
    if (network !== undefined && network.mode !== 'passt' && network.mode !== 'gvproxy') checkTsiNetwork(network);
    if (network?.mode === 'passt') checkPasstPolicy(network);
    if (network?.mode === 'gvproxy') checkGvproxyNetwork(network);
    if (decision.engine === 'kvm') await checkKvmUsable(opts.engine === 'kvm', log);

    // The devices are the same for both engines; each engine attaches them its own way
    // (KVM: virtio-mmio in this process; QEMU: vhost-user back ends).
    const vsock = new VsockDevice({ guestCid: 3, queueSize: QEMU_RING_SIZE });
    const bridges: VsockBridge[] = [];
    let net: NetworkSetup | undefined;
    // The network process dying mid-run stops the VM (runKvm / runQemu throw the reason).
    const abort = new AbortController();
    const onUserAbort = (): void => { abort.abort(opts.signal?.reason); };
    opts.signal?.addEventListener('abort', onUserAbort, { once: true });
    if (opts.signal?.aborted === true) onUserAbort();
    try {
      if (network !== undefined) {
        net = await startNetwork(network, vsock, log, guestLog);
        if (net.guest !== undefined) init.net = net.guest;
        void net.failed?.then((err) => {
          log.warn({ event: 'net.failed', code: err.code }, err.message);
          abort.abort(err);
        });
      }
      const connLog = new ConnectionLog(guestLog);
      for (const p of vsockPorts) bridges.push(addVsockPort(vsock, p.port, p.path, p.direction === 'host-to-guest', connLog));
      await Promise.all(bridges.map((b) => b.ready));
      opts.onDevices?.({ vsock });
      if (decision.engine === 'kvm') {
        ({ exitCode } = await runKvm({
          ...common, abort: abort.signal, devices: [vsock, ...(net?.devices ?? [])], ...(net?.kernelArgs ? { kernelArgs: net.kernelArgs } : {}),
        }));
      } else {
        const accel = await qemuAccel();
        log.debug({ accel }, 'QEMU accelerator');
        ({ exitCode } = await runQemu({
          ...common, accel, abort: abort.signal, devices: [...defaultQemuDevices(vsock), ...(net?.qemuDevices ?? [])],
          ...(net?.kernelArgs ? { kernelArgs: net.kernelArgs } : {}),
          ...(opts.onQemuStart ? { onStart: opts.onQemuStart } : {}),
        }));
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
        throw new TsiboxError('INVALID_ARGUMENT', `vsockPorts: a unix socket path is already in use: ${(err as Error).message}`, { cause: err });
      }
      throw err;
    } finally {
      opts.signal?.removeEventListener('abort', onUserAbort);
      await net?.close();
      await Promise.all(bridges.map((b) => b.close()));
      guestLog.flush();
    }
    const result: SandboxResult = { exitCode, engine: decision.engine, ms: performance.now() - start };
    const sig = exitCode > 128 ? SIGNALS[exitCode - 128] : undefined;
    if (sig !== undefined) result.signal = sig;
    if (opts.stdout === undefined) result.stdout = Buffer.concat(collected.stdout);
    if (opts.stderr === undefined) result.stderr = Buffer.concat(collected.stderr);
    return result;
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
