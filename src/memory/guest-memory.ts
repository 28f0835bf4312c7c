// Guest RAM: one anonymous mapping, seen zero-copy through ArrayBuffer views.
// Every access a device makes goes through the checked accessors below, so a guest
// value can never make the VMM read or write outside guest RAM.
// This folder sits below virtio/ and vmm/: it knows nothing of KVM or of devices.
import { TsiboxError } from '../errors.js';
import {
  sys, view, syscallError, closeFd, errno, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE,
  EACCES, EINVAL, MADV_DONTNEED, MADV_REMOVE,
} from '../sys/libc.js';
import { memfdCreate, mmapShared } from '../sys/socket.js';
import { MMIO_GAP_END, MMIO_GAP_START } from './layout.js';

export interface MemoryRegion {
  /** Guest-physical start. */
  readonly guestAddress: number;
  readonly size: number;
  /** Host virtual address of the region's first byte (for KVM_SET_USER_MEMORY_REGION). */
  readonly hostAddress: bigint;
}

/**
 * The file behind shareable guest RAM (GuestMemory.shared): what a vhost-user front
 * end passes in SET_MEM_TABLE so a back-end process can map the same pages.
 */
export interface SharedBacking {
  /** A memfd, sealed against shrinking and growing (F_SEAL_SHRINK|GROW|SEAL). Owned by the GuestMemory: closed by close(). */
  readonly fd: number;
  /** File offset (bytes) of each region's first byte, in `GuestMemory.regions` order. */
  readonly fileOffsets: readonly number[];
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
  #backing: SharedBacking | null;

  private constructor(regions: MappedRegion[], release: (() => void) | null, backing: SharedBacking | null = null) {
    if (regions.length === 0) throw new TsiboxError('INVALID_ARGUMENT', 'guest memory needs at least one region');
    this.#regions = regions;
    this.#r0 = regions[0]!;
    this.regions = regions.map(({ guestAddress, size, hostAddress }) => ({ guestAddress, size, hostAddress }));
    this.size = regions.reduce((n, r) => n + r.size, 0);
    this.#release = release;
    this.#backing = backing;
  }

  /** The memfd behind this RAM when it was made by shared(); null for anonymous RAM or after close(). */
  get backing(): SharedBacking | null {
    return this.#backing;
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
   * Like anonymous(), but the RAM is one memfd mapped MAP_SHARED, so another process
   * (a vhost-user back end) can map the same pages from the fd in `backing`. The memfd
   * is sealed against shrinking and growing: a back end that maps it cannot be made to
   * fault (SIGBUS) by a truncate, and our own back end (vhost-user/backend/memory.ts) refuses
   * memory without F_SEAL_SHRINK. Same layout as anonymous() (split around the MMIO
   * hole). Throws INVALID_ARGUMENT on a bad size, SYSCALL when memfd_create/mmap fail.
   */
  static shared(size: number, name = 'tsibox-guest-ram'): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE !== 0) {
      throw new TsiboxError('INVALID_ARGUMENT', `guest memory size must be a positive multiple of ${PAGE}, got ${size}`);
    }
    const fd = memfdCreate(name, size, { sealed: true });
    let base: bigint;
    try {
      base = mmapShared(fd, size);
    } catch (err) {
      closeFd(fd);
      throw err;
    }
    const layout: Array<[number, number]> = size <= MMIO_GAP_START
      ? [[0, size]]
      : [[0, MMIO_GAP_START], [MMIO_GAP_END, size - MMIO_GAP_START]];
    let offset = 0;
    const fileOffsets: number[] = [];
    const regions = layout.map(([gpa, len]) => {
      const region = GuestMemory.#map(gpa, base + BigInt(offset), new Uint8Array(view(base + BigInt(offset), len)));
      fileOffsets.push(offset);
      offset += len;
      return region;
    });
    return new GuestMemory(regions, () => { sys.munmap(base, size); closeFd(fd); }, { fd, fileOffsets });
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
    this.#backing = null;
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

  // MADV_REMOVE until the kernel says the mapping is not shared (EINVAL/EACCES), then MADV_DONTNEED.
  #discardAdvice = MADV_REMOVE;

  /**
   * Gives the host pages behind guest RAM [addr, addr+len) back to the host kernel, for
   * the virtio balloon (virtio 1.2 §5.5.6: inflated and reported pages). Afterwards the
   * guest reads zeros there and the pages cost no host memory until touched again.
   * Shared (memfd) RAM: MADV_REMOVE, which punches a hole in the file like
   * fallocate(PUNCH_HOLE|KEEP_SIZE), so every process mapping it sees the zeros.
   * Private anonymous RAM: MADV_DONTNEED. Regions wrapped without a host address
   * (fromRegions test buffers) are zero-filled. `addr` and `len` must be multiples of
   * 4096 (else INVALID_ARGUMENT) and the range inside one region (else
   * GUEST_MEMORY_RANGE); a failing madvise throws SYSCALL.
   */
  discard(addr: number, len: number): void {
    if (addr % PAGE !== 0 || len % PAGE !== 0) {
      throw new TsiboxError('INVALID_ARGUMENT', `discard of 0x${addr.toString(16)}+${len} is not page-aligned`);
    }
    const r = this.#region(addr, len);
    const off = addr - r.guestAddress;
    if (r.hostAddress === 0n) {
      r.bytes.fill(0, off, off + len);
      return;
    }
    const host = r.hostAddress + BigInt(off);
    if (this.#discardAdvice === MADV_REMOVE) {
      if (sys.madvise(host, len, MADV_REMOVE) === 0) return;
      const e = errno();
      if (e !== EINVAL && e !== EACCES) throw syscallError(`madvise(MADV_REMOVE) of guest 0x${addr.toString(16)}+${len}`, e);
      this.#discardAdvice = MADV_DONTNEED;
    }
    if (sys.madvise(host, len, MADV_DONTNEED) !== 0) throw syscallError(`madvise(MADV_DONTNEED) of guest 0x${addr.toString(16)}+${len}`);
  }
}

function rangeError(addr: number | bigint, len: number): TsiboxError {
  const a = typeof addr === 'bigint' ? addr.toString(16) : Number.isFinite(addr) ? Math.trunc(addr).toString(16) : String(addr);
  return new TsiboxError('GUEST_MEMORY_RANGE', `guest address range 0x${a}+${len} is outside guest RAM`);
}
