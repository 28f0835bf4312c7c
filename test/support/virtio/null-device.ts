// A device that completes every request without touching its buffers: the floor
// cost of the transport and the ring walk (benchmarks, fuzzing).
import type { DeviceContext, VirtioDevice } from '../../../src/virtio/device.js';

export class NullDevice implements VirtioDevice {
  /** Not a registered virtio id; only test drivers bind to it. */
  readonly deviceId = 0xffff;
  readonly features = 0n;
  readonly queueSizes: readonly number[];
  #ctx: DeviceContext | null = null;
  completed = 0;

  constructor(opts: { queueSize?: number; queues?: number } = {}) {
    this.queueSizes = new Array<number>(opts.queues ?? 1).fill(opts.queueSize ?? 256);
  }

  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }

  writeConfig(): void {}

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
    let n = 0;
    for (let chain = q.pop(); chain !== null; chain = q.pop()) {
      q.addUsed(chain.head, chain.writableBytes);
      n++;
    }
    this.completed += n;
    if (n > 0) ctx.signalUsed(q);
  }
}
