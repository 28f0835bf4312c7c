// The frame filter's flow table: one entry per TCP connection, UDP 5-tuple or ICMP echo
// identifier the filter has judged, bounded (LRU eviction) and forgotten when idle. A
// flow that ends writes one `net.flow` record: kept in `recent` (capped, never rate-
// limited) and logged through the sandbox's rate-limited log.
import type { RateLimitedLog } from '../log-rate.js';
import { RecordBook, type FlowRecord } from '../connection-records.js';

export type { FlowRecord };
import { TcpFlag } from '../../netstack/index.js';

export interface Flow {
  key: string;
  rec: Omit<FlowRecord, 'durationMs' | 'closeReason'>;
  allowed: boolean;
  started: number;
  lastSeen: number;
  lastMoved: number;
  tcp: boolean;
  finFromGuest: boolean;
  finToGuest: boolean;
  /** Logged and lingering (TCP after FIN/FIN or RST). */
  closed: boolean;
}

export interface FlowTableOptions {
  maxFlows: number;
  tcpIdleMs: number;
  udpIdleMs: number;
  lingerMs: number;
  log: RateLimitedLog | undefined;
  /** Sees every finished flow record (never rate-limited; Sandbox 'connection' events). */
  onRecord?: (rec: FlowRecord) => void;
}

export class FlowTable {
  static readonly RECENT_MAX = RecordBook.RECENT_MAX;
  readonly #book: RecordBook<FlowRecord>;
  evicted = 0;
  readonly #o: FlowTableOptions;
  readonly #flows = new Map<string, Flow>();

  constructor(o: FlowTableOptions) {
    this.#o = o;
    this.#book = new RecordBook('net.flow', o.log, o.onRecord, (r) => `net ${r.protocol} ${r.decision} ${r.src} -> ${r.dst}: ${r.closeReason}`);
  }

  /** Finished flow records, oldest first (capped at RECENT_MAX). */
  get recent(): FlowRecord[] {
    return this.#book.recent;
  }

  get size(): number {
    return this.#flows.size;
  }

  get(key: string): Flow | undefined {
    return this.#flows.get(key);
  }

  delete(key: string): void {
    this.#flows.delete(key);
  }

  /** Adds a judged flow, evicting the least recently used one when full. */
  add(key: string, rec: Flow['rec'], now: number): Flow {
    const flow: Flow = {
      key, rec, allowed: rec.decision === 'allow', started: now, lastSeen: now, lastMoved: now, tcp: rec.protocol === 'tcp',
      finFromGuest: false, finToGuest: false, closed: false,
    };
    if (this.#flows.size >= this.#o.maxFlows) {
      const oldest = this.#flows.values().next().value as Flow;
      this.#flows.delete(oldest.key);
      this.evicted++;
      this.finish(oldest, 'evicted');
    }
    this.#flows.set(key, flow);
    return flow;
  }

  touch(f: Flow, now: number): void {
    f.lastSeen = now;
    // Keep the Map in LRU order without re-inserting on every frame.
    if (now - f.lastMoved > 1000) {
      f.lastMoved = now;
      this.#flows.delete(f.key);
      this.#flows.set(f.key, f);
    }
  }

  /** A TCP flow ends on RST, or on FIN both ways. */
  tcpFlags(f: Flow, flags: number, fromGuest: boolean): void {
    if (f.closed) return;
    if (flags & TcpFlag.RST) {
      this.finish(f, fromGuest ? 'rst from guest' : 'rst from host');
      return;
    }
    if (flags & TcpFlag.FIN) {
      if (fromGuest) f.finFromGuest = true;
      else f.finToGuest = true;
      if (f.finFromGuest && f.finToGuest) this.finish(f, 'fin');
    }
  }

  /** Records (and logs) a flow's end once; it may linger in the table. */
  finish(f: Flow, reason: string): void {
    if (f.closed) return;
    f.closed = true;
    this.#book.add({ ...f.rec, durationMs: Math.round((f.lastSeen - f.started) * 1000) / 1000, closeReason: reason });
  }

  /** Forgets flows idle past their timeout (closed ones after the linger). */
  sweep(now: number): void {
    for (const f of this.#flows.values()) {
      const idle = f.closed ? this.#o.lingerMs : f.tcp ? this.#o.tcpIdleMs : this.#o.udpIdleMs;
      if (now - f.lastSeen >= idle) {
        this.finish(f, 'idle');
        this.#flows.delete(f.key);
      }
    }
  }

  /** Ends every flow (sandbox end). */
  closeAll(): void {
    for (const f of this.#flows.values()) this.finish(f, 'closed');
    this.#flows.clear();
  }
}
