// A test device that records every chain it pops and answers by writing the
// concatenated readable bytes, reversed, into the writable buffers.
import type { DeviceContext, VirtioDevice } from '../../src/virtio/device.js';

export interface Seen {
  head: number;
  readable: Uint8Array[];
  writableLens: number[];
}

export class RecordingDevice implements VirtioDevice {
  readonly deviceId = 0xfffe;
  readonly features = 0n;
  readonly queueSizes: readonly number[];
  ctx: DeviceContext | null = null;
  seen: Seen[] = [];
  /** When false, chains are popped but not completed. */
  complete = true;

  constructor(queueSize = 8) {
    this.queueSizes = [queueSize];
  }

  readConfig(_o: number, data: Uint8Array): void { data.fill(0); }
  writeConfig(): void {}
  activate(ctx: DeviceContext): void { this.ctx = ctx; }
  reset(): void { this.ctx = null; }

  queueNotify(index: number): void {
    const q = this.ctx?.queues[index];
    if (!q || !this.ctx) return;
    let any = false;
    for (let c = q.pop(); c !== null; c = q.pop()) {
      const readable = c.readable.map((b) => b.slice());
      this.seen.push({ head: c.head, readable, writableLens: c.writable.map((b) => b.length) });
      if (!this.complete) continue;
      const all = Buffer.concat(readable).reverse();
      let at = 0;
      for (const w of c.writable) {
        const n = Math.min(w.length, all.length - at);
        w.set(all.subarray(at, at + n));
        at += n;
      }
      q.addUsed(c.head, at);
      any = true;
    }
    if (any) this.ctx.signalUsed(q);
  }
}
