// Joins a vsock connection and a host socket, both directions, with backpressure:
//   guest → host: bytes are credited back to the guest (conn.consumed) only once the
//   socket took them without going over its high-water mark, else on 'drain'; so the
//   VMM never holds more than the connection's buf_alloc plus one socket buffer.
//   host → guest: the socket is paused while the connection's queue is above its
//   high-water mark and resumed on the connection's 'drain'.
// Half-close travels both ways (vsock SHUTDOWN(SEND) ↔ socket end()).
import type { Socket } from 'node:net';
import type { CloseReason, GuestStream } from '../src/guest-stream.js';
import type { TsiMessage, TsiMessageReader, GuestErrno } from './protocol.js';

export interface PipeEnd {
  /** How the pair ended: the vsock close reason, or the socket error code. */
  reason: string;
}

export function pipeSocket(conn: GuestStream, socket: Socket, done: (end: PipeEnd) => void, first?: Buffer): void {
  let held = 0;
  let socketError: string | null = null;
  let connReason: CloseReason | null = null;
  let socketClosed = false;
  let finished = false;
  const finish = (): void => {
    if (finished || !socketClosed || connReason === null) return;
    finished = true;
    done({ reason: socketError ?? connReason });
  };

  const fromGuest = (d: Buffer): void => {
    if (socket.destroyed) {
      conn.consumed(d.length);
      return;
    }
    if (socket.write(d)) conn.consumed(d.length);
    else held += d.length;
  };
  conn.on('data', fromGuest);
  if (first !== undefined && first.length > 0) fromGuest(first);
  socket.on('drain', () => {
    const n = held;
    held = 0;
    conn.consumed(n);
  });
  conn.on('end', () => { if (!socket.destroyed) socket.end(); });
  if (conn.guestEnded) socket.end();

  socket.on('data', (d: Buffer) => {
    if (!conn.write(d)) socket.pause();
  });
  conn.on('drain', () => { if (!socket.destroyed) socket.resume(); });
  socket.on('end', () => { conn.end(); });
  socket.on('error', (err: NodeJS.ErrnoException) => { socketError ??= err.code ?? err.message; });
  socket.on('close', () => {
    socketClosed = true;
    if (conn.state !== 'closed') {
      // A host socket that failed (ECONNRESET, ETIMEDOUT, ...) resets the guest's after
      // the bytes it delivered: the guest reads them, then ECONNRESET.
      if (socketError !== null) conn.resetAfterQueued(socketError);
      else if (!conn.guestEnded) conn.destroy('host socket closed');
      else conn.end();
    }
    finish();
  });
  conn.on('close', (reason) => {
    connReason = reason;
    if (!socket.destroyed) {
      if (reason === 'closed') closeAsTcpDoes(socket);
      else socket.destroy();
    }
    finish();
  });
  if (conn.state === 'closed') {
    connReason = 'closed';
    socket.destroy();
  }
}

/** Bounds the flush of a closed guest socket's last bytes to a peer that does not read. */
const CLOSE_FLUSH_MS = 10_000;

/**
 * The guest close()d its socket: what Linux does for a closed TCP socket — the queued
 * bytes, then FIN, and nothing held for a peer that never ends its side (the fd closes
 * once Node handed its buffer to the kernel; data the peer still sends gets a RST).
 * Waiting for the peer's FIN instead kept the socket, and its connection slot, in
 * FIN_WAIT2 for as long as the peer liked (found by the guest stress test).
 */
function closeAsTcpDoes(socket: Socket): void {
  socket.end(() => { socket.destroy(); });
  setTimeout(() => { socket.destroy(); }, CLOSE_FLUSH_MS).unref();
}

/** Ends our side (queued replies still go out), then resets if the guest has not closed within a second. */
export function endThenReset(conn: GuestStream, reason: string): void {
  conn.end();
  setTimeout(() => { conn.destroy(reason); }, 1000).unref();
}

/**
 * Serves a request/reply TSI connection with flow control: frames go to `handle` only
 * while the replies queued for the guest are below the connection's high-water mark
 * (and `paused()` is false); otherwise they wait, uncredited, in `reader`, so a guest
 * that reads nothing stalls after its buf_alloc. 'drain' resumes; so does the returned
 * function (call it when `paused()` turns false). Stops once our side has ended.
 * `pacedByReplies()` false lifts the pacing for a service whose replies are bounded
 * otherwise (datagrams: what the guest does not read is dropped, as UDP drops).
 */
export function serveRequests(conn: GuestStream, reader: TsiMessageReader, handle: (f: TsiMessage | GuestErrno) => void, paused: () => boolean = () => false,
  pacedByReplies: () => boolean = () => true): () => void {
  const pump = (): void => {
    while (conn.state !== 'closed' && !conn.hostEnded && (!pacedByReplies() || conn.bufferedToGuest < conn.highWater) && !paused()) {
      const f = reader.next();
      if (f === null) return;
      handle(f);
    }
  };
  conn.on('data', (d) => {
    reader.push(d);
    pump();
  });
  conn.on('drain', pump);
  return pump;
}
