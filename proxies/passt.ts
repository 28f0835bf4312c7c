// passt as the virtio-net frame backend. tsibox starts `passt -f -1 --fd 3` on one end
// of a socketpair (an inherited fd: no socket file, nothing for `nobody` to be
// denied), checks that it answers an ARP request for the gateway, then carries
// frames in passt's "qemu" framing (4-byte big-endian length + Ethernet frame).
//
// Lifetime: passt exits when its end of the socketpair sees end of stream (`-1`, and
// --fd implies one client), so it dies with us even after a SIGKILL; it also runs
// under `setpriv --pdeathsig KILL` where available (the signal is cleared when passt
// drops to `nobody`, which is why the socket is the real tie), and close() / process
// exit kill it explicitly.
import { spawn, type ChildProcess } from 'node:child_process';
import { isIPv4, Socket } from 'node:net';
import type { Logger } from 'pino';
import { TsiboxError } from '../src/errors.js';
import { closeFd } from '../src/sys/libc.js';
import { parentDeathWrapper, killOnExit, findExecutable } from '../src/sys/helper-programs.js';
import { socketPair } from '../src/sys/socket.js';
import type { FrameBackend, FramePort } from '../src/virtio/net/backend.js';
import { encodeFrame, FrameReader, FramingError } from './frame-stream.js';

export const PASST_BINARY = 'passt';
export const PASST_DEBIAN_PACKAGE = 'passt';
const STDERR_KEEP = 16 * 1024;

export interface PasstOptions {
  /** The guest's IPv4 address, prefix length and gateway (passt -a, -n, -g). */
  address: string;
  prefix: number;
  gateway: string;
  /** DNS servers passt announces (-D); none given: `-D` is not passed. */
  dns?: string[];
  /** An address whose DNS queries passt forwards to the host's resolver (--dns-forward). */
  dnsForward?: string;
  /** The guest's MAC (used as the source of the start-up ARP probe). */
  mac: string;
  /** Host ports forwarded to the guest: passt -t / -u specs ('8080:80', '5000-5010'). */
  tcpForwards?: string[];
  udpForwards?: string[];
  /** Write tap-side traffic to this pcap file (passt -p; it must be writable by passt's user). */
  pcap?: string;
  /** Map the gateway address to the host's loopback (passt's default; false: --no-map-gw). */
  mapGateway?: boolean;
  /** passt binary (default: $TSIBOX_PASST, else `passt` from PATH). */
  binary?: string;
  /** How long passt may take to answer the start-up ARP probe (default 5000 ms). */
  startTimeoutMs?: number;
  logger: Logger;
}

/** Where passt is, or undefined. */
export function findPasst(binary?: string): string | undefined {
  return findExecutable(PASST_BINARY, 'TSIBOX_PASST', binary);
}

/** The passt argv (after the binary) for these options. */
export function passtArgs(opts: Omit<PasstOptions, 'logger' | 'mac'>, fd: number): string[] {
  checkIPv4('address', opts.address);
  checkIPv4('gateway', opts.gateway);
  if (!Number.isInteger(opts.prefix) || opts.prefix < 1 || opts.prefix > 30) {
    throw new TsiboxError('INVALID_ARGUMENT', `passt: prefix ${opts.prefix} is not 1..30`);
  }
  if (opts.address === opts.gateway) throw new TsiboxError('INVALID_ARGUMENT', 'passt: the guest address and the gateway are the same');
  const args = ['-f', '-1', '--fd', String(fd), '-4', '-a', opts.address, '-n', String(opts.prefix), '-g', opts.gateway];
  for (const d of opts.dns ?? []) {
    checkIPv4('dns', d);
    args.push('-D', d);
  }
  if (opts.dnsForward !== undefined) {
    checkIPv4('dnsForward', opts.dnsForward);
    args.push('--dns-forward', opts.dnsForward);
  }
  if (opts.mapGateway === false) args.push('--no-map-gw');
  for (const [flag, specs] of [['-t', opts.tcpForwards], ['-u', opts.udpForwards]] as const) {
    for (const s of specs ?? []) {
      if (typeof s !== 'string' || !/^[0-9A-Za-z.:,~%/\-[\]]+$/.test(s) || s.startsWith('-')) {
        throw new TsiboxError('INVALID_ARGUMENT', `passt: forward spec ${JSON.stringify(s)} is not like 8080:80 or 5000-5010`);
      }
      args.push(flag, s);
    }
  }
  if (opts.pcap !== undefined) args.push('-p', opts.pcap);
  return args;
}

function checkIPv4(what: string, a: string): void {
  if (typeof a !== 'string' || !isIPv4(a)) throw new TsiboxError('INVALID_ARGUMENT', `passt: ${what} ${JSON.stringify(a)} is not an IPv4 address`);
}

/** passt's stderr without the noise it prints when there is no syslog. */
export function cleanPasstStderr(text: string): string {
  return text.split('\n').filter((l) => l.trim() !== '' && !/^Failed to send \d+ bytes to syslog/.test(l)).join('\n');
}

/** A running passt and the frame backend on its socket. */
export class PasstProcess {
  readonly backend: PasstBackend;
  readonly pid: number;
  readonly argv: readonly string[];
  /** Resolves when passt has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly #child: ChildProcess;
  readonly #stderr: () => string;

  /** @internal use startPasst */
  constructor(child: ChildProcess, backend: PasstBackend, argv: string[], exited: PasstProcess['exited'], stderr: () => string) {
    this.#child = child;
    this.backend = backend;
    this.pid = child.pid!;
    this.argv = argv;
    this.exited = exited;
    this.#stderr = stderr;
  }

  /** What passt printed on stderr (syslog noise removed). */
  get stderr(): string {
    return cleanPasstStderr(this.#stderr());
  }

  get running(): boolean {
    return this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** Closes the socket (passt then exits by itself), and kills passt if it lingers. */
  async close(graceMs = 1000): Promise<void> {
    this.backend.close();
    if (!this.running) {
      await this.exited;
      return;
    }
    const timer = setTimeout(() => { this.#child.kill('SIGKILL'); }, graceMs);
    try {
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }
}

/**
 * Starts passt for one guest. Resolves once passt answered an ARP request for the
 * gateway through the socket; throws TsiboxError when passt is missing, exits, or
 * does not answer in time (with what it printed on stderr).
 */
export async function startPasst(opts: PasstOptions): Promise<PasstProcess> {
  const bin = findPasst(opts.binary);
  if (bin === undefined) {
    throw new TsiboxError('ENGINE_UNAVAILABLE',
      `${opts.binary ?? PASST_BINARY} was not found${opts.binary === undefined ? ' in PATH' : ''}; network mode 'passt' needs it (Debian/Ubuntu: apt-get install ${PASST_DEBIAN_PACKAGE})`);
  }
  const log = opts.logger;
  const args = passtArgs(opts, 3);
  const mac = parseMacBytes(opts.mac);
  const [ours, theirs] = socketPair();
  const wrapper = parentDeathWrapper();
  const argv = [...(wrapper ?? []), bin, ...args];
  log.debug({ argv }, 'starting passt');
  let child: ChildProcess;
  try {
    child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe', theirs] });
  } finally {
    closeFd(theirs);
  }
  killOnExit(child);
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr = (stderr + d).slice(-STDERR_KEEP); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('error', (err) => {
      stderr += `\n${err.message}`;
      resolve({ code: null, signal: null });
    });
    child.once('close', (code, signal) => {
      log.debug({ code, signal }, 'passt exited');
      resolve({ code, signal });
    });
  });
  const sock = new Socket({ fd: ours, readable: true, writable: true });
  sock.on('error', (err) => { log.debug({ err }, 'passt socket error'); });

  const fail = async (what: string): Promise<never> => {
    sock.destroy();
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    const ex = await exited;
    const how = ex.signal !== null ? `was killed by ${ex.signal}` : ex.code !== null ? `exited with status ${ex.code}` : 'could not be started';
    const err = cleanPasstStderr(stderr).trim();
    throw new TsiboxError('DEVICE_ERROR', `passt ${what} (${bin} ${how})${err ? `; its stderr:\n${err}` : ''}`);
  };

  // Start-up probe: ARP who-has <gateway> tell <address>; passt answers once it runs.
  const probe = arpRequest(mac, opts.address, opts.gateway);
  const reader = new FrameReader();
  const answered = await new Promise<'ok' | 'exit' | 'timeout' | string>((resolve) => {
    const timer = setTimeout(() => { done('timeout'); }, opts.startTimeoutMs ?? 5000);
    const onData = (chunk: Buffer): void => {
      let frames: Buffer[];
      try {
        frames = reader.feed(chunk);
      } catch (err) {
        done(`broke the framing: ${(err as Error).message}`);
        return;
      }
      if (frames.some((f) => isArpReplyFrom(f, opts.gateway))) done('ok');
    };
    const onExit = (): void => { done('exit'); };
    const onClose = (): void => { done('exit'); };
    function done(r: string): void {
      clearTimeout(timer);
      sock.pause(); // later frames wait for the device (attach resumes)
      sock.off('data', onData);
      sock.off('close', onClose);
      child.off('close', onExit);
      resolve(r);
    }
    sock.on('data', onData);
    sock.once('close', onClose);
    child.once('close', onExit);
    sock.write(encodeFrame(probe));
  });
  if (answered === 'exit') return fail('ended before it answered the start-up ARP probe');
  if (answered === 'timeout') return fail(`did not answer the start-up ARP probe within ${opts.startTimeoutMs ?? 5000} ms`);
  if (answered !== 'ok') return fail(answered);
  const backend = new PasstBackend(sock, log, reader);
  log.debug({ pid: child.pid }, 'passt is up');
  return new PasstProcess(child, backend, argv, exited, () => stderr);
}

/** FrameBackend over passt's socket. */
export class PasstBackend implements FrameBackend {
  readonly #sock: Socket;
  readonly #log: Logger;
  readonly #reader: FrameReader;
  #port: FramePort | null = null;
  #closed = false;
  #paused = false;
  #waitingDrain = false;
  framesIn = 0;
  framesOut = 0;

  /** Takes a connected socket (paused); frames flow once attached. */
  constructor(sock: Socket, log: Logger, reader = new FrameReader()) {
    this.#sock = sock;
    this.#log = log;
    this.#reader = reader;
  }

  attach(port: FramePort): void {
    if (this.#port !== null) throw new TsiboxError('INVALID_STATE', 'passt backend is already attached');
    this.#port = port;
    this.#sock.on('data', (chunk: Buffer) => { this.#onData(chunk); });
    this.#sock.once('close', () => { this.#end(null); });
    this.#sock.on('drain', () => {
      if (!this.#waitingDrain) return;
      this.#waitingDrain = false;
      this.#port?.writable();
    });
    if (!this.#paused) this.#sock.resume();
  }

  #onData(chunk: Buffer): void {
    let frames: Buffer[];
    try {
      frames = this.#reader.feed(chunk);
    } catch (err) {
      if (!(err instanceof FramingError)) throw err;
      this.#log.warn({ reason: err.message }, 'passt broke the frame stream: closing it');
      this.#end(err.message);
      return;
    }
    for (const f of frames) {
      this.framesIn++;
      this.#port?.deliver(f);
    }
  }

  #end(reason: string | null): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#sock.destroy();
    this.#port?.closed(reason);
  }

  send(frame: Uint8Array): boolean {
    if (this.#closed) return true;
    this.framesOut++;
    const ok = this.#sock.write(encodeFrame(frame));
    if (!ok) this.#waitingDrain = true;
    return ok;
  }

  pause(): void {
    this.#paused = true;
    this.#sock.pause();
  }

  resume(): void {
    this.#paused = false;
    if (this.#port !== null && !this.#closed) this.#sock.resume();
  }

  close(): void {
    this.#end(null);
  }
}

function parseMacBytes(mac: string): Uint8Array {
  const m = /^([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2}):([0-9a-f]{2})$/i.exec(mac);
  if (m === null) throw new TsiboxError('INVALID_ARGUMENT', `passt: MAC ${JSON.stringify(mac)} is not aa:bb:cc:dd:ee:ff`);
  return Uint8Array.from(m.slice(1).map((h) => parseInt(h, 16)));
}

function ipBytes(a: string): number[] {
  return a.split('.').map(Number);
}

/** An Ethernet ARP request "who has `target`? tell `sender`" from `mac`. */
export function arpRequest(mac: Uint8Array, sender: string, target: string): Buffer {
  const f = Buffer.alloc(42);
  f.fill(0xff, 0, 6);
  f.set(mac, 6);
  f.writeUInt16BE(0x0806, 12);
  f.writeUInt16BE(1, 14); // Ethernet
  f.writeUInt16BE(0x0800, 16); // IPv4
  f[18] = 6;
  f[19] = 4;
  f.writeUInt16BE(1, 20); // request
  f.set(mac, 22);
  f.set(ipBytes(sender), 28);
  f.set(ipBytes(target), 38);
  return f;
}

function isArpReplyFrom(f: Buffer, ip: string): boolean {
  if (f.length < 42 || f.readUInt16BE(12) !== 0x0806 || f.readUInt16BE(20) !== 2) return false;
  const want = ipBytes(ip);
  return want.every((b, i) => f[28 + i] === b);
}
