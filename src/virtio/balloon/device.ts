// virtio-balloon (device id 5, virtio 1.2 §5.5) with free page reporting. The host
// sets a target (config num_pages) and the guest inflates toward it by giving pages
// on the inflate queue; with PAGE_REPORTING the guest also reports runs of free pages
// on the reporting queue. Both kinds of page are handed back to the host kernel
// (GuestMemory.discard: MADV_DONTNEED / hole punch), so an idle guest stops costing
// host RAM it is not using. Deflate needs nothing: a discarded page comes back, zeroed,
// when the guest touches it. No statistics queue (STATS_VQ is not offered).
import { TsiboxError } from '../../errors.js';
import type { DeviceContext, VirtioDevice } from '../device.js';
import { readConfigBytes } from '../device.js';
import type { Virtqueue } from '../queue.js';
import { BALLOON_DEVICE_ID, BALLOON_PAGE_SIZE, BalloonConfig, BalloonFeature, BalloonQueue } from './constants.js';
import { pfnRanges, reportedRanges, ViewLocator, type BalloonMemory, type PageRange } from './ranges.js';

/** Page frame numbers one inflate/deflate chain may carry (Linux sends at most 256). */
const MAX_PFNS_PER_CHAIN = 16384;
/** Buffers one report chain may carry (Linux sends at most 32). */
const MAX_REPORT_BUFFERS = 256;
/** Linux refuses a reporting queue smaller than 32 entries (PAGE_REPORTING_CAPACITY). */
const REPORTING_QUEUE_SIZE = 64;
const U32_MAX = 0xffff_ffff;

export interface BalloonOptions {
  /** The guest RAM the transport uses; discards happen here. */
  memory: BalloonMemory;
  /** Size of the inflate and deflate queues (default 256). */
  queueSize?: number;
  /** Offer DEFLATE_ON_OOM: the guest may take pages back when it runs out of memory (default true). */
  deflateOnOom?: boolean;
}

/** Counters since creation. Bytes are guest bytes; pages are 4 KiB pages. */
export interface BalloonStats {
  /** Pages the guest gave on the inflate queue (each discarded). */
  inflatedPages: number;
  /** Pages the guest took back on the deflate queue. */
  deflatedPages: number;
  /** Bytes the guest reported free on the reporting queue (each discarded). */
  reportedBytes: number;
  /** Chains refused as hostile (bad range, too long): the queue was marked broken. */
  refusedChains: number;
  /** Discards the host kernel refused (SYSCALL): the pages stay, the chain is still used. */
  discardErrors: number;
}

export class BalloonDevice implements VirtioDevice {
  readonly deviceId = BALLOON_DEVICE_ID;
  readonly features: bigint;
  /** inflateq, deflateq, reporting (Linux numbering), unused, reporting (§5.5.2 numbering). */
  readonly queueSizes: readonly number[];
  readonly #memory: BalloonMemory;
  readonly #config = new Uint8Array(BalloonConfig.SIZE);
  readonly #configView = new DataView(this.#config.buffer);
  readonly #stats: BalloonStats = { inflatedPages: 0, deflatedPages: 0, reportedBytes: 0, refusedChains: 0, discardErrors: 0 };
  #ctx: DeviceContext | null = null;
  #locator: ViewLocator | null = null;

  constructor(opts: BalloonOptions) {
    this.#memory = opts.memory;
    this.features = BalloonFeature.PAGE_REPORTING | (opts.deflateOnOom === false ? 0n : BalloonFeature.DEFLATE_ON_OOM);
    const size = opts.queueSize ?? 256;
    this.queueSizes = [size, size, REPORTING_QUEUE_SIZE, 0, REPORTING_QUEUE_SIZE];
  }

  /** The number of 4 KiB pages the host wants in the balloon (config num_pages). */
  get targetPages(): number {
    return this.#configView.getUint32(BalloonConfig.NUM_PAGES, true);
  }

  /** The number of 4 KiB pages the guest says are in the balloon (config actual, driver-written). */
  get actualPages(): number {
    return this.#configView.getUint32(BalloonConfig.ACTUAL, true);
  }

  stats(): BalloonStats {
    return { ...this.#stats };
  }

  /**
   * Asks the guest to hold `pages` 4 KiB pages in the balloon (§5.5.6: num_pages): the
   * driver inflates while actual < num_pages and may deflate while actual > num_pages.
   * Raises a configuration change interrupt when the driver is live (before that, the
   * driver reads it at initialization). Throws INVALID_ARGUMENT unless 0 ≤ pages < 2^32.
   */
  setTarget(pages: number): void {
    if (!Number.isSafeInteger(pages) || pages < 0 || pages > U32_MAX) {
      throw new TsiboxError('INVALID_ARGUMENT', `balloon target must be a whole number of pages in 0..${U32_MAX}, got ${pages}`);
    }
    if (pages === this.targetPages) return;
    this.#configView.setUint32(BalloonConfig.NUM_PAGES, pages, true);
    this.#ctx?.configChanged();
  }

  // ---- VirtioDevice ----

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.#config, offset, data);
  }

  /** Only `actual` is driver-writable; byte-wise writes of it are taken as they come. */
  writeConfig(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) {
      const at = offset + i;
      if (at >= BalloonConfig.ACTUAL && at < BalloonConfig.ACTUAL + 4) this.#config[at] = data[i]!;
    }
  }

  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    this.#locator = new ViewLocator(this.#memory);
    // Chains posted before DRIVER_OK are served now.
    ctx.queues.forEach((q, i) => { if (q !== null) this.queueNotify(i); });
  }

  /** Driver reset: `actual` goes back to 0 (the balloon is empty again); the host's target stays. */
  reset(): void {
    this.#ctx = null;
    this.#locator = null;
    this.#configView.setUint32(BalloonConfig.ACTUAL, 0, true);
  }

  queueNotify(index: number): void {
    const ctx = this.#ctx;
    const q = ctx?.queues[index];
    if (ctx === null || q === undefined || q === null) return;
    switch (index) {
      case BalloonQueue.INFLATE: this.#serve(ctx, q, (chain) => this.#inflate(ctx, q, chain.readable)); break;
      case BalloonQueue.DEFLATE: this.#serve(ctx, q, (chain) => this.#deflate(q, chain.readable)); break;
      case BalloonQueue.REPORTING_COMPACT:
      case BalloonQueue.REPORTING:
        this.#serve(ctx, q, (chain) => this.#report(ctx, q, [...chain.readable, ...chain.writable]));
        break;
      default:
    }
  }

  /**
   * Handles every available chain (at most one queue's worth per call; the rest on the
   * next turn of the event loop). `handle` returns false when it refused the chain and
   * broke the queue.
   */
  #serve(ctx: DeviceContext, q: Virtqueue, handle: (chain: { readable: readonly Uint8Array[]; writable: readonly Uint8Array[] }) => boolean): void {
    let served = 0;
    for (let chain = q.pop(); chain !== null; chain = served < q.size ? q.pop() : null) {
      if (!handle(chain)) return;
      q.addUsed(chain.head, 0);
      served++;
    }
    if (served > 0) ctx.signalUsed(q);
    if (served >= q.size && q.pending() > 0) {
      setImmediate(() => { if (this.#ctx === ctx) this.queueNotify(q.index); });
    }
  }

  #inflate(ctx: DeviceContext, q: Virtqueue, buffers: readonly Uint8Array[]): boolean {
    const r = pfnRanges(this.#memory, buffers, MAX_PFNS_PER_CHAIN);
    if (!r.ok) return this.#refuse(q, `inflate: ${r.error}`);
    this.#discard(ctx, r.value);
    for (const p of r.value) this.#stats.inflatedPages += p.len / BALLOON_PAGE_SIZE;
    return true;
  }

  #deflate(q: Virtqueue, buffers: readonly Uint8Array[]): boolean {
    // Nothing to give back: the pages fault in again on touch. Still checked, so a
    // hostile array is refused the same way on both queues.
    const r = pfnRanges(this.#memory, buffers, MAX_PFNS_PER_CHAIN);
    if (!r.ok) return this.#refuse(q, `deflate: ${r.error}`);
    for (const p of r.value) this.#stats.deflatedPages += p.len / BALLOON_PAGE_SIZE;
    return true;
  }

  #report(ctx: DeviceContext, q: Virtqueue, buffers: readonly Uint8Array[]): boolean {
    const locator = this.#locator;
    if (locator === null) return false;
    const r = reportedRanges(this.#memory, locator, buffers, MAX_REPORT_BUFFERS);
    if (!r.ok) return this.#refuse(q, `report: ${r.error}`);
    this.#discard(ctx, r.value);
    for (const p of r.value) this.#stats.reportedBytes += p.len;
    return true;
  }

  /** Every range was checked first, so nothing is discarded for a refused chain. */
  #discard(ctx: DeviceContext, ranges: readonly PageRange[]): void {
    for (const p of ranges) {
      try {
        this.#memory.discard(p.addr, p.len);
      } catch (err) {
        // A host-side failure (e.g. EPERM on a write-sealed memfd): not the guest's fault.
        if (this.#stats.discardErrors++ === 0) ctx.log.warn({ err, addr: p.addr, len: p.len }, 'balloon: discard failed; pages stay');
      }
    }
  }

  #refuse(q: Virtqueue, reason: string): false {
    this.#stats.refusedChains++;
    q.invalidate(reason);
    return false;
  }
}
