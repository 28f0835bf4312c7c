// Guest RAM for fuzzers: the RAM sits between two guard areas of one buffer (the guards
// must never change), and a wrapper records every request for a range outside RAM.
import { GuestMemory } from '../../../src/memory/guest-memory.js';
import type { VirtioMemory } from '../../../src/virtio/memory.js';

const GUARD = 4096;
const GUARD_BYTE = 0xa5;

export interface GuardedMemory {
  memory: GuestMemory;
  /** The same memory, recording out-of-RAM requests into `violations`. */
  checked: VirtioMemory;
  violations: string[];
  /** False once a byte outside guest RAM changed. */
  guardsIntact(): boolean;
}

export function guardedMemory(ramBytes: number): GuardedMemory {
  const backing = new Uint8Array(GUARD + ramBytes + GUARD);
  backing.fill(GUARD_BYTE);
  const ram = backing.subarray(GUARD, GUARD + ramBytes);
  ram.fill(0);
  const memory = GuestMemory.fromRegions([{ guestAddress: 0, bytes: ram }]);
  const violations: string[] = [];
  const check = (what: string, addr: number | bigint, len: number): void => {
    if (!memory.contains(addr, len)) violations.push(`${what}(0x${addr.toString(16)}, ${len})`);
  };
  const checked: VirtioMemory = {
    contains: (addr, len) => memory.contains(addr, len),
    slice: (addr, len) => { check('slice', addr, len); return memory.slice(addr, len); },
    readU16: (addr) => { check('readU16', addr, 2); return memory.readU16(addr); },
    readU32: (addr) => { check('readU32', addr, 4); return memory.readU32(addr); },
    writeU16: (addr, v) => { check('writeU16', addr, 2); memory.writeU16(addr, v); },
    writeU32: (addr, v) => { check('writeU32', addr, 4); memory.writeU32(addr, v); },
  };
  const guardsIntact = (): boolean => {
    const end = backing.length;
    for (let i = 0; i < GUARD; i++) if (backing[i] !== GUARD_BYTE || backing[end - 1 - i] !== GUARD_BYTE) return false;
    return true;
  };
  return { memory, checked, violations, guardsIntact };
}
