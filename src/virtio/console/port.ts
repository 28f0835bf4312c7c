// One console port as the host sees it: `output` (a Readable of what the guest wrote)
// and `input` (a Writable whose bytes go to the guest). The device moves the bytes;
// the port holds host-side state that survives a device reset (pending input).
import { EventEmitter } from 'node:events';
import { Readable, Writable } from 'node:stream';

/** What a port needs from its device. */
export interface PortHost {
  /** Pending input or consumer demand appeared: try to move bytes now. */
  wake(port: ConsolePort): void;
  /** Tell the guest whether the host end is open (PORT_OPEN). */
  setHostOpen(port: ConsolePort, open: boolean): void;
}

interface PendingInput {
  data: Uint8Array;
  done: (err?: Error | null) => void;
}

export interface ConsolePortEvents {
  /** The guest opened (true) or closed (false) its end. */
  'guest-open': [open: boolean];
}

export class ConsolePort extends EventEmitter<ConsolePortEvents> {
  readonly id: number;
  /** Port name sent to the guest ('' for port 0, the hvc0 console). */
  readonly name: string;
  /** Bytes the guest wrote to this port. */
  readonly output: Readable;
  /** Bytes written here reach the guest once it opened the port and posted buffers. */
  readonly input: Writable;
  readonly #host: PortHost;
  #guestOpen = false;
  #hostOpen = true;
  /** Set when `output` is full: the device stops taking guest buffers. */
  #outputFull = false;
  /** Whether output ignores backpressure (the hvc0 console: Linux spins until served). */
  readonly #alwaysDrain: boolean;
  #pending: PendingInput[] = [];
  #pendingOffset = 0;
  #finish: (() => void) | null = null;

  constructor(id: number, name: string, host: PortHost, opts: { alwaysDrain?: boolean } = {}) {
    super();
    this.id = id;
    this.name = name;
    this.#host = host;
    this.#alwaysDrain = opts.alwaysDrain ?? false;
    this.output = new Readable({
      read: () => {
        if (!this.#outputFull) return;
        this.#outputFull = false;
        this.#host.wake(this);
      },
    });
    this.input = new Writable({
      write: (chunk: Buffer, _enc, done) => {
        this.#pending.push({ data: chunk, done });
        this.#host.wake(this);
      },
      final: (done) => {
        this.#finish = () => {
          this.#hostOpen = false;
          this.#host.setHostOpen(this, false);
          done();
        };
        this.#maybeFinish();
      },
    });
  }

  get guestOpen(): boolean {
    return this.#guestOpen;
  }

  get hostOpen(): boolean {
    return this.#hostOpen;
  }

  // ---- used by the device ----

  /** The device may take guest output now. */
  get acceptsOutput(): boolean {
    return this.#alwaysDrain || !this.#outputFull;
  }

  /** Delivers guest bytes (a copy) to `output`. */
  deliver(bytes: Uint8Array): void {
    if (!this.output.push(bytes) && !this.#alwaysDrain) this.#outputFull = true;
  }

  /** Host input waiting to go to the guest. */
  get hasInput(): boolean {
    return this.#pending.length > 0;
  }

  /** Copies pending input into `dest`; returns bytes copied. */
  takeInput(dest: Uint8Array): number {
    let at = 0;
    while (at < dest.length && this.#pending.length > 0) {
      const head = this.#pending[0]!;
      const n = Math.min(dest.length - at, head.data.length - this.#pendingOffset);
      dest.set(head.data.subarray(this.#pendingOffset, this.#pendingOffset + n), at);
      at += n;
      this.#pendingOffset += n;
      if (this.#pendingOffset === head.data.length) {
        this.#pending.shift();
        this.#pendingOffset = 0;
        head.done();
      }
    }
    this.#maybeFinish();
    return at;
  }

  setGuestOpen(open: boolean): void {
    if (open === this.#guestOpen) return;
    this.#guestOpen = open;
    this.emit('guest-open', open);
  }

  /** The driver went away (device reset): the guest end is closed. */
  detach(): void {
    this.setGuestOpen(false);
  }

  #maybeFinish(): void {
    if (this.#finish !== null && this.#pending.length === 0) {
      const finish = this.#finish;
      this.#finish = null;
      finish();
    }
  }
}
