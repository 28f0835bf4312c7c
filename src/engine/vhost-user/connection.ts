// One vhost-user connection: a connected unix stream socket (our end of a socketpair
// whose other end QEMU got as `-chardev socket,fd=N`), read on the main loop with
// recvmsg (for SCM_RIGHTS), framed by MessageReader, served by a VhostUserBackend.
// Any protocol error closes this connection with a logged reason; nothing throws out.
import { EventEmitter } from 'node:events';
import koffi, { type node as koffiNode } from 'koffi';
import type { VirtioDevice } from '../../virtio/device.js';
import type { Logger } from '../../virtio/log.js';
import { closeFd } from '../../sys/libc.js';
import { FdSocketReader, sendWithFds } from '../../sys/socket.js';
import { VhostUserBackend } from './backend.js';
import { encodeReply, MessageReader, ProtocolError, requestName } from './protocol.js';

export interface ConnectionOptions {
  device: VirtioDevice;
  name?: string;
  logger: Logger;
  activeQueues?: number;
  config?: boolean;
  onInternalError?: (err: unknown) => void;
}

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
    while (!this.#closed) {
      let r;
      try {
        r = this.#reader.read(this.#framer.wanted);
      } catch (err) {
        this.close(`receive failed: ${(err as Error).message}`);
        return;
      }
      if (r.kind === 'again') return;
      if (r.kind === 'eof') {
        this.close(this.#framer.buffered > 0 ? `front end closed the socket in the middle of a message (${this.#framer.buffered} bytes)` : null);
        return;
      }
      let msgs;
      try {
        msgs = this.#framer.feed(r.bytes, r.fds);
      } catch (err) {
        this.close((err as Error).message);
        return;
      }
      for (const m of msgs) {
        if (this.#closed) {
          for (const fd of m.fds) closeFd(fd);
          continue;
        }
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
      }
    }
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
