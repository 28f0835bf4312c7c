// Guest memory as a vhost-user front end (QEMU) shares it: SET_MEM_TABLE regions, each
// a file descriptor (a memfd) mmapped MAP_SHARED here and wrapped in a GuestMemory,
// so devices get the same checked accessors as under the KVM engine. Ring addresses
// arrive as front-end virtual addresses and are translated to guest-physical ones.
import { fstatSync } from 'node:fs';
import { GuestMemory } from '../../../memory/guest-memory.js';
import type { VirtioMemory } from '../../../virtio/memory.js';
import { closeFd, view } from '../../../sys/libc.js';
import { fileSeals, Seal } from '../../../sys/seals.js';
import { mmapShared, munmap } from '../../../sys/socket.js';
import { ProtocolError, type MemRegionDesc } from '../protocol.js';

/** Largest region we map (guest RAM sizes are far below; also bounds hostile sizes). */
const MAX_REGION_BYTES = 2 ** 40;
const PAGE = 4096;

export interface MappedTable {
  memory: GuestMemory;
  regions: readonly MemRegionDesc[];
}

/**
 * Maps every region's fd (the fds are consumed: closed after mmap, which keeps the
 * mapping). Throws ProtocolError on sizes or layouts that cannot be guest RAM.
 */
export function mapMemTable(regions: readonly MemRegionDesc[], fds: readonly number[]): MappedTable {
  if (fds.length !== regions.length) {
    throw new ProtocolError(`SET_MEM_TABLE: ${regions.length} regions but ${fds.length} file descriptors`);
  }
  const maps: Array<{ address: bigint; length: number }> = [];
  const release = (): void => {
    for (const m of maps) munmap(m.address, m.length);
    maps.length = 0;
  };
  try {
    const parts = regions.map((r, i) => {
      const size = Number(r.memorySize);
      const offset = Number(r.mmapOffset);
      const gpa = Number(r.guestPhysAddr);
      if (r.memorySize === 0n || r.memorySize > BigInt(MAX_REGION_BYTES) || r.mmapOffset > BigInt(MAX_REGION_BYTES)
        || r.guestPhysAddr > BigInt(Number.MAX_SAFE_INTEGER) || offset % PAGE !== 0) {
        throw new ProtocolError(`SET_MEM_TABLE: region gpa 0x${r.guestPhysAddr.toString(16)} size 0x${r.memorySize.toString(16)} offset 0x${r.mmapOffset.toString(16)} is not mappable`);
      }
      checkBacking(i, fds[i]!, r);
      return { size, offset, gpa };
    });
    const mapped = parts.map((p, i) => {
      const length = p.size + p.offset;
      let address: bigint;
      try {
        address = mmapShared(fds[i]!, length);
      } catch (err) {
        throw new ProtocolError(`SET_MEM_TABLE: region ${i}: ${(err as Error).message}`);
      }
      maps.push({ address, length });
      return { guestAddress: p.gpa, bytes: new Uint8Array(view(address + BigInt(p.offset), p.size)), hostAddress: address + BigInt(p.offset) };
    });
    let memory: GuestMemory;
    try {
      memory = GuestMemory.fromRegions(mapped, release);
    } catch (err) {
      throw new ProtocolError(`SET_MEM_TABLE: ${(err as Error).message}`);
    }
    return { memory, regions: [...regions] };
  } catch (err) {
    release();
    throw err;
  } finally {
    for (const fd of fds) closeFd(fd);
  }
}

/**
 * A page of a MAP_SHARED mapping past the end of its file faults with SIGBUS, which
 * kills this process: the region must lie within the file, and the file must not be
 * able to shrink later (F_SEAL_SHRINK), or a compromised front end could truncate it
 * after we checked. Files without seals (F_GET_SEALS fails with EINVAL: tmpfs or
 * hugetlbfs files, not memfds) are refused: nothing stops their owner from truncating
 * them. QEMU's memory-backend-memfd seals by default (seal=on; the QEMU engine says so).
 */
function checkBacking(i: number, fd: number, r: MemRegionDesc): void {
  let seals: number | null;
  let size: bigint;
  try {
    seals = fileSeals(fd);
    size = fstatSync(fd, { bigint: true }).size;
  } catch (err) {
    throw new ProtocolError(`SET_MEM_TABLE: region ${i}: ${(err as Error).message}`);
  }
  if (seals === null || (seals & Seal.SHRINK) === 0) {
    throw new ProtocolError(`SET_MEM_TABLE: region ${i}: its file can shrink under the mapping (${seals === null ? 'not a sealable memfd' : 'no F_SEAL_SHRINK'})`);
  }
  // Seals first, size second: once sealed the size can only stay or grow.
  if (r.mmapOffset + r.memorySize > size) {
    throw new ProtocolError(`SET_MEM_TABLE: region ${i}: offset 0x${r.mmapOffset.toString(16)} + size 0x${r.memorySize.toString(16)} is past the end of its file (0x${size.toString(16)} bytes)`);
  }
}

/** Front-end virtual address → guest-physical address, or null when in no region. */
export function translate(regions: readonly MemRegionDesc[], va: bigint): number | null {
  for (const r of regions) {
    if (va >= r.userspaceAddr && va - r.userspaceAddr < r.memorySize) {
      const gpa = r.guestPhysAddr + (va - r.userspaceAddr);
      return gpa > BigInt(Number.MAX_SAFE_INTEGER) ? null : Number(gpa);
    }
  }
  return null;
}

/**
 * A VirtioMemory that forwards to whatever table is current. QEMU may send a new
 * SET_MEM_TABLE at any time; queues and devices keep this one object. With no table
 * every access fails the range check (GUEST_MEMORY_RANGE), as RAM outside any region.
 */
export class SwappableMemory implements VirtioMemory {
  #current: GuestMemory | null = null;
  static readonly #empty = GuestMemory.fromRegions([{ guestAddress: 0, bytes: new Uint8Array(0) }]);

  get current(): GuestMemory | null {
    return this.#current;
  }

  /** Installs `next` and closes (unmaps) the previous table. */
  replace(next: GuestMemory | null): void {
    const prev = this.#current;
    this.#current = next;
    prev?.close();
  }

  #m(): GuestMemory {
    return this.#current ?? SwappableMemory.#empty;
  }

  contains(addr: number | bigint, len: number): boolean { return this.#m().contains(addr, len); }
  slice(addr: number | bigint, len: number): Uint8Array { return this.#m().slice(addr, len); }
  readU16(addr: number): number { return this.#m().readU16(addr); }
  readU32(addr: number): number { return this.#m().readU32(addr); }
  writeU16(addr: number, value: number): void { this.#m().writeU16(addr, value); }
  writeU32(addr: number, value: number): void { this.#m().writeU32(addr, value); }
}
