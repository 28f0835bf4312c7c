// A software virtio driver that plays the guest: it programs the MMIO registers, lays
// out split rings in guest memory, posts buffers, kicks and reaps. It lets every device
// be tested (and benchmarked, and fuzzed) without KVM. Low-level helpers (writeDesc,
// publish, setAvailIdx) let hostile tests write whatever a malicious guest would.
import type { GuestMemory } from '../../../src/memory/guest-memory.js';
import type { BusDevice } from '../../../src/vmm/bus.js';
import { Desc, Feature, Reg, Status, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY } from '../../../src/virtio/constants.js';
import type { InterruptLine } from '../../../src/virtio/device.js';
import { needEvent, ringSizes } from '../../../src/virtio/queue.js';

/** An interrupt line that counts triggers (the software driver's "IRQ"). */
export class CountingInterrupt implements InterruptLine {
  count = 0;
  onTrigger: (() => void) | null = null;
  trigger(): void {
    this.count++;
    this.onTrigger?.();
  }
}

/** The transport as the driver sees it: registers, plus the ioeventfd-style kick. */
export interface DriverTransport extends BusDevice {
  notify(index: number): void;
}

export interface DriverOptions {
  /** Start of guest memory the driver may use for rings and buffers. */
  arenaBase?: number;
  arenaSize?: number;
  /** Kick through a QueueNotify register write (default) or transport.notify(). */
  kick?: 'register' | 'direct';
}

export interface UsedBuffer {
  head: number;
  len: number;
  /** Copies of the chain's writable buffers, cut to `len` bytes in total. */
  data: Uint8Array;
}

export class SoftwareDriver {
  readonly memory: GuestMemory;
  readonly transport: DriverTransport;
  readonly kickMode: 'register' | 'direct';
  #next: number;
  readonly #end: number;
  #negotiated = 0n;
  readonly #word = new Uint8Array(4);
  readonly #wordView = new DataView(this.#word.buffer);

  constructor(transport: DriverTransport, memory: GuestMemory, opts: DriverOptions = {}) {
    this.transport = transport;
    this.memory = memory;
    this.#next = opts.arenaBase ?? 0x10000;
    this.#end = this.#next + (opts.arenaSize ?? memory.size - this.#next);
    this.kickMode = opts.kick ?? 'register';
  }

  get negotiated(): bigint {
    return this.#negotiated;
  }

  readReg(offset: number): number {
    this.transport.read(offset, this.#word);
    return this.#wordView.getUint32(0, true);
  }

  writeReg(offset: number, value: number): void {
    this.#wordView.setUint32(0, value >>> 0, true);
    this.transport.write(offset, this.#word);
  }

  readConfig(offset: number, len: number): Uint8Array {
    const data = new Uint8Array(len);
    this.transport.read(Reg.Config + offset, data);
    return data;
  }

  get status(): number {
    return this.readReg(Reg.Status);
  }

  addStatus(bits: number): void {
    this.writeReg(Reg.Status, this.status | bits);
  }

  reset(): void {
    this.writeReg(Reg.Status, 0);
  }

  deviceFeatures(): bigint {
    this.writeReg(Reg.DeviceFeaturesSel, 0);
    const lo = this.readReg(Reg.DeviceFeatures);
    this.writeReg(Reg.DeviceFeaturesSel, 1);
    const hi = this.readReg(Reg.DeviceFeatures);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  writeDriverFeatures(features: bigint): void {
    this.writeReg(Reg.DriverFeaturesSel, 0);
    this.writeReg(Reg.DriverFeatures, Number(features & 0xffff_ffffn));
    this.writeReg(Reg.DriverFeaturesSel, 1);
    this.writeReg(Reg.DriverFeatures, Number((features >> 32n) & 0xffff_ffffn));
  }

  /**
   * Reset, ACKNOWLEDGE, DRIVER, accept `wanted & offered`, FEATURES_OK. Returns the
   * features agreed; throws if the device refused FEATURES_OK.
   */
  negotiate(wanted: bigint = ~0n): bigint {
    this.reset();
    this.addStatus(Status.ACKNOWLEDGE);
    this.addStatus(Status.DRIVER);
    const features = this.deviceFeatures() & wanted & 0xffff_ffff_ffff_ffffn;
    this.writeDriverFeatures(features);
    this.addStatus(Status.FEATURES_OK);
    if ((this.status & Status.FEATURES_OK) === 0) throw new Error('device refused FEATURES_OK');
    this.#negotiated = features;
    return features;
  }

  /** Allocates driver memory (rings, buffers) from the arena. */
  alloc(len: number, align = 16): number {
    const addr = Math.ceil(this.#next / align) * align;
    if (addr + len > this.#end) throw new Error(`driver arena exhausted (${len} bytes)`);
    this.#next = addr + len;
    return addr;
  }

  /** Lays out queue `index` in guest memory and enables it. */
  setupQueue(index: number, opts: { size?: number; slotSize?: number } = {}): DriverQueue {
    this.writeReg(Reg.QueueSel, index);
    const max = this.readReg(Reg.QueueNumMax);
    const size = opts.size ?? max;
    const sizes = ringSizes(size);
    const desc = this.alloc(sizes.desc, 16);
    const avail = this.alloc(sizes.avail, 2);
    const used = this.alloc(sizes.used, 4);
    const slotSize = opts.slotSize ?? 4096;
    const data = this.alloc(size * slotSize, 16);
    const indirect = this.alloc(size * INDIRECT_MAX * Desc.SIZE, 16);
    this.memory.fill(desc, sizes.desc, 0);
    this.memory.fill(avail, sizes.avail, 0);
    this.memory.fill(used, sizes.used, 0);
    this.writeReg(Reg.QueueNum, size);
    this.writeReg(Reg.QueueDescLow, desc);
    this.writeReg(Reg.QueueDescHigh, 0);
    this.writeReg(Reg.QueueDriverLow, avail);
    this.writeReg(Reg.QueueDriverHigh, 0);
    this.writeReg(Reg.QueueDeviceLow, used);
    this.writeReg(Reg.QueueDeviceHigh, 0);
    this.writeReg(Reg.QueueReady, 1);
    const eventIdx = (this.#negotiated & Feature.RING_EVENT_IDX) !== 0n;
    return new DriverQueue(this, index, { size, desc, avail, used, data, slotSize, indirect, eventIdx });
  }

  driverOk(): void {
    this.addStatus(Status.DRIVER_OK);
  }

  kick(index: number): void {
    if (this.kickMode === 'direct') this.transport.notify(index);
    else this.writeReg(Reg.QueueNotify, index);
  }

  /** Reads and acknowledges the interrupt status; returns the bits that were set. */
  ackInterrupt(): number {
    const bits = this.readReg(Reg.InterruptStatus);
    if (bits !== 0) this.writeReg(Reg.InterruptAck, bits);
    return bits;
  }
}

/** Entries per indirect table the driver reserves for each head. */
export const INDIRECT_MAX = 16;

interface QueueAddrs {
  size: number;
  desc: number;
  avail: number;
  used: number;
  data: number;
  slotSize: number;
  indirect: number;
  eventIdx: boolean;
}

export interface AddOptions {
  /** Put the chain in an indirect table (one ring descriptor). */
  indirect?: boolean;
}

export class DriverQueue {
  readonly index: number;
  readonly addrs: QueueAddrs;
  readonly #driver: SoftwareDriver;
  readonly #mem: GuestMemory;
  /** Free descriptor indices (a stack). */
  #free: number[];
  /** Descriptors and writable buffers of each chain in flight, by head. */
  #inflight = new Map<number, { descs: number[]; writable: Array<[number, number]> }>();
  #availIdx = 0;
  #lastUsed = 0;
  #kickedAt = 0;

  constructor(driver: SoftwareDriver, index: number, addrs: QueueAddrs) {
    this.#driver = driver;
    this.#mem = driver.memory;
    this.index = index;
    this.addrs = addrs;
    this.#free = Array.from({ length: addrs.size }, (_, i) => addrs.size - 1 - i);
  }

  get size(): number {
    return this.addrs.size;
  }

  get freeDescriptors(): number {
    return this.#free.length;
  }

  get inFlight(): number {
    return this.#inflight.size;
  }

  /** Guest address of the data slot reserved for descriptor `i`. */
  slot(i: number): number {
    return this.addrs.data + i * this.addrs.slotSize;
  }

  /**
   * Posts one chain: `out` buffers the device reads, then writable buffers of
   * `inLens` bytes. Data lives in the head's slot. Returns the head, or null when
   * there are not enough free descriptors.
   */
  add(out: readonly Uint8Array[], inLens: readonly number[], opts: AddOptions = {}): number | null {
    const count = out.length + inLens.length;
    if (count === 0) throw new Error('empty chain');
    const useIndirect = opts.indirect === true;
    if (useIndirect && count > INDIRECT_MAX) throw new Error('chain too long for the indirect table');
    const need = useIndirect ? 1 : count;
    if (this.#free.length < need) return null;
    const descs: number[] = [];
    for (let k = 0; k < need; k++) descs.push(this.#free.pop()!);
    const head = descs[0]!;
    let cursor = this.slot(head);
    const slotEnd = cursor + this.addrs.slotSize;
    const bufs: Array<{ addr: number; len: number; write: boolean }> = [];
    for (const b of out) {
      if (cursor + b.length > slotEnd) throw new Error('chain does not fit its slot');
      this.#mem.write(cursor, b);
      bufs.push({ addr: cursor, len: b.length, write: false });
      cursor += b.length;
    }
    const writable: Array<[number, number]> = [];
    for (const len of inLens) {
      if (cursor + len > slotEnd) throw new Error('chain does not fit its slot');
      bufs.push({ addr: cursor, len, write: true });
      writable.push([cursor, len]);
      cursor += len;
    }
    if (useIndirect) {
      const table = this.addrs.indirect + head * INDIRECT_MAX * Desc.SIZE;
      bufs.forEach((b, k) => {
        const last = k === bufs.length - 1;
        writeDesc(this.#mem, table + k * Desc.SIZE, b.addr, b.len, (b.write ? Desc.WRITE : 0) | (last ? 0 : Desc.NEXT), last ? 0 : k + 1);
      });
      this.writeDesc(head, table, bufs.length * Desc.SIZE, Desc.INDIRECT, 0);
    } else {
      bufs.forEach((b, k) => {
        const last = k === bufs.length - 1;
        this.writeDesc(descs[k]!, b.addr, b.len, (b.write ? Desc.WRITE : 0) | (last ? 0 : Desc.NEXT), last ? 0 : descs[k + 1]!);
      });
    }
    this.#inflight.set(head, { descs, writable });
    this.publish(head);
    return head;
  }

  /** Writes descriptor `i` of the ring's table. */
  writeDesc(i: number, addr: number | bigint, len: number, flags: number, next: number): void {
    writeDesc(this.#mem, this.addrs.desc + i * Desc.SIZE, addr, len, flags, next);
  }

  /** Puts `head` in the next avail slot and bumps avail idx. */
  publish(head: number): void {
    const a = this.addrs;
    this.#mem.writeU16(a.avail + 4 + 2 * (this.#availIdx % a.size), head);
    this.#availIdx = (this.#availIdx + 1) & 0xffff;
    this.#mem.writeU16(a.avail + 2, this.#availIdx);
  }

  /** Writes avail idx directly (hostile tests). */
  setAvailIdx(idx: number): void {
    this.#availIdx = idx & 0xffff;
    this.#mem.writeU16(this.addrs.avail + 2, this.#availIdx);
  }

  /** Sets or clears VRING_AVAIL_F_NO_INTERRUPT. */
  setNoInterrupt(on: boolean): void {
    this.#mem.writeU16(this.addrs.avail, on ? VRING_AVAIL_F_NO_INTERRUPT : 0);
  }

  /** used_event (EVENT_IDX): interrupt me when used idx passes this. */
  setUsedEvent(idx: number): void {
    this.#mem.writeU16(this.addrs.avail + 4 + 2 * this.addrs.size, idx & 0xffff);
  }

  /** avail_event the device published (EVENT_IDX). */
  availEvent(): number {
    return this.#mem.readU16(this.addrs.used + 4 + 8 * this.addrs.size);
  }

  usedIdx(): number {
    return this.#mem.readU16(this.addrs.used + 2);
  }

  usedFlags(): number {
    return this.#mem.readU16(this.addrs.used);
  }

  /** Whether the device wants a kick for what was published since the last kick. */
  needsKick(): boolean {
    const old = this.#kickedAt;
    const now = this.#availIdx;
    if (this.addrs.eventIdx) return needEvent(this.availEvent(), now, old);
    return (this.usedFlags() & VRING_USED_F_NO_NOTIFY) === 0;
  }

  /** Kicks if the device asked for it (or always with force). Returns whether it kicked. */
  kick(force = false): boolean {
    const want = force || this.needsKick();
    this.#kickedAt = this.#availIdx;
    if (want) this.#driver.kick(this.index);
    return want;
  }

  /** Collects used buffers, frees their descriptors and re-arms used_event. */
  reap(): UsedBuffer[] {
    const out: UsedBuffer[] = [];
    const a = this.addrs;
    const usedIdx = this.usedIdx();
    while (this.#lastUsed !== usedIdx) {
      const elem = a.used + 4 + 8 * (this.#lastUsed % a.size);
      const head = this.#mem.readU32(elem);
      const len = this.#mem.readU32(elem + 4);
      this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
      const chain = this.#inflight.get(head);
      if (chain === undefined) throw new Error(`device returned head ${head} that is not in flight`);
      this.#inflight.delete(head);
      for (const d of chain.descs) this.#free.push(d);
      const data = new Uint8Array(Math.min(len, chain.writable.reduce((n, [, l]) => n + l, 0)));
      let at = 0;
      for (const [addr, l] of chain.writable) {
        if (at >= data.length) break;
        const take = Math.min(l, data.length - at);
        data.set(this.#mem.slice(addr, take), at);
        at += take;
      }
      out.push({ head, len, data });
    }
    if (a.eventIdx) this.setUsedEvent(this.#lastUsed);
    return out;
  }

  /** Reaps without copying data (benchmarks). Returns how many chains came back. */
  reapCount(): number {
    const a = this.addrs;
    const usedIdx = this.usedIdx();
    let n = 0;
    while (this.#lastUsed !== usedIdx) {
      const head = this.#mem.readU32(a.used + 4 + 8 * (this.#lastUsed % a.size));
      this.#lastUsed = (this.#lastUsed + 1) & 0xffff;
      const chain = this.#inflight.get(head);
      if (chain !== undefined) {
        this.#inflight.delete(head);
        for (const d of chain.descs) this.#free.push(d);
      }
      n++;
    }
    if (a.eventIdx) this.setUsedEvent(this.#lastUsed);
    return n;
  }
}

function writeDesc(mem: GuestMemory, at: number, addr: number | bigint, len: number, flags: number, next: number): void {
  if (typeof addr === 'number' && Number.isSafeInteger(addr) && addr >= 0) {
    // The common case without BigInt arithmetic (the benches post thousands a second).
    mem.writeU32(at, addr % 0x1_0000_0000);
    mem.writeU32(at + 4, Math.floor(addr / 0x1_0000_0000));
  } else {
    const a = BigInt(addr);
    mem.writeU32(at, Number(a & 0xffff_ffffn));
    mem.writeU32(at + 4, Number((a >> 32n) & 0xffff_ffffn));
  }
  mem.writeU32(at + 8, len >>> 0);
  mem.writeU16(at + 12, flags);
  mem.writeU16(at + 14, next);
}
