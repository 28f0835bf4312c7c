// The "qemu" stream framing of passt (and gvproxy's qemu transport): every Ethernet
// frame is preceded by its length as a 4-byte big-endian integer. Pure code: a
// streaming parser that accepts the bytes in any split, and an encoder.
import { TsiboxError } from '../src/errors.js';

export const LENGTH_PREFIX = 4;
/** Frames above this are a framing error (passt's largest is 65535 + Ethernet header). */
export const DEFAULT_MAX_FRAME = 65536;
/** Smallest frame accepted: an Ethernet header. */
export const MIN_FRAME = 14;

export class FramingError extends TsiboxError {
  constructor(message: string) {
    super('DEVICE_ERROR', message);
    this.name = 'FramingError';
  }
}

/** Prefixes `frame` with its length (one new Buffer). */
export function encodeFrame(frame: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(LENGTH_PREFIX + frame.length);
  out.writeUInt32BE(frame.length, 0);
  out.set(frame, LENGTH_PREFIX);
  return out;
}

/**
 * Cuts a byte stream into frames. `feed` returns the frames completed by `chunk`
 * (each a Buffer of its own, safe to keep) and throws FramingError on a length of 0,
 * below MIN_FRAME or above the maximum; after an error the reader stays failed.
 */
export class FrameReader {
  readonly maxFrame: number;
  #len = new Uint8Array(LENGTH_PREFIX);
  #lenHave = 0;
  #frame: Buffer | null = null;
  #frameHave = 0;
  #failed: string | null = null;

  constructor(maxFrame = DEFAULT_MAX_FRAME) {
    this.maxFrame = maxFrame;
  }

  /** Bytes of an unfinished frame (prefix included) held now. */
  get buffered(): number {
    return this.#frame === null ? this.#lenHave : LENGTH_PREFIX + this.#frameHave;
  }

  feed(chunk: Uint8Array): Buffer[] {
    if (this.#failed !== null) throw new FramingError(this.#failed);
    const out: Buffer[] = [];
    let at = 0;
    while (at < chunk.length) {
      if (this.#frame === null) {
        const take = Math.min(LENGTH_PREFIX - this.#lenHave, chunk.length - at);
        this.#len.set(chunk.subarray(at, at + take), this.#lenHave);
        this.#lenHave += take;
        at += take;
        if (this.#lenHave < LENGTH_PREFIX) break;
        const len = ((this.#len[0]! << 24) >>> 0) + (this.#len[1]! << 16) + (this.#len[2]! << 8) + this.#len[3]!;
        if (len < MIN_FRAME || len > this.maxFrame) {
          this.#failed = `frame length ${len} is outside ${MIN_FRAME}..${this.maxFrame}`;
          throw new FramingError(this.#failed);
        }
        this.#lenHave = 0;
        // Whole frame in this chunk: one copy, no partial state.
        if (chunk.length - at >= len) {
          out.push(Buffer.from(chunk.subarray(at, at + len)));
          at += len;
          continue;
        }
        this.#frame = Buffer.allocUnsafe(len);
        this.#frameHave = 0;
      }
      const f = this.#frame;
      const take = Math.min(f.length - this.#frameHave, chunk.length - at);
      f.set(chunk.subarray(at, at + take), this.#frameHave);
      this.#frameHave += take;
      at += take;
      if (this.#frameHave === f.length) {
        out.push(f);
        this.#frame = null;
      }
    }
    return out;
  }
}
