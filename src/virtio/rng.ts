// virtio-rng (device id 4): fills every writable buffer the guest posts with bytes
// from the host CSPRNG. One queue, no config, no device features.
import { randomFillSync } from 'node:crypto';
import { DeviceId } from './constants.js';
import type { DeviceContext, VirtioDevice } from './device.js';

/** Upper bound on bytes served per request, so one chain cannot stall the loop. */
const MAX_REQUEST_BYTES = 64 * 1024;

export class RngDevice implements VirtioDevice {
  readonly deviceId = DeviceId.RNG;
  readonly features = 0n;
  readonly queueSizes: readonly number[];
  #ctx: DeviceContext | null = null;
  /** Bytes handed to the guest since creation (for tests and stats). */
  bytesServed = 0;

  constructor(opts: { queueSize?: number } = {}) {
    this.queueSizes = [opts.queueSize ?? 256];
  }

  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  writeConfig(): void {
    // No config space.
  }

  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
  }

  reset(): void {
    this.#ctx = null;
  }

  queueNotify(index: number): void {
    const ctx = this.#ctx;
    const q = ctx?.queues[index];
    if (ctx === null || q === undefined || q === null) return;
    let served = 0;
    for (let chain = q.pop(); chain !== null; chain = q.pop()) {
      let budget = MAX_REQUEST_BYTES;
      let written = 0;
      for (const buf of chain.writable) {
        if (budget === 0) break;
        const part = buf.length <= budget ? buf : buf.subarray(0, budget);
        randomFillSync(part);
        written += part.length;
        budget -= part.length;
      }
      q.addUsed(chain.head, written);
      this.bytesServed += written;
      served++;
    }
    if (served > 0) ctx.signalUsed(q);
  }
}
