// passt as the virtio-net frame backend. tsibox starts `passt -f -1 --fd 3` on one end
// of a socketpair (an inherited fd: no socket file, nothing for `nobody` to be
// denied), checks that it answers an ARP request for the gateway, then carries
// frames in passt's "qemu" framing (4-byte big-endian length + Ethernet frame).
//
// Lifetime (src/sys/helper-process.ts): passt exits when its end of the socketpair sees end of stream (`-1`, and
// --fd implies one client), so it dies with us even after a SIGKILL; it also runs
// under `setpriv --pdeathsig KILL` where available (the signal is cleared when passt
// drops to `nobody`, which is why the socket is the real tie), and close() / process
// exit kill it explicitly.
import { isIPv4, Socket } from 'node:net';
import type { Logger } from 'pino';
import { TsiboxError } from '../src/errors.js';
import { findExecutable } from '../src/sys/helper-programs.js';
import { socketPair } from '../src/sys/socket.js';
import { FrameSocketBackend, macBytes, probeArp } from './frame-socket.js';
import { FrameReader } from './frame-stream.js';
import { startHelper, type HelperExit, type HelperProcess } from '../src/sys/helper-process.js';

export const PASST_BINARY = 'passt';
export const PASST_DEBIAN_PACKAGE = 'passt';

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
  readonly backend: FrameSocketBackend;
  readonly pid: number;
  readonly argv: readonly string[];
  /** Resolves when passt has exited. */
  readonly exited: Promise<HelperExit>;
  readonly #helper: HelperProcess;

  /** @internal use startPasst */
  constructor(helper: HelperProcess, backend: FrameSocketBackend) {
    this.#helper = helper;
    this.backend = backend;
    this.pid = helper.pid;
    this.argv = helper.argv;
    this.exited = helper.exited;
  }

  /** What passt printed on stderr (syslog noise removed). */
  get stderr(): string {
    return this.#helper.stderr;
  }

  get running(): boolean {
    return this.#helper.running;
  }

  /** Closes the socket (passt then exits by itself), and kills passt if it lingers. */
  async close(graceMs = 1000): Promise<void> {
    this.backend.close();
    await this.#helper.close(graceMs);
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
  const mac = macBytes(opts.mac, 'passt');
  const [ours, theirs] = socketPair();
  const helper = startHelper({ name: 'passt', argv: [bin, ...args], passFds: [theirs], cleanStderr: cleanPasstStderr, logger: log });
  const sock = new Socket({ fd: ours, readable: true, writable: true });
  sock.on('error', (err) => { log.debug({ err }, 'passt socket error'); });
  const fail = async (what: string): Promise<never> => {
    sock.destroy();
    throw await helper.failure(what, bin);
  };
  // Start-up probe: ARP who-has <gateway> tell <address>; passt answers once it runs.
  const reader = new FrameReader();
  const timeoutMs = opts.startTimeoutMs ?? 5000;
  const answered = await probeArp(sock, reader, { mac, address: opts.address, gateway: opts.gateway, timeoutMs, ended: helper.exited });
  if (answered === 'exit') return fail('ended before it answered the start-up ARP probe');
  if (answered === 'timeout') return fail(`did not answer the start-up ARP probe within ${timeoutMs} ms`);
  if (answered !== 'ok') return fail(answered);
  const backend = new FrameSocketBackend(sock, log, reader, 'passt');
  log.debug({ pid: helper.pid }, 'passt is up');
  return new PasstProcess(helper, backend);
}

/** passt's frame backend: the shared socket backend (kept under its old name). */
export { FrameSocketBackend as PasstBackend, arpRequest } from './frame-socket.js';
