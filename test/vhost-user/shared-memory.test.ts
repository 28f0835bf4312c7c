// GuestMemory.shared(): guest RAM in a sealed memfd, so a vhost-user back end can map
// the same pages. The anonymous path is untouched (no backing).
import t from 'tap';
import { fstatSync, readdirSync } from 'node:fs';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { MMIO_GAP_END, MMIO_GAP_START } from '../../src/memory/layout.js';
import { fileSeals, Seal } from '../../src/sys/seals.js';
import { mmapShared, munmap } from '../../src/sys/socket.js';
import { view } from '../../src/sys/libc.js';

t.test('shared RAM is one sealed memfd that a second mapping sees', (t) => {
  const size = 2 << 20;
  const m = GuestMemory.shared(size);
  const b = m.backing!;
  t.ok(b !== null && b.fd >= 0, 'has a backing fd');
  t.same(b.fileOffsets, [0]);
  t.equal(fstatSync(b.fd).size, size, 'file is the RAM size');
  const seals = fileSeals(b.fd)!;
  t.equal(seals & (Seal.SHRINK | Seal.GROW | Seal.SEAL), Seal.SHRINK | Seal.GROW | Seal.SEAL, 'sealed against shrink and grow');
  m.write(0x1234, Uint8Array.from([1, 2, 3, 4]));
  const other = mmapShared(b.fd, size);
  const bytes = new Uint8Array(view(other, size));
  t.same([...bytes.subarray(0x1234, 0x1238)], [1, 2, 3, 4], 'another mapping of the fd sees guest writes');
  bytes[0x2000] = 0x5a;
  t.equal(m.readU8(0x2000), 0x5a, 'and guest RAM sees its writes');
  munmap(other, size);
  const fdName = String(b.fd);
  m.close();
  t.equal(m.backing, null, 'no backing after close');
  t.notOk(readdirSync('/proc/self/fd').includes(fdName) && fstatSafe(Number(fdName)) === size, 'the memfd is closed');
  t.end();
});

t.test('shared RAM above the MMIO hole: two regions at their file offsets', (t) => {
  const size = MMIO_GAP_START + (64 << 20);
  const m = GuestMemory.shared(size); // a memfd reserves nothing until touched
  t.teardown(() => m.close());
  t.same(m.regions.map((r) => [r.guestAddress, r.size]), [[0, MMIO_GAP_START], [MMIO_GAP_END, 64 << 20]]);
  t.same(m.backing!.fileOffsets, [0, MMIO_GAP_START]);
  t.equal(m.regions[1]!.hostAddress - m.regions[0]!.hostAddress, BigInt(MMIO_GAP_START), 'one contiguous mapping');
  m.writeU32(MMIO_GAP_END + 8, 0xdeadbeef);
  t.equal(m.readU32(MMIO_GAP_END + 8), 0xdeadbeef);
  t.end();
});

t.test('anonymous RAM has no backing; bad sizes are refused', (t) => {
  const a = GuestMemory.anonymous(1 << 20);
  t.equal(a.backing, null);
  a.close();
  t.throws(() => GuestMemory.shared(1000), { code: 'INVALID_ARGUMENT' });
  t.throws(() => GuestMemory.shared(0), { code: 'INVALID_ARGUMENT' });
  t.end();
});

function fstatSafe(fd: number): number | null {
  try {
    return fstatSync(fd).size;
  } catch {
    return null;
  }
}
