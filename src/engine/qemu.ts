// The QEMU engine: runs the guest under `qemu-system-x86_64 -M microvm` (TCG, or KVM
// where ring 0 runs natively) with shared memfd RAM, our kernel + initramfs and init's
// command-line contract, QEMU's own virtio-serial ports for the workload's stdio and
// exit status, and our devices served over vhost-user.
//
// Every channel to QEMU is one end of a socketpair handed to it as an inherited fd
// (`-chardev socket,fd=N`): there is no socket file to clean up and nothing to connect
// to. QEMU runs under `setpriv --pdeathsig KILL`, so it dies with the host process
// even when that is SIGKILLed; a normal exit, error or timeout kills it explicitly.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Socket } from 'node:net';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { TsiboxError } from '../errors.js';
import {
  parseStatusMarker, parseStatusPort, PORT_STATUS, PORT_STDERR, PORT_STDIN, PORT_STDOUT, type InitConfig,
} from '../guest/cmdline.js';
import { bootArguments, feedStdin, POWEROFF_GRACE_MS, type GuestRunOptions } from './guest-boot.js';
import { closeFd } from '../sys/libc.js';
import { parentDeathWrapper, killOnExit, findExecutable } from '../sys/helper-programs.js';
import { memfdCreate, socketPair } from '../sys/socket.js';
import { UnixListener } from '../sys/unix-listen.js';
import type { VirtioDevice } from '../virtio/device.js';
import { VhostUserConnection } from './vhost-user/backend/connection.js';

export const QEMU_BINARY = 'qemu-system-x86_64';
export const QEMU_DEBIAN_PACKAGE = 'qemu-system-x86';
/** Kernel options under QEMU microvm: 8250 console, triple-fault reboot (with -no-reboot QEMU exits). */
export const QEMU_BASE_CMDLINE = 'console=ttyS0 reboot=t panic=-1 quiet';
const CONSOLE_KEEP = 64 * 1024;

/** A device of ours that QEMU reaches over vhost-user. */
export interface VhostUserDeviceSpec {
  device: VirtioDevice;
  /** The QEMU device model: e.g. 'vhost-user-rng', 'vhost-user-vsock-device'. */
  qemuDevice: string;
  /** Extra `,key=value` properties for the -device option. */
  qemuProps?: string;
  /** Rings QEMU hands to the back end (default all the device has). */
  activeQueues?: number;
  /** Serve GET/SET_CONFIG (the front end reads the device's config space from us). */
  config?: boolean;
  name?: string;
  /**
   * QEMU options for this device given its chardev id, instead of
   * `-device <qemuDevice>,chardev=<id><qemuProps>` (vhost-user-net is a -netdev plus a -device).
   */
  qemuArgs?: (chardev: string) => string[];
  /**
   * Reach QEMU through a unix socket path (in a private temporary directory, removed
   * once QEMU connected) instead of an inherited socketpair end: QEMU 7.2's
   * `-netdev vhost-user` refuses `fd=` chardevs ("does not support FD passing").
   */
  socketPath?: boolean;
}

export interface QemuRunOptions extends GuestRunOptions {
  accel?: 'tcg' | 'kvm';
  devices?: VhostUserDeviceSpec[];
  /** Called with QEMU's pid once it started (tests). */
  onStart?: (pid: number) => void;
  /** Without our stdio/status ports and vhost-user devices (the bench baseline). */
  plain?: boolean;
  /** More QEMU options, as they are (e.g. virtiofsd's `-chardev socket,path=` + `-device vhost-user-fs-device`). */
  extraArgs?: readonly string[];
  /**
   * Modern (virtio 1.x) virtio-mmio transports for every device: microvm's default is
   * legacy, which libvhost-user back ends (virtiofsd, qemu-storage-daemon) refuse
   * ("virtio legacy devices aren't supported"). Set when any such back end is attached.
   */
  modernVirtio?: boolean;
}

export interface QemuRunResult {
  /** The workload's status as init reported it. */
  exitCode: number;
  /** The guest's serial console (last 64 KiB). */
  console: string;
  /** ms from spawn to QEMU's exit. */
  ms: number;
}

/** Where qemu-system-x86_64 is, or undefined. */
export function findQemu(): string | undefined {
  return findExecutable(QEMU_BINARY, 'TSIBOX_QEMU');
}

export function requireQemu(): string {
  const q = findQemu();
  if (q === undefined) {
    throw new TsiboxError('ENGINE_UNAVAILABLE',
      `${QEMU_BINARY} was not found in PATH; install it (Debian/Ubuntu: apt-get install ${QEMU_DEBIAN_PACKAGE})`);
  }
  return q;
}

interface Port {
  name: string;
  ours: Socket;
}

/** Runs one guest to completion under QEMU. */
export async function runQemu(opts: QemuRunOptions): Promise<QemuRunResult> {
  const qemu = requireQemu();
  const log = opts.logger;
  const memoryMiB = opts.memoryMiB ?? 256;
  const cpus = opts.cpus ?? 1;
  const accel = opts.accel ?? 'tcg';
  const plain = opts.plain === true;
  const devices = plain ? [] : (opts.devices ?? []);

  // Descriptors the child inherits, in order from fd 3; we close our copies after spawn.
  const childFds: number[] = [];
  const closeAfterSpawn: number[] = [];
  const cleanups: Array<() => void> = [];
  const passFd = (fd: number): number => {
    childFds.push(fd);
    closeAfterSpawn.push(fd);
    return 2 + childFds.length;
  };

  const args = [
    '-M', `microvm,x-option-roms=off,isa-serial=on,acpi=off,memory-backend=mem`,
    '-accel', accel, ...(accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-m', `${memoryMiB}M`, '-smp', String(cpus),
    // seal=on (QEMU's default, said here because our vhost-user back ends refuse RAM
    // whose memfd is not sealed against shrinking: see vhost-user/backend/memory.ts).
    '-object', `memory-backend-memfd,id=mem,size=${memoryMiB}M,share=on,seal=on`,
    '-serial', 'stdio',
    '-kernel', opts.kernel,
  ];

  const ports: Port[] = [];
  const init: InitConfig = { ...opts.init };
  try {
    if (!plain) {
      const names = [PORT_STDIN, PORT_STDOUT, PORT_STDERR, PORT_STATUS];
      args.push('-device', 'virtio-serial-device,max_ports=8');
      names.forEach((name, i) => {
        const [ours, theirs] = socketPair();
        const sock = new Socket({ fd: ours, readable: true, writable: true });
        sock.on('error', (err) => { log.debug({ err, port: name }, 'console port socket error'); });
        ports.push({ name, ours: sock });
        cleanups.push(() => { sock.destroy(); });
        const n = passFd(theirs);
        args.push('-chardev', `socket,id=port${i},fd=${n}`, '-device', `virtserialport,chardev=port${i},name=${name}`);
      });
      init.ports = [...(init.ports ?? []), ...names];
    }

    const connections: VhostUserConnection[] = [];
    devices.forEach((d, i) => {
      const connOpts = {
        device: d.device, logger: log, name: d.name ?? d.qemuDevice,
        ...(d.activeQueues === undefined ? {} : { activeQueues: d.activeQueues }),
        ...(d.config === undefined ? {} : { config: d.config }),
      };
      if (d.socketPath === true) {
        // A private directory only we (and QEMU, same user) can enter; QEMU connects at start.
        const dir = mkdtempSync(join(tmpdir(), 'tsibox-vu-'));
        const listener = UnixListener.listen(join(dir, `${d.name ?? 'device'}.sock`));
        let conn: VhostUserConnection | null = null;
        let closed = false;
        void listener.acceptOnce().then((fd) => {
          listener.close();
          rmSync(dir, { recursive: true, force: true });
          if (closed) { closeFd(fd); return; }
          conn = new VhostUserConnection(fd, connOpts);
          connections.push(conn);
        });
        cleanups.push(() => {
          closed = true;
          conn?.close();
          listener.close();
          rmSync(dir, { recursive: true, force: true });
        });
        args.push('-chardev', `socket,id=vu${i},path=${listener.path}`);
      } else {
        const [ours, theirs] = socketPair();
        const conn = new VhostUserConnection(ours, connOpts);
        connections.push(conn);
        cleanups.push(() => { conn.close(); });
        const n = passFd(theirs);
        args.push('-chardev', `socket,id=vu${i},fd=${n}`);
      }
      if (d.qemuArgs !== undefined) args.push(...d.qemuArgs(`vu${i}`));
      else args.push('-device', `${d.qemuDevice},chardev=vu${i}${d.qemuProps ?? ''}`);
    });

    // The initramfs (with extra archives, and init's description when it is too long
    // for the command line) goes in a memfd QEMU reads.
    const boot = bootArguments([QEMU_BASE_CMDLINE, ...(opts.kernelArgs ?? [])].join(' '), init, opts.initrd, opts.extraArchives);
    const cmdline = boot.cmdline;
    if (boot.initrd === null) {
      args.push('-initrd', opts.initrd);
    } else {
      const image = boot.initrd;
      const fd = memfdCreate('tsibox-initrd', image.length);
      let off = 0;
      while (off < image.length) off += writeSync(fd, image, off, image.length - off, off);
      args.push('-initrd', `/dev/fd/${passFd(fd)}`);
    }
    args.push('-append', cmdline);
    if (!plain) args.push(...(opts.extraArgs ?? []));
    if (opts.modernVirtio === true) args.push('-global', 'virtio-mmio.force-legacy=false');

    const wrapper = parentDeathWrapper();
    if (wrapper === null) log.warn('setpriv --pdeathsig is not available: QEMU will not be killed if this process is SIGKILLed');
    const argv = [...(wrapper ?? []), qemu, ...args];
    log.debug({ argv }, 'starting QEMU');
    const start = performance.now();
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe', ...childFds] });
    killOnExit(child);
    for (const fd of closeAfterSpawn) closeFd(fd);
    closeAfterSpawn.length = 0;
    if (child.pid !== undefined) opts.onStart?.(child.pid);

    let consoleText = '';
    let qemuStderr = '';
    child.stdout!.setEncoding('latin1').on('data', (d: string) => {
      consoleText = (consoleText + d).slice(-CONSOLE_KEEP);
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      qemuStderr = (qemuStderr + d).slice(-CONSOLE_KEEP);
    });

    // stdio ports
    const port = (name: string): Socket => ports.find((p) => p.name === name)!.ours;
    let statusText = '';
    let poweroffTimer: NodeJS.Timeout | null = null;
    let poweroffForced = false;
    const drained: Array<Promise<void>> = [];
    const stdinSrc = opts.stdin;
    let unpipeStdin = (): void => {};
    if (!plain) {
      const stdinSock = port(PORT_STDIN);
      stdinSock.resume(); // the guest never writes here; keep the socket from stalling
      unpipeStdin = feedStdin(stdinSrc, stdinSock);
      const sink = (name: string, out: Writable | undefined): void => {
        const s = port(name);
        drained.push(new Promise((resolve) => { s.once('close', () => { resolve(); }); }));
        if (out !== undefined) s.pipe(out, { end: false });
        else s.resume();
      };
      sink(PORT_STDOUT, opts.stdout);
      sink(PORT_STDERR, opts.stderr);
      const status = port(PORT_STATUS);
      status.setEncoding('latin1').on('data', (d: string) => {
        statusText += d;
        // Reported: the VM gets POWEROFF_GRACE_MS to end by itself.
        if (poweroffTimer === null && parseStatusPort(statusText) !== undefined) {
          poweroffTimer = setTimeout(() => {
            poweroffForced = true;
            child.kill('SIGKILL');
          }, POWEROFF_GRACE_MS);
        }
      });
      drained.push(new Promise((resolve) => { status.once('close', () => { resolve(); }); }));
    }

    let timedOut = false;
    const timer = opts.timeoutMs === undefined ? null : setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);

    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
      child.once('error', (err) => { reject(err); });
      child.once('close', (code, signal) => { resolve({ code, signal }); });
    });
    const onAbort = (): void => { child.kill('SIGKILL'); };
    opts.abort?.addEventListener('abort', onAbort, { once: true });
    if (opts.abort?.aborted === true) onAbort();
    let exit;
    try {
      exit = await exited;
    } catch (err) {
      throw new TsiboxError('ENGINE_UNAVAILABLE', `cannot start ${argv[0]}: ${(err as Error).message}`, { cause: err });
    } finally {
      if (timer !== null) clearTimeout(timer);
      if (poweroffTimer !== null) clearTimeout(poweroffTimer);
      opts.abort?.removeEventListener('abort', onAbort);
    }
    if (poweroffForced) {
      log.warn({ event: 'vm.poweroff_forced', graceMs: POWEROFF_GRACE_MS }, `the guest reported its exit status but did not end within ${POWEROFF_GRACE_MS} ms; QEMU was killed`);
    }
    const ms = performance.now() - start;
    unpipeStdin();
    if (opts.abort?.aborted === true) throw opts.abort.reason;
    // QEMU is gone, so every port socket sees end of stream; wait until what it wrote is read.
    await Promise.race([Promise.all(drained), new Promise((r) => setTimeout(r, 2000).unref())]);

    if (timedOut) {
      throw new TsiboxError('VM_TIMEOUT', `the sandbox did not finish within ${opts.timeoutMs} ms; console:\n${tail(consoleText)}`);
    }
    const fromPort = parseStatusPort(statusText);
    const exitCode = fromPort ?? parseStatusMarker(consoleText);
    if (exitCode === undefined) {
      const how = exit.signal !== null ? `was killed by ${exit.signal}` : `exited with status ${exit.code}`;
      const qmsg = qemuStderr.trim();
      if (exit.code !== 0 && qmsg !== '') {
        throw new TsiboxError('VM_ERROR', `${QEMU_BINARY} ${how}: ${qmsg}`);
      }
      throw new TsiboxError('VM_ERROR', `the guest ended without reporting an exit status (QEMU ${how})${qmsg ? `: ${qmsg}` : ''}; console:\n${tail(consoleText)}`);
    }
    if (fromPort === undefined) log.debug('status port was empty: used the console marker');
    return { exitCode, console: consoleText, ms };
  } finally {
    for (const fd of closeAfterSpawn) closeFd(fd);
    for (const c of cleanups.reverse()) {
      try {
        c();
      } catch {
        // best effort
      }
    }
  }
}

function tail(text: string): string {
  return text.split('\n').slice(-30).join('\n');
}
