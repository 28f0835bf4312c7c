// eventfd(2) objects and a watcher on the main event loop, for ioeventfd (guest →
// VMM notifications without an exit) and irqfd (VMM → guest interrupts).
import koffi, { type node as koffiNode } from 'koffi';
import { TsiboxError } from '../errors.js';
import { sys, errno, syscallError, closeFd, EAGAIN, EFD_CLOEXEC, EFD_NONBLOCK } from '../sys/libc.js';

export class EventFd {
  readonly fd: number;
  readonly #buf = Buffer.alloc(8);
  #closed = false;

  constructor() {
    const fd = sys.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) as number;
    if (fd < 0) throw syscallError('eventfd');
    this.fd = fd;
  }

  /** Adds `n` to the counter (wakes the reader; for an irqfd, injects the interrupt). */
  signal(n = 1n): void {
    this.#buf.writeBigUInt64LE(n);
    const r = sys.write(this.fd, this.#buf, 8) as number;
    if (r !== 8) throw syscallError('write to eventfd');
  }

  /** Reads and clears the counter; 0n when it was zero. */
  take(): bigint {
    const r = sys.read(this.fd, this.#buf, 8) as number;
    if (r === 8) return this.#buf.readBigUInt64LE(0);
    const e = errno();
    if (r < 0 && e === EAGAIN) return 0n;
    throw syscallError('read from eventfd', e);
  }

  get closed(): boolean {
    return this.#closed;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }
}

/** Calls `onSignal(count)` on the main event loop each time the eventfd is signalled. */
export class EventFdWatcher {
  readonly #handle: koffiNode.PollHandle;
  readonly #fd: EventFd;
  #stopped = false;

  constructor(fd: EventFd, onSignal: (count: bigint) => void) {
    if (fd.closed) throw new TsiboxError('INVALID_STATE', 'cannot watch a closed eventfd');
    this.#fd = fd;
    this.#handle = koffi.node.poll(fd.fd, { readable: true }, () => {
      if (this.#stopped) return;
      const n = this.#fd.take();
      if (n > 0n) onSignal(n);
    });
  }

  /** Lets the process exit while only this watcher is left. */
  unref(): void {
    this.#handle.unref();
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#handle.stop();
    this.#handle.close();
  }
}
