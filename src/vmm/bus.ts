// Address-range buses for port I/O and MMIO exits. Devices are plain objects: they
// know nothing of KVM, only offsets into their own window and little-endian bytes.
import { TsiboxError } from '../errors.js';

export interface BusDevice {
  /** Fill `data` (1, 2, 4 or 8 bytes, little-endian) with the value at `offset`. */
  read(offset: number, data: Uint8Array): void;
  /** Take the little-endian value in `data` written at `offset`. */
  write(offset: number, data: Uint8Array): void;
}

interface Range {
  readonly base: number;
  readonly size: number;
  readonly name: string;
  readonly device: BusDevice;
}

export class Bus {
  readonly #name: string;
  #ranges: Range[] = [];

  constructor(name: string) {
    this.#name = name;
  }

  /** Registers `device` on [base, base+size). Overlaps are rejected. */
  register(base: number, size: number, name: string, device: BusDevice): void {
    if (!Number.isSafeInteger(base) || base < 0 || !Number.isSafeInteger(size) || size <= 0) {
      throw new TsiboxError('INVALID_ARGUMENT', `${this.#name} range for ${name} is invalid: base ${base}, size ${size}`);
    }
    for (const r of this.#ranges) {
      if (base < r.base + r.size && r.base < base + size) {
        throw new TsiboxError('INVALID_ARGUMENT',
          `${this.#name} range 0x${base.toString(16)}+0x${size.toString(16)} (${name}) overlaps ${r.name} at 0x${r.base.toString(16)}`);
      }
    }
    this.#ranges.push({ base, size, name, device });
    this.#ranges.sort((a, b) => a.base - b.base);
  }

  unregister(base: number): void {
    this.#ranges = this.#ranges.filter((r) => r.base !== base);
  }

  /** The device covering [addr, addr+len), with the offset into its window. */
  find(addr: number, len: number): { device: BusDevice; offset: number; name: string } | null {
    for (const r of this.#ranges) {
      if (addr >= r.base && addr + len <= r.base + r.size) return { device: r.device, offset: addr - r.base, name: r.name };
    }
    return null;
  }

  /** Dispatches a read; returns false when no device covers the access. */
  read(addr: number, data: Uint8Array): boolean {
    const hit = this.find(addr, data.length);
    if (hit === null) return false;
    hit.device.read(hit.offset, data);
    return true;
  }

  write(addr: number, data: Uint8Array): boolean {
    const hit = this.find(addr, data.length);
    if (hit === null) return false;
    hit.device.write(hit.offset, data);
    return true;
  }
}
