// gvproxy (containers/gvisor-tap-vsock) as the virtio-net frame backend. tsibox runs
//   gvproxy -listen-qemu unix://DIR/qemu.sock -listen unix://DIR/api.sock -ssh-port -1 -mtu 1500
// in a private directory (mode 0700), connects to the qemu socket (passt's framing:
// 4-byte big-endian length + Ethernet frame, frame-stream.ts), checks that the gateway
// answers an ARP request, and talks to the API socket with undici (gvproxy-api.ts).
//
// gvproxy 0.8.1's fixed network: 192.168.127.0/24, gateway, DHCP and DNS 192.168.127.1
// (its HTTP API is ALSO served there on port 80), the guest 192.168.127.2 by a static
// lease for MAC 5a:94:ef:e4:0c:ee, 192.168.127.254 NATed to the host's 127.0.0.1, MTU
// 1500, IPv4 only. `-ssh-port -1` turns off the host listener on 2222 it opens by default.
//
// Lifetime (src/sys/helper-process.ts): gvproxy exits when our qemu-socket connection ends (it
// removes its sockets then); it runs under a keeper that removes the directory and
// stops gvproxy when our pipe ends, so after a SIGKILL of Node nothing stays behind.
import { mkdtempSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { TsiboxError } from '../src/errors.js';
import { findExecutable } from '../src/sys/helper-programs.js';
import { FrameSocketBackend, macBytes, probeArp } from './frame-socket.js';
import { FrameReader } from './frame-stream.js';
import { GvproxyApi } from './gvproxy-api.js';
import { startHelper, type HelperExit, type HelperProcess } from '../src/sys/helper-process.js';

export const GVPROXY_BINARY = 'gvproxy';
export const GVPROXY_DEBIAN_PACKAGE = 'gvproxy (Debian 13 "trixie"; scripts/install-guest-deps.sh pins it in on Debian 12)';

/** gvproxy's built-in network (not configurable from its command line). */
export const GVPROXY_NET = {
  subnet: '192.168.127.0/24',
  prefix: 24,
  gateway: '192.168.127.1',
  /** Answers DNS on the gateway, port 53 (its own zone, then the host's resolver). */
  dns: '192.168.127.1',
  /** The address its DHCP server leases to GVPROXY_NET.mac. */
  guest: '192.168.127.2',
  mac: '5a:94:ef:e4:0c:ee',
  /** NATed to the host's 127.0.0.1 ('host.containers.internal' in its DNS zone). */
  hostAlias: '192.168.127.254',
  /** Its HTTP API is served to the guest too, at http://192.168.127.1:80. */
  apiPort: 80,
  mtu: 1500,
} as const;

export interface GvproxyOptions {
  /** The guest's MAC (default GVPROXY_NET.mac, which gets GVPROXY_NET.guest by DHCP). */
  mac?: string;
  /** gvproxy binary (default: $TSIBOX_GVPROXY, else `gvproxy` from PATH). */
  binary?: string;
  /** Parent of the private directory (default os.tmpdir()). */
  runtimeDir?: string;
  /** How long gvproxy may take to listen and answer the ARP probe (default 10000 ms). */
  startTimeoutMs?: number;
  /** Pass -debug to gvproxy (its stderr is kept, see GvproxyProcess.stderr). */
  debug?: boolean;
  logger: Logger;
}

/** Where gvproxy is, or undefined. */
export function findGvproxy(binary?: string): string | undefined {
  return findExecutable(GVPROXY_BINARY, 'TSIBOX_GVPROXY', binary);
}

/** The gvproxy argv (after the binary) for sockets in `dir`. */
export function gvproxyArgs(dir: string, debug = false): string[] {
  return [
    '-listen-qemu', `unix://${join(dir, 'qemu.sock')}`,
    '-listen', `unix://${join(dir, 'api.sock')}`,
    '-ssh-port', '-1',
    '-mtu', String(GVPROXY_NET.mtu),
    ...(debug ? ['-debug'] : []),
  ];
}

/** A running gvproxy: its frame backend and its API. */
export class GvproxyProcess {
  readonly backend: FrameSocketBackend;
  readonly api: GvproxyApi;
  readonly pid: number;
  readonly argv: readonly string[];
  /** The private directory holding its sockets (gone once it has exited). */
  readonly dir: string;
  /** Resolves when gvproxy (and its keeper) have exited. */
  readonly exited: Promise<HelperExit>;
  readonly #helper: HelperProcess;
  #closing = false;

  /** @internal use startGvproxy */
  constructor(helper: HelperProcess, backend: FrameSocketBackend, api: GvproxyApi, dir: string) {
    this.#helper = helper;
    this.backend = backend;
    this.api = api;
    this.pid = helper.pid;
    this.argv = helper.argv;
    this.dir = dir;
    this.exited = helper.exited;
  }

  /** The tail of gvproxy's stderr (its logrus lines). */
  get stderr(): string {
    return this.#helper.stderr;
  }

  get running(): boolean {
    return this.#helper.running;
  }

  /** Whether close() was called (an exit after it is no failure). */
  get closing(): boolean {
    return this.#closing;
  }

  /** Ends the frame stream (gvproxy then exits), the API client, then kills what lingers. */
  async close(graceMs = 1000): Promise<void> {
    this.#closing = true;
    this.backend.close();
    await this.api.close();
    await this.#helper.close(graceMs);
  }
}

/**
 * Starts gvproxy for one guest. Resolves once it answered an ARP request for its
 * gateway through the qemu socket and its API socket accepts connections; throws
 * ENGINE_UNAVAILABLE when the binary is missing, DEVICE_ERROR (with its stderr) when
 * it exits or does not answer within startTimeoutMs.
 */
export async function startGvproxy(opts: GvproxyOptions): Promise<GvproxyProcess> {
  const bin = findGvproxy(opts.binary);
  if (bin === undefined) {
    throw new TsiboxError('ENGINE_UNAVAILABLE',
      `${opts.binary ?? GVPROXY_BINARY} was not found${opts.binary === undefined ? ' in PATH' : ''}; network mode 'gvproxy' needs it (Debian: ${GVPROXY_DEBIAN_PACKAGE})`);
  }
  const log = opts.logger;
  const mac = macBytes(opts.mac ?? GVPROXY_NET.mac, 'gvproxy');
  const timeoutMs = opts.startTimeoutMs ?? 10_000;
  const dir = mkdtempSync(join(opts.runtimeDir ?? tmpdir(), 'tsibox-gvproxy-'));
  const helper = startHelper({ name: 'gvproxy', argv: [bin, ...gvproxyArgs(dir, opts.debug)], privateDir: dir, logger: log });
  const deadline = performance.now() + timeoutMs;
  let sock: Socket | null = null;
  const api = new GvproxyApi(join(dir, 'api.sock'));
  const fail = async (what: string): Promise<never> => {
    sock?.destroy();
    await api.close();
    const err = await helper.failure(what, bin);
    await helper.close(0);
    throw err;
  };
  sock = await connectWhenListening(join(dir, 'qemu.sock'), deadline, helper);
  if (sock === null) return fail(helper.running ? `did not listen on its qemu socket within ${timeoutMs} ms` : 'ended before it listened');
  sock.on('error', (err) => { log.debug({ err }, 'gvproxy socket error'); });
  const reader = new FrameReader();
  const answered = await probeArp(sock, reader, {
    mac, address: GVPROXY_NET.guest, gateway: GVPROXY_NET.gateway, timeoutMs: Math.max(1, deadline - performance.now()), ended: helper.exited,
  });
  if (answered === 'exit') return fail('ended before it answered the start-up ARP probe');
  if (answered === 'timeout') return fail(`did not answer the start-up ARP probe within ${timeoutMs} ms`);
  if (answered !== 'ok') return fail(answered);
  // The API listener starts at the same time; wait until it answers.
  for (;;) {
    try {
      await api.list();
      break;
    } catch (err) {
      if (!helper.running) return fail('ended before its API answered');
      if (performance.now() > deadline) return fail(`API did not answer within ${timeoutMs} ms: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  const backend = new FrameSocketBackend(sock, log, reader, 'gvproxy');
  log.debug({ pid: helper.pid, dir }, 'gvproxy is up');
  return new GvproxyProcess(helper, backend, api, dir);
}

/** Connects to `path` once gvproxy listens there (retries every 10 ms); null when it ended or time ran out. */
async function connectWhenListening(path: string, deadline: number, helper: HelperProcess): Promise<Socket | null> {
  for (let i = 0; helper.running && performance.now() < deadline && i < 100_000; i++) {
    const s = await new Promise<Socket | null>((resolve) => {
      const c = connect(path);
      c.once('connect', () => { c.removeAllListeners('error'); resolve(c); });
      c.once('error', () => { c.destroy(); resolve(null); });
    });
    if (s !== null) return s;
    await new Promise((r) => setTimeout(r, 10));
  }
  return null;
}
