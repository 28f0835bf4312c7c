// Turns what a guest puts on the balloon queues into guest-physical page ranges the
// host may discard. All of it is guest-controlled: every range is checked (4 KiB
// aligned, non-empty, inside one RAM region, clear of the MMIO hole) before anything is
// discarded, and a bad one yields a reason, never an exception.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { MMIO_GAP_END, MMIO_GAP_START } from '../../memory/layout.js';
import { fail, ok, type ParseResult } from '../../../netstack/result.js';
import { gather } from '../iovec.js';
import { BALLOON_PAGE_SIZE } from './constants.js';

/**
 * What the balloon needs of guest RAM: its regions and checked views (to map chain
 * buffers back to guest addresses) and `discard`. GuestMemory has all of it.
 */
export type BalloonMemory = Pick<GuestMemory, 'regions' | 'contains' | 'slice' | 'discard'>;

/** A guest-physical range of whole 4 KiB pages: `addr` and `len` in bytes. */
export interface PageRange {
  readonly addr: number;
  readonly len: number;
}

/** Ranges that all passed the checks, or why the request is refused (netstack's result shape). */
export type RangeResult = ParseResult<PageRange[]>;

const hex = (n: number): string => `0x${n.toString(16)}`;

/** Why [addr, addr+len) may not be discarded, or null when it may. Never throws. */
export function checkRange(memory: Pick<GuestMemory, 'contains'>, addr: number, len: number): string | null {
  if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len <= 0) return `range ${hex(addr)}+${len} is empty or not a number`;
  if (addr % BALLOON_PAGE_SIZE !== 0 || len % BALLOON_PAGE_SIZE !== 0) return `range ${hex(addr)}+${len} is not 4 KiB-aligned`;
  if (addr < MMIO_GAP_END && addr + len > MMIO_GAP_START) return `range ${hex(addr)}+${len} overlaps the MMIO hole`;
  if (!memory.contains(addr, len)) return `range ${hex(addr)}+${len} is outside guest RAM`;
  return null;
}

interface RegionView {
  readonly guestAddress: number;
  readonly buffer: ArrayBufferLike;
  readonly start: number;
  readonly end: number;
}

/**
 * Maps a zero-copy view of guest RAM (a DescriptorChain buffer, which the queue has
 * already bounds-checked) back to the guest-physical address it starts at.
 */
export class ViewLocator {
  readonly #regions: RegionView[];

  constructor(memory: Pick<GuestMemory, 'regions' | 'slice'>) {
    this.#regions = memory.regions.map((r) => {
      const v = memory.slice(r.guestAddress, r.size);
      return { guestAddress: r.guestAddress, buffer: v.buffer, start: v.byteOffset, end: v.byteOffset + v.byteLength };
    });
  }

  /** Guest address of `view`'s first byte, or null when it is not a view of this RAM. */
  locate(view: Uint8Array): number | null {
    const from = view.byteOffset;
    const to = from + view.byteLength;
    for (const r of this.#regions) {
      if (view.buffer === r.buffer && from >= r.start && to <= r.end) return r.guestAddress + (from - r.start);
    }
    return null;
  }
}

/**
 * The free-page-reporting ranges of one chain (§5.5.6.7): each buffer is itself a run
 * of free guest pages. Refused when there are more than `maxBuffers` buffers or any
 * buffer fails checkRange.
 */
export function reportedRanges(memory: BalloonMemory, locator: ViewLocator, buffers: readonly Uint8Array[], maxBuffers: number): RangeResult {
  if (buffers.length === 0) return fail('report chain has no buffers');
  if (buffers.length > maxBuffers) return fail(`report chain has ${buffers.length} buffers, more than ${maxBuffers}`);
  const ranges: PageRange[] = [];
  for (const b of buffers) {
    const addr = locator.locate(b);
    if (addr === null) return fail('report buffer is not a view of guest RAM');
    const why = checkRange(memory, addr, b.byteLength);
    if (why !== null) return fail(why);
    ranges.push({ addr, len: b.byteLength });
  }
  return ok(ranges);
}

/**
 * The pages named by an inflate or deflate chain: an array of le32 page frame numbers
 * in 4 KiB units (§5.5.6), possibly spread over several buffers. The numbers are copied
 * out of guest memory first (the guest may rewrite them meanwhile), sorted, duplicates
 * dropped and neighbours joined into runs that stay inside one region. Refused when
 * the array is empty, not whole u32s, longer than `maxPfns`, or any page fails
 * checkRange.
 */
export function pfnRanges(memory: BalloonMemory, buffers: readonly Uint8Array[], maxPfns: number): RangeResult {
  let bytes = 0;
  for (const b of buffers) bytes += b.byteLength;
  if (bytes === 0 || bytes % 4 !== 0) return fail(`page frame array of ${bytes} bytes is not a non-empty array of u32`);
  if (bytes / 4 > maxPfns) return fail(`page frame array has ${bytes / 4} entries, more than ${maxPfns}`);
  const raw = gather(buffers, 0, bytes, new Uint8Array(bytes));
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const pfns = new Uint32Array(bytes / 4);
  for (let i = 0; i < pfns.length; i++) pfns[i] = view.getUint32(4 * i, true);
  pfns.sort();
  const ranges: PageRange[] = [];
  let runAddr = -1;
  let runLen = 0;
  let last = -1;
  for (const pfn of pfns) {
    if (pfn === last) continue;
    const addr = pfn * BALLOON_PAGE_SIZE;
    const why = checkRange(memory, addr, BALLOON_PAGE_SIZE);
    if (why !== null) return fail(`page frame ${pfn}: ${why}`);
    if (runLen > 0 && pfn === last + 1 && memory.contains(runAddr, runLen + BALLOON_PAGE_SIZE)) {
      runLen += BALLOON_PAGE_SIZE;
    } else {
      if (runLen > 0) ranges.push({ addr: runAddr, len: runLen });
      runAddr = addr;
      runLen = BALLOON_PAGE_SIZE;
    }
    last = pfn;
  }
  if (runLen > 0) ranges.push({ addr: runAddr, len: runLen });
  return ok(ranges);
}
