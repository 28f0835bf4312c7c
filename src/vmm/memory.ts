// Guest RAM: one anonymous mapping, seen zero-copy through ArrayBuffer views.
// Every access a device makes goes through the checked accessors below, so a guest
// value can never make the VMM read or write outside guest RAM.
import { TsiboxError } from '../errors.js';
import { sys, view, syscallError, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE } from '../sys/libc.js';

/** Start of the MMIO hole below 4 GiB: device windows, IOAPIC, LAPIC. */
export const MMIO_GAP_START = 0xd000_0000;
export const MMIO_GAP_END = 0x1_0000_0000;

export interface MemoryRegion {
  /** Guest-physical start. */
  readonly guestAddress: number;
  readonly size: number;
  /** Host virtual address of the region's first byte (for KVM_SET_USER_MEMORY_REGION). */
  readonly hostAddress: bigint;
}

interface MappedRegion extends MemoryRegion {
  readonly bytes: Uint8Array;
  readonly data: DataView;
  readonly end: number;
}

const PAGE = 4096;
const CLOSED_REGION: MappedRegion = {
  guestAddress: 0, size: 0, hostAddress: 0n, bytes: new Uint8Array(0), data: new DataView(new ArrayBuffer(0)), end: 0,
};

export class GuestMemory {
  readonly regions: readonly MemoryRegion[];
  /** Total bytes of RAM. */
  readonly size: number;
  #regions: MappedRegion[];
  #release: (() => void) | null;
  // Fast path: most accesses hit the first region.
  #r0: MappedRegion;

  private constructor(regions: MappedRegion[], release: (() => void) | null) {
    if (regions.length === 0) throw new TsiboxError('INVALID_ARGUMENT', 'guest memory needs at least one region');
    this.#regions = regions;
    this.#r0 = regions[0]!;
    this.regions = regions.map(({ guestAddress, size, hostAddress }) => ({ guestAddress, size, hostAddress }));
    this.size = regions.reduce((n, r) => n + r.size, 0);
    this.#release = release;
  }

  /**
   * Maps `size` bytes of anonymous RAM. RAM that would overlap the MMIO hole below
   * 4 GiB continues at 4 GiB, as on a PC.
   */
  static anonymous(size: number): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE !== 0) {
      throw new TsiboxError('INVALID_ARGUMENT', `guest memory size must be a positive multiple of ${PAGE}, got ${size}`);
    }
    const base = sys.mmap(null, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0) as bigint | null;
    if (base === null || base === BigInt(-1) || base === 0xffff_ffff_ffff_ffffn) throw syscallError(`mmap of ${size} bytes of guest memory`);
    const layout: Array<[number, number]> = size <= MMIO_GAP_START
      ? [[0, size]]
      : [[0, MMIO_GAP_START], [MMIO_GAP_END, size - MMIO_GAP_START]];
    let offset = 0;
    const regions = layout.map(([gpa, len]) => {
      const region = GuestMemory.#map(gpa, base + BigInt(offset), new Uint8Array(view(base + BigInt(offset), len)));
      offset += len;
      return region;
    });
    return new GuestMemory(regions, () => { sys.munmap(base, size); });
  }

  /**
   * Wraps memory the caller already owns (an mmap of a shared memfd, a test buffer).
   * `release` runs once on close().
   */
  static fromRegions(regions: ReadonlyArray<{ guestAddress: number; bytes: Uint8Array; hostAddress?: bigint }>, release?: () => void): GuestMemory {
    const sorted = [...regions].sort((a, b) => a.guestAddress - b.guestAddress);
    let prevEnd = 0;
    const mapped = sorted.map((r) => {
      if (!Number.isSafeInteger(r.guestAddress) || r.guestAddress < prevEnd) {
        throw new TsiboxError('INVALID_ARGUMENT', `guest memory regions overlap or are unordered at 0x${r.guestAddress.toString(16)}`);
      }
      prevEnd = r.guestAddress + r.bytes.byteLength;
      return GuestMemory.#map(r.guestAddress, r.hostAddress ?? 0n, r.bytes);
    });
    return new GuestMemory(mapped, release ?? null);
  }

  static #map(guestAddress: number, hostAddress: bigint, bytes: Uint8Array): MappedRegion {
    return {
      guestAddress,
      size: bytes.byteLength,
      hostAddress,
      bytes,
      data: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      end: guestAddress + bytes.byteLength,
    };
  }

  /** Unmaps the memory (once). Views handed out before must not be used afterwards. */
  close(): void {
    const release = this.#release;
    this.#release = null;
    this.#regions = [];
    this.#r0 = CLOSED_REGION;
    if (release) release();
  }

  /**
   * Converts a guest-controlled 64-bit address to a number, rejecting values that
   * cannot be RAM addresses.
   */
  static toAddress(addr: number | bigint): number {
    if (typeof addr === 'bigint') {
      if (addr < 0n || addr > BigInt(Number.MAX_SAFE_INTEGER)) throw rangeError(addr, 0);
      return Number(addr);
    }
    if (!Number.isSafeInteger(addr) || addr < 0) throw rangeError(addr, 0);
    return addr;
  }

  /** True when [addr, addr+len) lies entirely inside one RAM region. Never throws. */
  contains(addr: number | bigint, len: number): boolean {
    if (typeof addr === 'bigint') {
      if (addr < 0n || addr > BigInt(Number.MAX_SAFE_INTEGER)) return false;
      addr = Number(addr);
    }
    return this.#find(addr, len) !== null;
  }

  #find(addr: number, len: number): MappedRegion | null {
    if (!(len >= 0) || !Number.isSafeInteger(addr) || addr < 0 || !Number.isSafeInteger(len)) return null;
    const r0 = this.#r0;
    if (addr >= r0.guestAddress && addr + len <= r0.end) return r0;
    for (const r of this.#regions) {
      if (addr >= r.guestAddress && addr + len <= r.end) return r;
    }
    return null;
  }

  #region(addr: number | bigint, len: number): MappedRegion {
    const a = typeof addr === 'bigint' ? GuestMemory.toAddress(addr) : addr;
    const r = this.#find(a, len);
    if (r === null) throw rangeError(addr, len);
    return r;
  }

  /** Zero-copy view of guest bytes [addr, addr+len). Throws GUEST_MEMORY_RANGE outside RAM. */
  slice(addr: number | bigint, len: number): Uint8Array {
    const a = typeof addr === 'bigint' ? GuestMemory.toAddress(addr) : addr;
    const r = this.#region(a, len);
    const off = a - r.guestAddress;
    return r.bytes.subarray(off, off + len);
  }

  /** Copy of guest bytes [addr, addr+len). */
  read(addr: number | bigint, len: number): Uint8Array {
    return this.slice(addr, len).slice();
  }

  write(addr: number | bigint, data: Uint8Array): void {
    this.slice(addr, data.byteLength).set(data);
  }

  fill(addr: number | bigint, len: number, value: number): void {
    this.slice(addr, len).fill(value);
  }

  readU8(addr: number): number {
    const r = this.#region(addr, 1);
    return r.bytes[addr - r.guestAddress]!;
  }

  readU16(addr: number): number {
    const r = this.#region(addr, 2);
    return r.data.getUint16(addr - r.guestAddress, true);
  }

  readU32(addr: number): number {
    const r = this.#region(addr, 4);
    return r.data.getUint32(addr - r.guestAddress, true);
  }

  readU64(addr: number): bigint {
    const r = this.#region(addr, 8);
    return r.data.getBigUint64(addr - r.guestAddress, true);
  }

  /**
   * Reads a little-endian u64 that the guest means as an address. Values above 2^53
   * (never RAM) throw GUEST_MEMORY_RANGE.
   */
  readAddress(addr: number): number {
    const r = this.#region(addr, 8);
    const off = addr - r.guestAddress;
    const lo = r.data.getUint32(off, true);
    const hi = r.data.getUint32(off + 4, true);
    if (hi >= 0x20_0000) throw rangeError((BigInt(hi) << 32n) | BigInt(lo), 0);
    return hi * 0x1_0000_0000 + lo;
  }

  writeU8(addr: number, value: number): void {
    const r = this.#region(addr, 1);
    r.bytes[addr - r.guestAddress] = value;
  }

  writeU16(addr: number, value: number): void {
    const r = this.#region(addr, 2);
    r.data.setUint16(addr - r.guestAddress, value, true);
  }

  writeU32(addr: number, value: number): void {
    const r = this.#region(addr, 4);
    r.data.setUint32(addr - r.guestAddress, value, true);
  }

  writeU64(addr: number, value: bigint): void {
    const r = this.#region(addr, 8);
    r.data.setBigUint64(addr - r.guestAddress, value, true);
  }
}

function rangeError(addr: number | bigint, len: number): TsiboxError {
  const a = typeof addr === 'bigint' ? addr.toString(16) : Number.isFinite(addr) ? Math.trunc(addr).toString(16) : String(addr);
  return new TsiboxError('GUEST_MEMORY_RANGE', `guest address range 0x${a}+${len} is outside guest RAM`);
}
