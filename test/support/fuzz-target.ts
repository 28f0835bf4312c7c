// What every fuzz target offers scripts/fuzz.ts (`npm run fuzz -- <target>`).
import type { Prng } from './prng.js';

export interface FuzzTarget {
  /** Runs one iteration; returns a failure description or null (async targets let host sockets progress). */
  iterate(rng: Prng): string | null | Promise<string | null>;
  /** One line on what the run reached (printed after the iterations). */
  describe?(): string;
  /** After the last iteration: a final check (async targets), then close(). */
  finish?(): Promise<string | null>;
  close(): void | Promise<void>;
}
