// Rate-limited logging for lines a guest can trigger (one per denied connect, per
// flow, per malformed message). A token bucket per sandbox: up to `burst` lines at
// once, refilled at `perSecond`; what is over the rate is counted by event name and
// reported in one `log.suppressed` line when lines are allowed again (or on flush()).
// The records themselves (ConnectionLog.recent, FramePolicyFilter.recent, events) are
// not affected: only the log lines are limited.
import type { Logger } from 'pino';
import { TsiboxError } from './errors.js';

export interface LogRateOptions {
  /** Lines per second in the long run (default 50). */
  perSecond?: number;
  /** Lines allowed at once (default 200). */
  burst?: number;
  /** A clock in ms (tests). */
  now?: () => number;
}

type Level = 'info' | 'warn' | 'debug';

export class RateLimitedLog {
  readonly logger: Logger;
  readonly #perSecond: number;
  readonly #burst: number;
  readonly #now: () => number;
  #tokens: number;
  #last: number;
  #suppressed = new Map<string, number>();
  #suppressedSince = 0;
  #timer: NodeJS.Timeout | null = null;
  /** Lines suppressed since this object was made. */
  suppressedTotal = 0;

  constructor(logger: Logger, opts: LogRateOptions = {}) {
    this.logger = logger;
    this.#perSecond = opts.perSecond ?? 50;
    this.#burst = opts.burst ?? 200;
    if (!(this.#perSecond > 0) || !(this.#burst >= 1)) throw new TsiboxError('INVALID_ARGUMENT', 'log rate: perSecond > 0 and burst >= 1');
    this.#now = opts.now ?? (() => performance.now());
    this.#tokens = this.#burst;
    this.#last = this.#now();
  }

  info(obj: { event: string } & Record<string, unknown>, msg: string): void {
    this.#write('info', obj, msg);
  }

  warn(obj: { event: string } & Record<string, unknown>, msg: string): void {
    this.#write('warn', obj, msg);
  }

  debug(obj: { event: string } & Record<string, unknown>, msg: string): void {
    this.#write('debug', obj, msg);
  }

  /** Whether a line at `level` would be written at all (callers skip building it when not). */
  enabled(level: Level): boolean {
    return this.logger.isLevelEnabled(level);
  }

  /** Writes the summary of suppressed lines now (call on close). */
  flush(): void {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (this.#suppressed.size === 0) return;
    const counts = Object.fromEntries(this.#suppressed);
    const total = [...this.#suppressed.values()].reduce((a, b) => a + b, 0);
    this.#suppressed.clear();
    this.logger.warn({ event: 'log.suppressed', suppressed: counts, total, windowMs: Math.round(this.#now() - this.#suppressedSince) },
      `log rate limit: ${total} lines suppressed`);
  }

  #write(level: Level, obj: { event: string } & Record<string, unknown>, msg: string): void {
    if (!this.logger.isLevelEnabled(level)) return;
    if (this.take(obj.event)) this.logger[level](obj, msg);
  }

  /** One line named `event` wants out: true when it may be written (else it is counted). */
  take(event: string): boolean {
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) * this.#perSecond) / 1000);
    this.#last = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      if (this.#suppressed.size > 0) this.flush();
      return true;
    }
    if (this.#suppressed.size === 0) {
      this.#suppressedSince = now;
      // Say what was suppressed even if the flood stops and no line follows.
      this.#timer = setTimeout(() => { this.#timer = null; this.flush(); }, 1000);
      this.#timer.unref();
    }
    this.#suppressed.set(event, (this.#suppressed.get(event) ?? 0) + 1);
    this.suppressedTotal++;
    return false;
  }
}

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace']);

/**
 * A pino Logger whose lines (all levels) share one token bucket: for code that logs
 * through a plain Logger where the guest decides how often (virtio transports, device
 * contexts). Suppressed lines are summed in one `log.suppressed` warn line when lines
 * are allowed again. Children share the parent's bucket.
 */
export function rateLimitedLogger(logger: Logger, opts: LogRateOptions = {}): Logger {
  const limiter = new RateLimitedLog(logger, { perSecond: opts.perSecond ?? 5, burst: opts.burst ?? 20, ...(opts.now ? { now: opts.now } : {}) });
  return wrap(logger, limiter);
}

function wrap(target: Logger, limiter: RateLimitedLog): Logger {
  return new Proxy(target, {
    get(t, prop, receiver) {
      if (prop === 'child') {
        return (...args: Parameters<Logger['child']>) => wrap(t.child(...args) as unknown as Logger, limiter);
      }
      if (typeof prop === 'string' && LEVELS.has(prop)) {
        const level = prop as 'warn';
        return (...args: unknown[]) => {
          if (!t.isLevelEnabled(level)) return;
          if (!limiter.take(`${prop}`)) return;
          (t[level] as (...a: unknown[]) => void)(...args);
        };
      }
      return Reflect.get(t, prop, receiver) as unknown;
    },
  });
}
