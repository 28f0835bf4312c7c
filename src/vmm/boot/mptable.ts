// The Intel MultiProcessor Specification 1.4 table (MP floating pointer + MP
// configuration table) that tells a Linux guest without ACPI how many CPUs it has and
// where the I/O APIC is. Without it Linux sees one CPU and the legacy PIC.
//
// Layout (MP spec 1.4, chapter 4): the 16-byte floating pointer "_MP_" at 0x9fc00 (the
// last KiB of base memory, which Linux scans; outside the e820 RAM map), the "PCMP"
// header right after it, then entries: one processor per vCPU (LAPIC id = vCPU index,
// the BSP flagged), one ISA bus, the I/O APIC (id = vCPU count, at 0xfec00000, KVM's
// in-kernel IOAPIC), an I/O interrupt entry per IOAPIC pin (ISA IRQ n → pin n, which is
// KVM's default GSI routing; virtio-mmio devices use GSIs 5..), and the local
// interrupts (LINT0 ExtINT, LINT1 NMI). Checksums make each structure's bytes sum to 0.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { TsiboxError } from '../../errors.js';

export const MPTABLE_START = 0x9fc00;
/** The last byte of base memory Linux scans (639 KiB .. 640 KiB). */
const MPTABLE_END = 0xa0000;
export const IOAPIC_ADDRESS = 0xfec0_0000;
export const LAPIC_ADDRESS = 0xfee0_0000;
/** KVM's in-kernel IOAPIC has 24 pins. */
export const IOAPIC_PINS = 24;

const SPEC_REV = 4;
const FLOATING_SIZE = 16;
const HEADER_SIZE = 44;
const PROCESSOR_SIZE = 20;
const SMALL_ENTRY = 8;

const Entry = { PROCESSOR: 0, BUS: 1, IOAPIC: 2, IOINT: 3, LOCALINT: 4 } as const;
const IntType = { INT: 0, NMI: 1, EXTINT: 3 } as const;
const CPU_ENABLED = 1;
const CPU_BSP = 2;
/** Family 6 signature and FPU + APIC feature bits, as a plain 686 would report. */
const CPU_SIGNATURE = 0x600;
const CPU_FEATURES = 0x201;

/** Bytes the table needs for `cpus` vCPUs. */
export function mpTableSize(cpus: number): number {
  return FLOATING_SIZE + HEADER_SIZE + cpus * PROCESSOR_SIZE + SMALL_ENTRY * (1 + 1 + IOAPIC_PINS + 2);
}

/** The most vCPUs whose table fits below 640 KiB (and whose LAPIC ids leave one for the IOAPIC). */
export const MPTABLE_MAX_CPUS = Math.min(254, Math.floor((MPTABLE_END - MPTABLE_START - mpTableSize(0)) / PROCESSOR_SIZE));

/** Builds the table for `cpus` vCPUs (bytes to place at MPTABLE_START). */
export function buildMpTable(cpus: number): Uint8Array {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MPTABLE_MAX_CPUS) {
    throw new TsiboxError('INVALID_ARGUMENT', `MP table: ${cpus} vCPUs is outside 1..${MPTABLE_MAX_CPUS}`);
  }
  const buf = new Uint8Array(mpTableSize(cpus));
  const v = new DataView(buf.buffer);
  const ascii = (at: number, text: string, width: number): void => {
    for (let i = 0; i < width; i++) buf[at + i] = i < text.length ? text.charCodeAt(i) : 0x20;
  };
  const ioapicId = cpus;
  let at = FLOATING_SIZE + HEADER_SIZE;
  let entries = 0;
  for (let i = 0; i < cpus; i++) {
    buf[at] = Entry.PROCESSOR;
    buf[at + 1] = i; // local APIC id
    buf[at + 2] = 0x14; // local APIC version (integrated)
    buf[at + 3] = CPU_ENABLED | (i === 0 ? CPU_BSP : 0);
    v.setUint32(at + 4, CPU_SIGNATURE, true);
    v.setUint32(at + 8, CPU_FEATURES, true);
    at += PROCESSOR_SIZE;
    entries++;
  }
  buf[at] = Entry.BUS;
  buf[at + 1] = 0;
  ascii(at + 2, 'ISA', 6);
  at += SMALL_ENTRY;
  entries++;
  buf[at] = Entry.IOAPIC;
  buf[at + 1] = ioapicId;
  buf[at + 2] = 0x11; // I/O APIC version
  buf[at + 3] = 1; // enabled
  v.setUint32(at + 4, IOAPIC_ADDRESS, true);
  at += SMALL_ENTRY;
  entries++;
  for (let pin = 0; pin < IOAPIC_PINS; pin++) {
    buf[at] = Entry.IOINT;
    buf[at + 1] = IntType.INT;
    v.setUint16(at + 2, 0, true); // polarity and trigger conform to the bus
    buf[at + 4] = 0; // source bus: ISA
    buf[at + 5] = pin; // source bus IRQ
    buf[at + 6] = ioapicId;
    buf[at + 7] = pin;
    at += SMALL_ENTRY;
    entries++;
  }
  for (const [type, lint] of [[IntType.EXTINT, 0], [IntType.NMI, 1]] as const) {
    buf[at] = Entry.LOCALINT;
    buf[at + 1] = type;
    v.setUint16(at + 2, 0, true);
    buf[at + 4] = 0;
    buf[at + 5] = 0;
    buf[at + 6] = 0xff; // every local APIC
    buf[at + 7] = lint;
    at += SMALL_ENTRY;
    entries++;
  }
  // Configuration table header.
  const h = FLOATING_SIZE;
  ascii(h, 'PCMP', 4);
  v.setUint16(h + 4, at - h, true); // base table length
  buf[h + 6] = SPEC_REV;
  ascii(h + 8, 'TSIBOX', 8);
  ascii(h + 16, 'MICROVM', 12);
  v.setUint16(h + 34, entries, true);
  v.setUint32(h + 36, LAPIC_ADDRESS, true);
  buf[h + 7] = checksum(buf, h, at);
  // Floating pointer.
  ascii(0, '_MP_', 4);
  v.setUint32(4, MPTABLE_START + FLOATING_SIZE, true);
  buf[8] = 1; // length in 16-byte units
  buf[9] = SPEC_REV;
  buf[10] = checksum(buf, 0, FLOATING_SIZE);
  return buf;
}

/** Writes the table for the VM's vCPUs at MPTABLE_START. */
export function writeMpTable(mem: GuestMemory, cpus: number): void {
  mem.write(MPTABLE_START, buildMpTable(cpus));
}

/** The byte that makes bytes[from..to) sum to 0 mod 256 (the byte itself counted as 0). */
function checksum(bytes: Uint8Array, from: number, to: number): number {
  let sum = 0;
  for (let i = from; i < to; i++) sum = (sum + bytes[i]!) & 0xff;
  return (0x100 - sum) & 0xff;
}
