// Connection records: one per connection the VMM carried for the guest, written once
// when it ends — `tsi.connection` for a TSI proxy or bridge connection, `net.flow` for
// a flow the frame filter judged on the virtio-net path. Both paths keep the latest
// records (tests and `Sandbox.connections` read them), hand every one to the sandbox's
// 'connection' listeners (never rate-limited) and log it through the rate-limited log.
import type { RateLimitedLog } from './log-rate.js';
import type { Direction, Protocol } from './policy/index.js';

/** A TSI connection as it opens (kind of proxy, endpoints, the policy's decision). */
export interface ConnectionRecord {
  kind: 'stream' | 'listener' | 'datagram' | 'bridge';
  protocol: 'tcp' | 'udp' | 'unix' | 'vsock';
  direction: 'outbound' | 'inbound';
  decision: 'allow' | 'deny' | 'invalid';
  rule?: string;
  /** The guest's vsock endpoint. */
  guestPort?: number;
  src?: string;
  dst?: string;
  errno?: number;
}

/** What every finished record adds: bytes each way, duration (ms, µs resolution) and why it ended. */
export interface RecordTotals {
  bytesFromGuest: number;
  bytesToGuest: number;
  durationMs: number;
  closeReason: string;
}

/** A finished TSI connection: what `tsi.connection` log lines and 'connection' events carry. */
export type FinishedConnection = ConnectionRecord & RecordTotals;

/** A finished frame-filter flow: what `net.flow` log lines and 'connection' events carry. */
export interface FlowRecord extends RecordTotals {
  kind: 'frame';
  protocol: Protocol;
  direction: Direction;
  decision: 'allow' | 'deny';
  rule: string;
  /** Guest-visible endpoints. */
  src: string;
  dst: string;
  /** The address the policy judged (the gateway alias as 127.0.0.1, the DNS forwarder as the host's resolver). */
  hostDst: string;
}

/** A sandbox 'connection' event: either kind of record, tagged with its log event name. */
export type ConnectionEvent = ({ event: 'tsi.connection' } & FinishedConnection) | ({ event: 'net.flow' } & FlowRecord);

/** Records of one kind: the latest RECENT_MAX kept, each handed on and logged once. */
export class RecordBook<R extends RecordTotals> {
  static readonly RECENT_MAX = 2000;
  /** Finished records, oldest first (capped at RECENT_MAX). */
  readonly recent: R[] = [];
  readonly #event: ConnectionEvent['event'];
  readonly #log: RateLimitedLog | undefined;
  readonly #onRecord: ((rec: R) => void) | undefined;
  readonly #describe: (rec: R) => string;

  /** `describe` makes the log line's message; it runs only when the line is logged. */
  constructor(event: ConnectionEvent['event'], log: RateLimitedLog | undefined, onRecord: ((rec: R) => void) | undefined, describe: (rec: R) => string) {
    this.#event = event;
    this.#log = log;
    this.#onRecord = onRecord;
    this.#describe = describe;
  }

  add(rec: R): void {
    if (this.recent.length >= RecordBook.RECENT_MAX) this.recent.shift();
    this.recent.push(rec);
    this.#onRecord?.(rec);
    // The line (and its object) only when someone reads it: silent by default.
    if (this.#log === undefined || !this.#log.enabled('info')) return;
    this.#log.info(Object.assign({ event: this.#event } as { event: string } & Record<string, unknown>, rec), this.#describe(rec));
  }
}
