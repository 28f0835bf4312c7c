// One structured event per proxied connection (or datagram flow), written when it ends:
// decision, addresses, bytes each way, duration and close reason.
import type { RateLimitedLog } from '../src/log-rate.js';
import { RecordBook, type ConnectionRecord, type FinishedConnection } from '../src/connection-records.js';

export type { ConnectionRecord, FinishedConnection };

export class ConnectionLog {
  readonly #book: RecordBook<FinishedConnection>;
  static readonly RECENT_MAX = RecordBook.RECENT_MAX;

  /**
   * `log` is rate-limited: a guest opens connections as fast as it likes. `onRecord`
   * sees every record, never rate-limited (Sandbox 'connection' events).
   */
  constructor(log: RateLimitedLog, onRecord?: (rec: FinishedConnection) => void) {
    this.#book = new RecordBook('tsi.connection', log, onRecord, (r) => `tsi ${r.kind} ${r.decision} ${r.src ?? '-'} -> ${r.dst ?? '-'}: ${r.closeReason}`);
  }

  /** Every finished record, oldest first (tests inspect it; capped at RECENT_MAX). */
  get recent(): FinishedConnection[] {
    return this.#book.recent;
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
    this.#book.add(entry);
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
