import t from 'tap';
import { Bus, type BusDevice } from '../../src/vmm/bus.js';

function register32(): BusDevice & { value: number } {
  return {
    value: 0,
    read(_offset, data) { new DataView(data.buffer, data.byteOffset, data.length).setUint32(0, this.value, true); },
    write(_offset, data) { this.value = new DataView(data.buffer, data.byteOffset, data.length).getUint32(0, true); },
  };
}

t.test('dispatches by address with offsets into the window', async (t) => {
  const bus = new Bus('test bus');
  const seen: number[] = [];
  bus.register(0x1000, 0x100, 'a', { read(o, d) { seen.push(o); d.fill(0xaa); }, write(o) { seen.push(o); } });
  const r = register32();
  bus.register(0x2000, 4, 'b', r);
  const d = new Uint8Array(4);
  t.equal(bus.read(0x1010, d), true);
  t.same([...d], [0xaa, 0xaa, 0xaa, 0xaa]);
  t.equal(bus.write(0x2000, new Uint8Array([1, 2, 3, 4])), true);
  t.equal(r.value, 0x04030201);
  t.equal(bus.read(0x3000, d), false, 'unclaimed address');
  t.equal(bus.read(0x20fe, new Uint8Array(4)), false, 'access straddling the end of a window');
  t.same(seen, [0x10]);
});

t.test('overlapping registrations are rejected', async (t) => {
  const bus = new Bus('test bus');
  bus.register(0x1000, 0x100, 'a', register32());
  t.throws(() => bus.register(0x10ff, 1, 'b', register32()), { code: 'INVALID_ARGUMENT', message: /overlaps a/ });
  t.throws(() => bus.register(0x0f00, 0x101, 'c', register32()), { code: 'INVALID_ARGUMENT' });
  bus.register(0x1100, 1, 'd', register32());
  t.throws(() => bus.register(-1, 1, 'e', register32()), { code: 'INVALID_ARGUMENT' });
});
