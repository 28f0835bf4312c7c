// Shared rig for TSI tests: a guest (software driver + real vsock device), TsiHost with
// the given policy and port map, and loopback servers that are always cleaned up.
import type { Test } from 'tap';
import type { Logger } from 'pino';
import { createServer, type Server, type Socket } from 'node:net';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Policy, type PolicyOptions } from '../../src/policy/index.js';
import { PortMap } from '../../src/portmap/index.js';
import { GuestVsock, type GuestVsockOptions } from '../support/vsock/guest.js';
import { TsiHost } from '../../proxies/tsi.js';
import { TsiGuest } from '../support/tsi/tsi-guest.js';
import type { TsiLimitOptions } from '../../proxies/limits.js';

export interface Rig {
  vsock: GuestVsock;
  host: TsiHost;
  guest: TsiGuest;
  portMap: PortMap;
  close(): void;
}

/** Loopback-only by default: allow 127.0.0.0/8 and ::1, deny the rest. */
export const LOOPBACK_ONLY: PolicyOptions = {
  default: 'deny',
  rules: [
    { action: 'allow', cidr: ['127.0.0.0/8', '::1/128'] },
    { action: 'allow', protocol: 'unix' },
  ],
};

export interface RigOptions {
  policy?: PolicyOptions;
  guest?: GuestVsockOptions;
  portMap?: PortMap;
  hello?: boolean;
  hostAliases?: Record<string, string>;
  unixSockets?: boolean;
  limits?: TsiLimitOptions;
  timeoutMs?: number;
  logger?: Logger;
}

export async function rig(t: Test, opts: RigOptions = {}): Promise<Rig> {
  const vsock = new GuestVsock(opts.guest);
  const portMap = opts.portMap ?? new PortMap();
  const host = new TsiHost({
    device: vsock.device, policy: new Policy(opts.policy ?? LOOPBACK_ONLY), portMap, timeoutMs: opts.timeoutMs ?? 5000,
    ...(opts.hostAliases ? { hostAliases: opts.hostAliases } : {}),
    ...(opts.unixSockets !== undefined ? { unixSockets: opts.unixSockets } : {}),
    ...(opts.limits ? { limits: opts.limits } : {}),
    ...(opts.logger ? { logger: opts.logger } : {}),
  });
  const guest = new TsiGuest(vsock);
  const r: Rig = {
    vsock, host, guest, portMap,
    close: () => {
      guest.close();
      host.close();
      vsock.close();
    },
  };
  t.teardown(r.close);
  if (opts.hello !== false) await guest.hello();
  return r;
}

/** A TCP server on loopback that closes all its sockets at teardown. */
export async function tcpServer(t: Test, onConn: (s: Socket) => void, host = '127.0.0.1'): Promise<{ server: Server; port: number; connections: () => number }> {
  let count = 0;
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => {
    count++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => { /* test decides */ });
    onConn(s);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => { resolve(); });
  });
  t.teardown(() => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy();
    server.close(() => { resolve(); });
  }));
  const addr = server.address();
  return { server, port: typeof addr === 'object' && addr ? addr.port : 0, connections: () => count };
}

export function echo(s: Socket): void {
  s.pipe(s);
}

export async function udpSocket(t: Test, type: 'udp4' | 'udp6', address: string, port = 0): Promise<{ socket: UdpSocket; port: number }> {
  const socket = createSocket(type);
  await new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(port, address, () => { resolve(); });
  });
  t.teardown(() => { try { socket.close(); } catch { /* closed */ } });
  return { socket, port: socket.address().port };
}

export function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-tsi-'));
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });
  return dir;
}

/** Resolves when `cond()` holds (checked every 5 ms), rejects after `ms`. */
export async function until(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
