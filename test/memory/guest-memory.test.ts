import t from 'tap';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { MMIO_GAP_END, MMIO_GAP_START } from '../../src/memory/layout.js';

t.test('checked accessors read and write inside RAM', async (t) => {
  const mem = GuestMemory.anonymous(1 << 20);
  t.teardown(() => mem.close());
  mem.writeU32(0x100, 0xdeadbeef);
  t.equal(mem.readU32(0x100), 0xdeadbeef);
  t.equal(mem.readU16(0x100), 0xbeef);
  t.equal(mem.readU8(0x103), 0xde);
  mem.writeU64(0x200, 0x1122334455667788n);
  t.equal(mem.readU64(0x200), 0x1122334455667788n);
  mem.writeU64(0x208, 0x12_3456_789an);
  t.equal(mem.readAddress(0x208), 0x12_3456_789a);
  mem.write(0xffff0, new Uint8Array([1, 2, 3]));
  t.same([...mem.read(0xffff0, 3)], [1, 2, 3]);
  t.equal(mem.slice(0, 16).byteLength, 16);
  // The last byte is reachable, one past it is not.
  mem.writeU8((1 << 20) - 1, 7);
  t.equal(mem.readU8((1 << 20) - 1), 7);
});

t.test('every access outside RAM throws GUEST_MEMORY_RANGE', async (t) => {
  const size = 1 << 20;
  const mem = GuestMemory.anonymous(size);
  t.teardown(() => mem.close());
  const bad: Array<[string, () => unknown]> = [
    ['u8 at end', () => mem.readU8(size)],
    ['u32 straddling end', () => mem.readU32(size - 2)],
    ['u64 straddling end', () => mem.writeU64(size - 4, 1n)],
    ['negative address', () => mem.readU32(-4)],
    ['fractional address', () => mem.readU32(1.5)],
    ['NaN address', () => mem.readU8(Number.NaN)],
    ['huge bigint', () => mem.slice(0xffff_ffff_ffff_f000n, 16)],
    ['length overflow', () => mem.slice(16, Number.MAX_SAFE_INTEGER)],
    ['negative length', () => mem.slice(16, -1)],
    ['write past end', () => mem.write(size - 1, new Uint8Array(2))],
  ];
  for (const [name, f] of bad) t.throws(f, { code: 'GUEST_MEMORY_RANGE' }, name);
  // A guest u64 above 2^53 is never an address.
  mem.writeU64(0, 0x8000_0000_0000_0000n);
  t.throws(() => mem.readAddress(0), { code: 'GUEST_MEMORY_RANGE' });
  t.equal(mem.contains(size - 8, 8), true);
  t.equal(mem.contains(size - 7, 8), false);
  t.equal(mem.contains(-1n, 1), false);
});

t.test('random ranges: contains() agrees with the accessors (property test)', async (t) => {
  const size = 64 * 1024;
  const mem = GuestMemory.anonymous(size);
  t.teardown(() => mem.close());
  let seed = 12345;
  const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n; };
  let mismatches = 0;
  for (let i = 0; i < 20000; i++) {
    const addr = rand(size * 2) - (rand(4) === 0 ? size : 0);
    const len = rand(4) === 0 ? rand(size * 2) : rand(64);
    const inside = addr >= 0 && addr + len <= size;
    let threw = false;
    try { mem.slice(addr, len); } catch { threw = true; }
    if (threw === inside || mem.contains(addr, len) !== inside) mismatches++;
  }
  t.equal(mismatches, 0);
});

t.test('memory above the MMIO gap continues at 4 GiB', async (t) => {
  const size = MMIO_GAP_START + (2 << 20);
  const mem = GuestMemory.anonymous(size);
  t.teardown(() => mem.close());
  t.equal(mem.regions.length, 2);
  t.equal(mem.regions[1]!.guestAddress, MMIO_GAP_END);
  mem.writeU32(MMIO_GAP_END + 8, 42);
  t.equal(mem.readU32(MMIO_GAP_END + 8), 42);
  t.throws(() => mem.readU32(MMIO_GAP_START), { code: 'GUEST_MEMORY_RANGE' }, 'the gap is not RAM');
  t.throws(() => mem.slice(MMIO_GAP_START - 4, 8), { code: 'GUEST_MEMORY_RANGE' }, 'no range crosses into the gap');
});

t.test('sizes are validated', async (t) => {
  t.throws(() => GuestMemory.anonymous(0), { code: 'INVALID_ARGUMENT' });
  t.throws(() => GuestMemory.anonymous(4095), { code: 'INVALID_ARGUMENT' });
});
