// Device side of a split virtqueue. Devices see validated descriptor chains (views of
// guest buffers), never ring memory. Every guest-controlled value is checked before it
// is used as an address or an index; a broken rule marks the queue broken and reports
// the reason once through `onInvalid` (the transport then sets DEVICE_NEEDS_RESET).
// Nothing here throws because of what the guest wrote.
import { TsiboxError } from '../errors.js';
import { Desc, MAX_QUEUE_SIZE, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY } from './constants.js';
import { fullFence } from './fence.js';
import type { VirtioMemory } from './memory.js';

/** Guest-physical layout of one split ring, as the driver programmed it. */
export interface QueueLayout {
  readonly size: number;
  readonly descAddr: number;
  readonly availAddr: number;
  readonly usedAddr: number;
}

export interface QueueFeatures {
  readonly eventIdx: boolean;
  readonly indirect: boolean;
}

/** One request: the guest's readable buffers, then its writable buffers. */
export interface DescriptorChain {
  /** Head descriptor index; give it back to `Virtqueue.addUsed`. */
  readonly head: number;
  /** Device-readable buffers (zero-copy views of guest RAM), in chain order. */
  readonly readable: readonly Uint8Array[];
  /** Device-writable buffers (zero-copy views of guest RAM), in chain order. */
  readonly writable: readonly Uint8Array[];
  readonly readableBytes: number;
  readonly writableBytes: number;
}

const U32_MAX = 0xffff_ffff;
// Descriptor addresses are u64; above 2^53 they cannot be RAM (and are not exact numbers).
const ADDR_HI_LIMIT = 0x20_0000;

/** Bytes each ring part occupies for `size` entries (split ring, with event fields). */
export function ringSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: Desc.SIZE * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

/**
 * Checks a ring layout the driver wants to enable. Returns a reason, or null if valid.
 */
export function checkLayout(layout: QueueLayout, maxSize: number, memory: VirtioMemory): string | null {
  const { size, descAddr, availAddr, usedAddr } = layout;
  if (size === 0 || size > maxSize || size > MAX_QUEUE_SIZE || (size & (size - 1)) !== 0) {
    return `queue size ${size} is not a power of two in 1..${maxSize}`;
  }
  const sizes = ringSizes(size);
  if (descAddr % 16 !== 0 || availAddr % 2 !== 0 || usedAddr % 4 !== 0) {
    return `ring addresses misaligned (desc 0x${descAddr.toString(16)}, avail 0x${availAddr.toString(16)}, used 0x${usedAddr.toString(16)})`;
  }
  if (!memory.contains(descAddr, sizes.desc)) return `descriptor table 0x${descAddr.toString(16)}+${sizes.desc} outside RAM`;
  if (!memory.contains(availAddr, sizes.avail)) return `avail ring 0x${availAddr.toString(16)}+${sizes.avail} outside RAM`;
  if (!memory.contains(usedAddr, sizes.used)) return `used ring 0x${usedAddr.toString(16)}+${sizes.used} outside RAM`;
  return null;
}

/** virtio's vring_need_event: has `newIdx` moved past `eventIdx` since `oldIdx`? */
export function needEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/**
 * A guest's ring broke a virtio rule (code VIRTQUEUE_INVALID). Virtqueue throws it only
 * inside its chain walk and turns it into `invalidate(reason)`; a device may throw it
 * too, which its transport takes as the guest's fault, not a device bug.
 */
export class InvalidQueue extends TsiboxError {
  readonly reason: string;

  constructor(reason: string) {
    super('VIRTQUEUE_INVALID', reason);
    this.name = 'InvalidQueue';
    this.reason = reason;
  }
}

export class Virtqueue {
  readonly index: number;
  readonly size: number;
  readonly #memory: VirtioMemory;
  readonly #layout: QueueLayout;
  readonly #features: QueueFeatures;
  readonly #onInvalid: (reason: string) => void;
  /** Free-running 16-bit counters. */
  #lastAvail = 0;
  #usedIdx = 0;
  /** Used index when we last decided about an interrupt (EVENT_IDX bookkeeping). */
  #signalledUsed = 0;
  #broken: string | null = null;

  constructor(index: number, layout: QueueLayout, features: QueueFeatures, memory: VirtioMemory, onInvalid: (reason: string) => void) {
    this.index = index;
    this.size = layout.size;
    this.#layout = layout;
    this.#features = features;
    this.#memory = memory;
    this.#onInvalid = onInvalid;
  }

  /** Why the queue stopped, or null while it works. */
  get broken(): string | null {
    return this.#broken;
  }

  /** Where the device will read the avail ring next (vhost-user GET_VRING_BASE reports it). */
  get lastAvailIndex(): number {
    return this.#lastAvail;
  }

  /**
   * Continues a ring that already ran (vhost-user SET_VRING_BASE with a non-zero base):
   * the next avail entry is `lastAvail`, the used index is what the ring holds now.
   */
  resumeAt(lastAvail: number): void {
    this.#lastAvail = lastAvail & 0xffff;
    this.#usedIdx = this.#memory.readU16(this.#layout.usedAddr + 2);
    this.#signalledUsed = this.#usedIdx;
  }

  /** Marks the queue unusable (the device or the transport saw a rule broken). */
  invalidate(reason: string): void {
    if (this.#broken !== null) return;
    this.#broken = reason;
    this.#onInvalid(`queue ${this.index}: ${reason}`);
  }

  /** Stops the queue without reporting (the driver reset the device). */
  close(): void {
    this.#broken ??= 'closed by reset';
  }

  /** Number of chains the driver made available and we have not taken yet (0 if broken). */
  pending(): number {
    if (this.#broken !== null) return 0;
    const n = (this.#memory.readU16(this.#layout.availAddr + 2) - this.#lastAvail) & 0xffff;
    if (n > this.size) {
      this.invalidate(`avail idx moved ${n} entries past the last one seen, more than the queue size ${this.size}`);
      return 0;
    }
    return n;
  }

  /**
   * Takes the next available chain, or null when there is none (or the queue is
   * broken). When the ring runs dry, notifications are re-armed before re-checking,
   * so a buffer added concurrently is never missed.
   */
  pop(): DescriptorChain | null {
    let n = this.pending();
    if (n === 0) {
      if (this.#broken !== null) return null;
      this.#armNotification();
      // avail_event must be visible before we look at avail idx again (see fence.ts).
      fullFence();
      n = this.pending();
      if (n === 0) return null;
    }
    const slot = this.#layout.availAddr + 4 + 2 * (this.#lastAvail % this.size);
    const head = this.#memory.readU16(slot);
    try {
      const chain = this.#walk(head);
      this.#lastAvail = (this.#lastAvail + 1) & 0xffff;
      return chain;
    } catch (e) {
      if (!(e instanceof InvalidQueue)) throw e;
      this.invalidate(e.reason);
      return null;
    }
  }

  #walk(head: number): DescriptorChain {
    if (head >= this.size) throw new InvalidQueue(`avail ring names head ${head}, queue size is ${this.size}`);
    const mem = this.#memory;
    const readable: Uint8Array[] = [];
    const writable: Uint8Array[] = [];
    let readableBytes = 0;
    let writableBytes = 0;
    let table = this.#layout.descAddr;
    let tableSize = this.size;
    let indirect = false;
    // Steps within the current table; more steps than entries means a loop.
    let steps = 0;
    let i = head;
    for (;;) {
      if (++steps > tableSize) {
        throw new InvalidQueue(`descriptor chain from head ${head} is longer than its table (${tableSize}): a loop`);
      }
      const d = table + Desc.SIZE * i;
      const lo = mem.readU32(d);
      const hi = mem.readU32(d + 4);
      const len = mem.readU32(d + 8);
      const flags = mem.readU16(d + 12);
      const next = mem.readU16(d + 14);
      if (hi >= ADDR_HI_LIMIT) throw new InvalidQueue(`descriptor ${i} address 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} is not RAM`);
      const addr = hi * 0x1_0000_0000 + lo;

      if ((flags & Desc.INDIRECT) !== 0) {
        if (!this.#features.indirect) throw new InvalidQueue(`descriptor ${i} is indirect but INDIRECT_DESC was not negotiated`);
        if (indirect) throw new InvalidQueue(`indirect descriptor inside an indirect table`);
        if ((flags & Desc.NEXT) !== 0) throw new InvalidQueue(`descriptor ${i} has both INDIRECT and NEXT`);
        if (len === 0 || len % Desc.SIZE !== 0 || len / Desc.SIZE > MAX_QUEUE_SIZE) {
          throw new InvalidQueue(`indirect table length ${len} is not a multiple of 16 in 16..${MAX_QUEUE_SIZE * 16}`);
        }
        // No alignment rule for indirect tables (virtio 1.2 §2.7.5.3): Linux kmallocs them
        // and hands out 8-byte-aligned ones (seen from the balloon's 23-entry reports).
        if (!mem.contains(addr, len)) throw new InvalidQueue(`indirect table 0x${addr.toString(16)}+${len} outside RAM`);
        table = addr;
        tableSize = len / Desc.SIZE;
        indirect = true;
        steps = 0;
        i = 0;
        continue;
      }

      if (!mem.contains(addr, len)) throw new InvalidQueue(`descriptor ${i} buffer 0x${addr.toString(16)}+${len} outside RAM`);
      if ((flags & Desc.WRITE) !== 0) {
        writableBytes += len;
        writable.push(mem.slice(addr, len));
      } else {
        if (writable.length > 0) throw new InvalidQueue(`descriptor ${i} is readable after a writable one`);
        readableBytes += len;
        readable.push(mem.slice(addr, len));
      }
      if (readableBytes + writableBytes > U32_MAX) throw new InvalidQueue(`chain from head ${head} is longer than 4 GiB`);
      if ((flags & Desc.NEXT) === 0) break;
      if (next >= tableSize) throw new InvalidQueue(`descriptor ${i} next ${next} is outside its table (${tableSize})`);
      i = next;
    }
    return { head, readable, writable, readableBytes, writableBytes };
  }

  /** Puts a chain back on the avail side (the device could not use it yet). */
  unpop(): void {
    this.#lastAvail = (this.#lastAvail - 1) & 0xffff;
  }

  /** Returns a chain to the driver with `written` bytes put into its writable buffers. */
  addUsed(head: number, written: number): void {
    if (this.#broken !== null) return;
    const mem = this.#memory;
    const used = this.#layout.usedAddr;
    const elem = used + 4 + 8 * (this.#usedIdx % this.size);
    mem.writeU32(elem, head);
    mem.writeU32(elem + 4, written);
    // The element is written before the index: the driver reads idx, then the element.
    this.#usedIdx = (this.#usedIdx + 1) & 0xffff;
    mem.writeU16(used + 2, this.#usedIdx);
  }

  /**
   * Should the driver be interrupted for the used entries added since the last call?
   * Honours VRING_AVAIL_F_NO_INTERRUPT, or used_event under EVENT_IDX.
   */
  needsInterrupt(): boolean {
    if (this.#broken !== null) return false;
    const old = this.#signalledUsed;
    const now = this.#usedIdx;
    this.#signalledUsed = now;
    if (old === now) return false;
    // Our used idx must be visible before we read the driver's suppression field, or a
    // driver re-enabling interrupts and a device reading its stale field both sleep.
    fullFence();
    const mem = this.#memory;
    if (this.#features.eventIdx) {
      const usedEvent = mem.readU16(this.#layout.availAddr + 4 + 2 * this.size);
      return needEvent(usedEvent, now, old);
    }
    return (mem.readU16(this.#layout.availAddr) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Asks the driver to stop kicking (while the device is busy or cannot take more)
   * or to kick again. Under EVENT_IDX suppression is implicit: avail_event is only
   * moved forward when the ring runs dry.
   */
  setNotification(enabled: boolean): void {
    if (this.#broken !== null) return;
    if (this.#features.eventIdx) {
      if (enabled) this.#armNotification();
      return;
    }
    this.#memory.writeU16(this.#layout.usedAddr, enabled ? 0 : VRING_USED_F_NO_NOTIFY);
  }

  #armNotification(): void {
    if (this.#features.eventIdx) {
      this.#memory.writeU16(this.#layout.usedAddr + 4 + 8 * this.size, this.#lastAvail);
    }
  }
}
