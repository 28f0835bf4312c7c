// One structured event per proxied connection (or datagram flow), written when it ends:
// decision, addresses, bytes each way, duration and close reason.
import type { RateLimitedLog } from '../src/log-rate.js';

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

/** A finished connection's record: what `tsi.connection` log lines and 'connection' events carry. */
export type FinishedConnection = ConnectionRecord & { bytesFromGuest: number; bytesToGuest: number; durationMs: number; closeReason: string };

export class ConnectionLog {
  readonly #log: RateLimitedLog;
  readonly #onRecord: ((rec: FinishedConnection) => void) | undefined;
  /** Every finished record (tests inspect it; capped). */
  readonly recent: FinishedConnection[] = [];
  static readonly RECENT_MAX = 2000;

  /**
   * `log` is rate-limited: a guest opens connections as fast as it likes. `onRecord`
   * sees every record, never rate-limited (Sandbox 'connection' events).
   */
  constructor(log: RateLimitedLog, onRecord?: (rec: FinishedConnection) => void) {
    this.#log = log;
    this.#onRecord = onRecord;
  }

  open(rec: ConnectionRecord): TrackedConnection {
    return new TrackedConnection(this, rec);
  }

  /** Called once per connection. */
  write(rec: ConnectionRecord, bytesFromGuest: number, bytesToGuest: number, durationMs: number, closeReason: string): void {
    // Object.assign, not `{ ...rec, ... }`: the spread of these records (optional keys,
    // `src` added later) took V8's slow path, ~4 µs per connection.
    const entry = Object.assign({}, rec) as FinishedConnection;
    entry.bytesFromGuest = bytesFromGuest;
    entry.bytesToGuest = bytesToGuest;
    entry.durationMs = Math.round(durationMs * 1000) / 1000;
    entry.closeReason = closeReason;
    if (this.recent.length >= ConnectionLog.RECENT_MAX) this.recent.shift();
    this.recent.push(entry);
    this.#onRecord?.(entry);
    // The line (and its object) only when someone reads it: silent by default.
    if (!this.#log.enabled('info')) return;
    this.#log.info(Object.assign({ event: 'tsi.connection' } as { event: string } & Record<string, unknown>, entry), `tsi ${rec.kind} ${rec.decision} ${rec.src ?? '-'} -> ${rec.dst ?? '-'}: ${closeReason}`);
  }
}

export class TrackedConnection {
  readonly rec: ConnectionRecord;
  readonly #owner: ConnectionLog;
  readonly #started = performance.now();
  #done = false;
  bytesFromGuest = 0;
  bytesToGuest = 0;

  constructor(owner: ConnectionLog, rec: ConnectionRecord) {
    this.#owner = owner;
    this.rec = rec;
  }

  finish(closeReason: string): void {
    if (this.#done) return;
    this.#done = true;
    this.#owner.write(this.rec, this.bytesFromGuest, this.bytesToGuest, performance.now() - this.#started, closeReason);
  }
}
