// Plain vsock-port ↔ host unix socket bridges (like libkrun's krun_add_vsock_port2):
//   guest → host (listen: false): a guest connecting to host vsock port P is joined to a
//   new connection to the unix socket at `path`.
//   host → guest (listen: true): the VMM listens on `path`; each client is joined to a
//   new vsock connection to guest port P.
// No TSI framing: bytes pass through as they are.
import { rmSync } from 'node:fs';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import type { GuestStreamPorts } from '../src/guest-stream.js';
import type { ConnectionLog } from './connection-log.js';
import { pipeSocket } from './pipe.js';
import { joinClientToGuest } from './inbound.js';

export interface VsockBridge {
  readonly port: number;
  readonly path: string;
  readonly listen: boolean;
  /** Resolves once the bridge accepts connections (host → guest: the unix socket listens). */
  readonly ready: Promise<void>;
  close(): Promise<void>;
}

export function addVsockPort(device: GuestStreamPorts, port: number, path: string, listen: boolean, log?: ConnectionLog): VsockBridge {
  return listen ? unixToGuest(device, port, path, log) : guestToUnix(device, port, path, log);
}

function guestToUnix(device: GuestStreamPorts, port: number, path: string, log?: ConnectionLog): VsockBridge {
  const sockets = new Set<Socket>();
  const stop = device.listen(port, (conn) => {
    const rec = log?.open({ kind: 'bridge', protocol: 'unix', direction: 'outbound', decision: 'allow', guestPort: conn.guestPort, src: `vsock:${port}`, dst: `unix:${path}` });
    const socket = netConnect({ path, allowHalfOpen: true });
    sockets.add(socket);
    socket.once('error', (err) => { if (!socket.connecting) return; conn.destroy(`unix connect: ${(err as NodeJS.ErrnoException).code ?? err.message}`); });
    conn.once('close', () => { if (socket.connecting) socket.destroy(); });
    pipeSocket(conn, socket, (end) => {
      sockets.delete(socket);
      if (rec) {
        rec.bytesFromGuest = conn.bytesFromGuest;
        rec.bytesToGuest = conn.bytesToGuest;
        rec.finish(end.reason);
      }
    });
  });
  return {
    port, path, listen: false, ready: Promise.resolve(),
    close: async () => {
      stop();
      for (const s of sockets) s.destroy();
    },
  };
}

function unixToGuest(device: GuestStreamPorts, port: number, path: string, log?: ConnectionLog): VsockBridge {
  const sockets = new Set<Socket>();
  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => {
    const rec = log?.open({ kind: 'bridge', protocol: 'unix', direction: 'inbound', decision: 'allow', src: `unix:${path}`, dst: `vsock:guest:${port}` });
    joinClientToGuest(device, socket, { guestPort: port, sockets, rec });
  });
  const ready = new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ path, exclusive: true }, () => { server.off('error', reject); resolve(); });
  });
  return {
    port, path, listen: true, ready,
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      if (!server.listening) return resolve();
      server.close(() => {
        try { rmSync(path, { force: true }); } catch { /* gone */ }
        resolve();
      });
    }),
  };
}
