// One vhost-user connection: a connected unix stream socket (our end of a socketpair
// whose other end QEMU got as `-chardev socket,fd=N`), read on the main loop with
// recvmsg (for SCM_RIGHTS), framed by MessageReader, served by a VhostUserBackend.
// Any protocol error closes this connection with a logged reason; nothing throws out.
import { EventEmitter } from 'node:events';
import koffi, { type node as koffiNode } from 'koffi';
import type { Logger } from '../../../virtio/virtio-logger.js';
import { closeFd } from '../../../sys/libc.js';
import { FdSocketReader, sendWithFds } from '../../../sys/socket.js';
import { VhostUserBackend, type BackendOptions } from './backend.js';
import { encodeReply, MessageReader, ProtocolError, requestName } from '../protocol.js';
import { drainChannel } from '../channel.js';

/** A connection serves one device with one back end: the back end's options. */
export type ConnectionOptions = BackendOptions;

export interface ConnectionEvents {
  /** The connection ended: `reason` is null for an orderly end of stream. */
  close: [reason: string | null];
}

export class VhostUserConnection extends EventEmitter<ConnectionEvents> {
  readonly backend: VhostUserBackend;
  readonly #fd: number;
  readonly #log: Logger;
  readonly #reader: FdSocketReader;
  readonly #framer = new MessageReader();
  readonly #poll: koffiNode.PollHandle;
  #closed = false;
  /** Messages handled so far (tests, diagnostics). */
  messages = 0;

  /** Takes ownership of `fd` (a connected AF_UNIX stream socket). */
  constructor(fd: number, opts: ConnectionOptions) {
    super();
    this.#fd = fd;
    this.#log = opts.logger.child({ vhostUser: opts.name ?? `device-${opts.device.deviceId}` });
    this.backend = new VhostUserBackend({
      device: opts.device,
      logger: opts.logger,
      ...(opts.name === undefined ? {} : { name: opts.name }),
      ...(opts.activeQueues === undefined ? {} : { activeQueues: opts.activeQueues }),
      ...(opts.config === undefined ? {} : { config: opts.config }),
      ...(opts.onInternalError === undefined ? {} : { onInternalError: opts.onInternalError }),
    });
    this.#reader = new FdSocketReader(fd);
    this.#poll = koffi.node.poll(fd, { readable: true }, () => { this.#onReadable(); });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Lets the process exit while only this connection is left. */
  unref(): void {
    this.#poll.unref();
  }

  #onReadable(): void {
    const end = drainChannel(this.#reader, this.#framer, () => this.#closed, (m) => {
      try {
        this.messages++;
        const reply = this.backend.handle(m);
        if (reply !== null) sendWithFds(this.#fd, encodeReply(m.request, reply));
      } catch (err) {
        const why = err instanceof ProtocolError ? err.message : `${requestName(m.request)}: ${(err as Error).message}`;
        this.close(why);
      } finally {
        for (const fd of m.fds) closeFd(fd);
      }
    });
    if (end === null) return;
    if (end.kind === 'eof') this.close(end.buffered > 0 ? `front end closed the socket in the middle of a message (${end.buffered} bytes)` : null);
    else this.close(end.kind === 'receive-failed' ? `receive failed: ${end.message}` : end.message);
  }

  /** Closes the socket and resets the device (once). `reason` null means an orderly end. */
  close(reason: string | null = null): void {
    if (this.#closed) return;
    this.#closed = true;
    if (reason !== null) this.#log.warn({ reason }, 'vhost-user connection closed');
    else this.#log.debug('vhost-user connection ended');
    this.#poll.stop();
    this.#poll.close();
    this.backend.close();
    for (const fd of this.#framer.drainFds()) closeFd(fd);
    this.#reader.close();
    closeFd(this.#fd);
    this.emit('close', reason);
  }
}
