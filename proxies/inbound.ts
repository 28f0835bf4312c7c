// A host client joined to a new connection the VMM opens to a guest port: what a TSI
// listener (a published port) and a unix → guest bridge both do with each client.
// The client stays paused until the guest accepted; a guest that refuses, a device at
// its connection limit, or a client that leaves first ends it cleanly, and the record
// is finished exactly once on every path.
import type { Socket } from 'node:net';
import type { GuestStream, GuestStreamPorts } from '../src/guest-stream.js';
import type { TrackedConnection } from './connection-log.js';
import { pipeSocket } from './pipe.js';

export interface InboundJoin {
  /** The guest port the device connects to. */
  guestPort: number;
  /** Written to the guest before the client's bytes (the TSI ACCEPT message); not counted in the record. */
  preamble?: Buffer;
  /** The owner's set of live client sockets (it destroys them on close): the client is in it while joined. */
  sockets: Set<Socket>;
  rec?: TrackedConnection;
}

/** Connects to the guest, then pipes `socket` (created with pauseOnConnect) both ways. */
export function joinClientToGuest(ports: GuestStreamPorts, socket: Socket, j: InboundJoin): void {
  const { sockets, rec } = j;
  sockets.add(socket);
  socket.on('error', () => { /* reported through close */ });
  socket.once('close', () => { sockets.delete(socket); });
  let conn: GuestStream;
  try {
    conn = ports.connect(j.guestPort);
  } catch (err) {
    // VSOCK_BUSY: the device is at its connection limit; this client is turned away.
    socket.destroy();
    rec?.finish(`vsock connect failed: ${(err as Error).message}`);
    return;
  }
  if (rec !== undefined) rec.rec.guestPort = j.guestPort;
  const onEarlyClose = (reason: string): void => {
    socket.destroy();
    rec?.finish(`guest did not accept: ${reason}`);
  };
  conn.once('close', onEarlyClose);
  socket.once('close', () => { if (conn.state === 'connecting') conn.destroy('client went away'); });
  conn.once('connect', () => {
    conn.off('close', onEarlyClose);
    if (socket.destroyed) {
      conn.destroy('client went away');
      rec?.finish('client went away before the guest accepted');
      return;
    }
    const preambleBytes = j.preamble?.length ?? 0;
    if (j.preamble !== undefined) conn.write(j.preamble);
    pipeSocket(conn, socket, (end) => {
      sockets.delete(socket);
      if (rec === undefined) return;
      rec.bytesFromGuest = conn.bytesFromGuest;
      rec.bytesToGuest = conn.bytesToGuest - preambleBytes;
      rec.finish(end.reason);
    });
    socket.resume();
  });
}
