// Host → guest control messages waiting for a control-rx buffer. The guest decides
// when (and whether) it posts those buffers, and every message it sends us can make
// us queue replies, so this queue must be bounded by us, not by the guest.
//
// Every control message we send states something (port N exists, is called X, is
// open or closed), so a newer message for the same (port, event) supersedes an older
// one still waiting: we keep one entry per key, updated in place. In-place keeps the
// first-queued order between events of one port (DEVICE_ADD before PORT_NAME before
// PORT_OPEN), which is the order the Linux driver needs.

/** Backstop: distinct (port, event) keys are few (about 3 per port); more is a bug. */
export const MAX_PENDING_CONTROL = 1024;

export class ControlOutbox {
  readonly #pending = new Map<string, Uint8Array>();
  readonly #limit: number;
  #dropped = 0;

  constructor(limit = MAX_PENDING_CONTROL) {
    this.#limit = limit;
  }

  /** Messages waiting for a guest buffer. */
  get size(): number {
    return this.#pending.size;
  }

  /** Messages refused because the queue was full (never coalesced duplicates). */
  get dropped(): number {
    return this.#dropped;
  }

  /** Queues `msg` for (id, event), replacing a waiting one. False when dropped. */
  put(id: number, event: number, msg: Uint8Array): boolean {
    const key = `${id >>> 0}:${event}`;
    if (!this.#pending.has(key) && this.#pending.size >= this.#limit) {
      this.#dropped++;
      return false;
    }
    this.#pending.set(key, msg);
    return true;
  }

  /** Removes and returns the oldest waiting message, or null. */
  take(): Uint8Array | null {
    for (const [key, msg] of this.#pending) {
      this.#pending.delete(key);
      return msg;
    }
    return null;
  }

  clear(): void {
    this.#pending.clear();
  }
}
