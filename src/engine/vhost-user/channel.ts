// Reading one vhost-user socket, the same for both roles (our back end reads requests,
// our front end reads replies): drain what the socket holds now, frame it into
// messages with their descriptors, and say how the stream ended if it did.
import { closeFd } from '../../sys/libc.js';
import type { FdSocketReader } from '../../sys/socket.js';
import type { Message, MessageReader } from './protocol.js';

/** How a vhost-user stream ended: the peer closed it, recvmsg failed, or the bytes broke the framing. */
export type ChannelEnd =
  | { kind: 'eof'; /** bytes of an unfinished message left over */ buffered: number }
  | { kind: 'receive-failed'; message: string; cause: unknown }
  | { kind: 'framing'; message: string; cause: unknown };

/**
 * Reads until EAGAIN and hands each whole message to `onMessage` in order (which then
 * owns its fds). Returns the end when the stream ended or broke (the caller closes the
 * connection), null when the socket simply has no more bytes now. Once `closed()`
 * turns true, the remaining messages' fds are closed and they are not handed on.
 */
export function drainChannel(reader: FdSocketReader, framer: MessageReader, closed: () => boolean, onMessage: (m: Message) => void): ChannelEnd | null {
  while (!closed()) {
    let r;
    try {
      r = reader.read(framer.wanted);
    } catch (err) {
      return { kind: 'receive-failed', message: (err as Error).message, cause: err };
    }
    if (r.kind === 'again') return null;
    if (r.kind === 'eof') return { kind: 'eof', buffered: framer.buffered };
    let msgs: Message[];
    try {
      msgs = framer.feed(r.bytes, r.fds);
    } catch (err) {
      return { kind: 'framing', message: (err as Error).message, cause: err };
    }
    for (const m of msgs) {
      if (closed()) {
        for (const fd of m.fds) closeFd(fd);
        continue;
      }
      onMessage(m);
    }
  }
  return null;
}
