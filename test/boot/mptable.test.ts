// The MP table (MP spec 1.4) Linux reads to find CPUs and the I/O APIC without ACPI.
import t from 'tap';
import { buildMpTable, IOAPIC_ADDRESS, IOAPIC_PINS, LAPIC_ADDRESS, MPTABLE_MAX_CPUS, MPTABLE_START } from '../../src/vmm/boot/mptable.js';

const sum = (b: Uint8Array, from: number, to: number): number => b.subarray(from, to).reduce((a, x) => (a + x) & 0xff, 0);
const text = (b: Uint8Array, at: number, n: number): string => Buffer.from(b.subarray(at, at + n)).toString('latin1');

for (const cpus of [1, 2, 4, 16]) {
  t.test(`${cpus} vCPUs: valid pointer, header, checksums and entries`, (t) => {
    const b = buildMpTable(cpus);
    const v = new DataView(b.buffer);
    t.equal(text(b, 0, 4), '_MP_');
    t.equal(v.getUint32(4, true), MPTABLE_START + 16, 'pointer to the configuration table');
    t.equal(b[8], 1, 'length 16 bytes');
    t.equal(b[9], 4, 'spec 1.4');
    t.equal(sum(b, 0, 16), 0, 'floating pointer checksum');
    t.equal(b[11], 0, 'feature byte 1: a configuration table follows (no default config)');
    t.equal(text(b, 16, 4), 'PCMP');
    const len = v.getUint16(20, true);
    t.equal(16 + len, b.length, 'base table length covers every entry');
    t.equal(sum(b, 16, 16 + len), 0, 'configuration table checksum');
    t.equal(v.getUint32(16 + 36, true), LAPIC_ADDRESS);
    const count = v.getUint16(16 + 34, true);
    // Walk the entries as Linux's smp_read_mpc() does.
    let at = 16 + 44;
    const cpusSeen: Array<{ id: number; bsp: boolean }> = [];
    let ioapic: { id: number; addr: number } | null = null;
    const pins: number[] = [];
    const lints: number[] = [];
    for (let i = 0; i < count; i++) {
      const type = b[at]!;
      if (type === 0) {
        t.equal(b[at + 3]! & 1, 1, 'processor enabled');
        cpusSeen.push({ id: b[at + 1]!, bsp: (b[at + 3]! & 2) !== 0 });
        at += 20;
        continue;
      }
      if (type === 1) t.equal(text(b, at + 2, 6), 'ISA   ');
      if (type === 2) ioapic = { id: b[at + 1]!, addr: v.getUint32(at + 4, true) };
      if (type === 3) { t.equal(b[at + 5], b[at + 7], 'ISA IRQ n → pin n'); pins.push(b[at + 7]!); }
      if (type === 4) lints.push(b[at + 7]!);
      t.ok(type <= 4, `entry type ${type}`);
      at += 8;
    }
    t.equal(at, b.length, 'the entries fill the table exactly');
    t.same(cpusSeen.map((c) => c.id), Array.from({ length: cpus }, (_, i) => i), 'one processor per vCPU, LAPIC id = index');
    t.same(cpusSeen.filter((c) => c.bsp).map((c) => c.id), [0], 'vCPU 0 is the bootstrap processor');
    t.same(ioapic, { id: cpus, addr: IOAPIC_ADDRESS }, 'the I/O APIC id follows the LAPIC ids');
    t.same(pins, Array.from({ length: IOAPIC_PINS }, (_, i) => i));
    t.same(lints, [0, 1], 'LINT0 ExtINT, LINT1 NMI');
    t.ok(MPTABLE_START + b.length <= 0xa0000, 'fits below 640 KiB');
    t.end();
  });
}

t.test('vCPU counts outside the table are refused', (t) => {
  for (const n of [0, -1, 1.5, MPTABLE_MAX_CPUS + 1]) t.throws(() => buildMpTable(n), { code: 'INVALID_ARGUMENT' }, String(n));
  t.end();
});
