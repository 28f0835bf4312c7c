// Per-sandbox limits on what a guest can make the host hold open (docs/security.md).
// Each proxy asks before it opens a host socket; over a limit the guest gets an errno
// (the table below) and one rate-limited `tsi.limit` log line, never a host failure.
import { TsiboxError } from '../src/errors.js';

export interface TsiLimitOptions {
  /** Concurrent outbound TSI streams (TCP and unix), default 512. Over: connect() fails with ENOBUFS. */
  maxConnections?: number;
  /** Guest listeners registered, across all control sessions, default 128. Over: ENOBUFS (the listener stays guest-local). */
  maxListeners?: number;
  /** Concurrent guest UDP sockets with a host socket, default 256. Over: ENOBUFS on the first send. */
  maxUdpSockets?: number;
  /** New outbound streams per second (token bucket, burst = the same number), default 1000. Over: connect() fails with EAGAIN. */
  connectionsPerSecond?: number;
}

export type LimitName = 'connections' | 'listeners' | 'udpSockets' | 'connectionRate';

export const DEFAULT_LIMITS: Readonly<Required<TsiLimitOptions>> = Object.freeze({
  maxConnections: 512,
  maxListeners: 128,
  maxUdpSockets: 256,
  connectionsPerSecond: 1000,
});

/** Checks a limits object (Sandbox options, CLI flags); throws INVALID_ARGUMENT. */
export function resolveLimits(o: TsiLimitOptions | undefined): Required<TsiLimitOptions> {
  for (const k of Object.keys(o ?? {})) {
    if (!(k in DEFAULT_LIMITS)) throw new TsiboxError('INVALID_ARGUMENT', `limits.${k} is not a limit (${Object.keys(DEFAULT_LIMITS).join(', ')})`);
  }
  const r = { ...DEFAULT_LIMITS, ...(o ?? {}) };
  for (const [k, v] of Object.entries(r)) {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 1_000_000) {
      throw new TsiboxError('INVALID_ARGUMENT', `limits.${k} must be an integer 1..1000000, got ${JSON.stringify(v)}`);
    }
  }
  return r;
}

/** Counters and the connect-rate bucket of one sandbox. */
export class TsiLimits {
  readonly limits: Required<TsiLimitOptions>;
  readonly #now: () => number;
  #connections = 0;
  #listeners = 0;
  #udpSockets = 0;
  #tokens: number;
  #last: number;
  /** Refusals by limit (stats, tests). */
  readonly refused: Record<LimitName, number> = { connections: 0, listeners: 0, udpSockets: 0, connectionRate: 0 };

  constructor(opts?: TsiLimitOptions, now: () => number = () => performance.now()) {
    this.limits = resolveLimits(opts);
    this.#now = now;
    this.#tokens = this.limits.connectionsPerSecond;
    this.#last = now();
  }

  get connections(): number { return this.#connections; }
  get listeners(): number { return this.#listeners; }
  get udpSockets(): number { return this.#udpSockets; }

  /** A new outbound stream: null when allowed (release it with a returned-once function), else the limit hit. */
  takeConnection(): { release: () => void } | LimitName {
    if (this.#connections >= this.limits.maxConnections) return this.#refuse('connections');
    const now = this.#now();
    const rate = this.limits.connectionsPerSecond;
    this.#tokens = Math.min(rate, this.#tokens + ((now - this.#last) * rate) / 1000);
    this.#last = now;
    if (this.#tokens < 1) return this.#refuse('connectionRate');
    this.#tokens -= 1;
    this.#connections++;
    return { release: once(() => { this.#connections--; }) };
  }

  takeListener(): { release: () => void } | LimitName {
    if (this.#listeners >= this.limits.maxListeners) return this.#refuse('listeners');
    this.#listeners++;
    return { release: once(() => { this.#listeners--; }) };
  }

  takeUdpSocket(): { release: () => void } | LimitName {
    if (this.#udpSockets >= this.limits.maxUdpSockets) return this.#refuse('udpSockets');
    this.#udpSockets++;
    return { release: once(() => { this.#udpSockets--; }) };
  }

  #refuse(name: LimitName): LimitName {
    this.refused[name]++;
    return name;
  }
}

function once(f: () => void): () => void {
  let done = false;
  return () => {
    if (done) return;
    done = true;
    f();
  };
}
