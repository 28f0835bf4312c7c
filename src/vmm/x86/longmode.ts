// Long-mode machine state: GDT, TSS, IDT, identity page tables, and the segment and
// control registers that start a vCPU directly in 64-bit mode at CPL0 or CPL3.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { Regs, Segment, Sregs } from '../../kvm/structs.js';
import { emptyRegs } from '../../kvm/structs.js';
import { LAYOUT, SELECTOR } from './layout.js';

export type Cpl = 0 | 3;

const CR0_PE = 1n, CR0_MP = 2n, CR0_ET = 0x10n, CR0_NE = 0x20n, CR0_WP = 0x1_0000n, CR0_PG = 0x8000_0000n;
const CR4_PAE = 0x20n, CR4_OSFXSR = 0x200n, CR4_OSXMMEXCPT = 0x400n;
const EFER_LME = 0x100n, EFER_LMA = 0x400n;
const PTE_P = 1n, PTE_RW = 2n, PTE_US = 4n, PTE_PS = 0x80n;
const GIB = 0x4000_0000n;
// Nested PVM ignores IOPL for ring-3 port I/O and honours only the TSS I/O permission
// bitmap, so the TSS carries one: 512 zero bytes (ports 0..0xfff allowed) and the
// terminating 0xff byte. The limit covers the terminator.
const TSS_IOMAP_BASE = 104;
const IOMAP_PORTS = 0x1000;
export const TSS_LIMIT = TSS_IOMAP_BASE + IOMAP_PORTS / 8;
const TWO_MIB = 0x20_0000n;

/** A flat 4 GiB code/data descriptor (8 bytes). */
export function flatDescriptor(access: number, flags: number): bigint {
  return 0xffffn | (BigInt(access) << 40n) | (0xfn << 48n) | (BigInt(flags) << 52n);
}

/** Writes the GDT, TSS, empty IDT and the 0..4 GiB identity map into guest RAM. */
export function writeSystemTables(mem: GuestMemory): void {
  const gdt = [
    0n,
    flatDescriptor(0x9b, 0xa), // code64, DPL0, present, G|L
    flatDescriptor(0x93, 0xc), // data, DPL0, present, G|DB
    flatDescriptor(0xfb, 0xa), // code64, DPL3
    flatDescriptor(0xf3, 0xc), // data, DPL3
  ];
  gdt.forEach((d, i) => mem.writeU64(LAYOUT.GDT + i * 8, d));
  // 64-bit TSS descriptor: 16 bytes, type 0xb (busy, as KVM's TR says), present.
  const tss = BigInt(LAYOUT.TSS);
  const tssLow = BigInt(TSS_LIMIT) | ((tss & 0xff_ffffn) << 16n) | (0x8bn << 40n) | (((tss >> 24n) & 0xffn) << 56n);
  mem.writeU64(LAYOUT.GDT + 5 * 8, tssLow);
  mem.writeU64(LAYOUT.GDT + 6 * 8, tss >> 32n);

  mem.fill(LAYOUT.TSS, TSS_LIMIT + 1, 0);
  mem.writeU64(LAYOUT.TSS + 4, BigInt(LAYOUT.KERNEL_STACK)); // rsp0
  mem.writeU16(LAYOUT.TSS + 102, TSS_IOMAP_BASE);
  mem.writeU8(LAYOUT.TSS + TSS_LIMIT, 0xff);

  mem.fill(LAYOUT.IDT, 0x1000, 0);
  writeIdentityPageTables(mem, true);
}

/**
 * Identity-maps 0..4 GiB with 2 MiB pages (PML4 at 0x9000, PDPT at 0xa000, page
 * directories at 0xb000..0xefff). `user` sets the U/S bit so CPL3 code may use them.
 */
export function writeIdentityPageTables(mem: GuestMemory, user: boolean): void {
  const us = user ? PTE_US : 0n;
  mem.fill(LAYOUT.PML4, 0x1000, 0);
  mem.writeU64(LAYOUT.PML4, BigInt(LAYOUT.PDPT) | PTE_P | PTE_RW | us);
  mem.fill(LAYOUT.PDPT, 0x1000, 0);
  for (let i = 0; i < 4; i++) {
    const pd = LAYOUT.PD + i * 0x1000;
    mem.writeU64(LAYOUT.PDPT + i * 8, BigInt(pd) | PTE_P | PTE_RW | us);
    for (let j = 0; j < 512; j++) {
      const phys = BigInt(i) * GIB + BigInt(j) * TWO_MIB;
      mem.writeU64(pd + j * 8, phys | PTE_P | PTE_RW | us | PTE_PS);
    }
  }
}

/** Control registers for 64-bit paging with the identity map. */
export const LONG_MODE_CONTROL = {
  cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
  cr3: BigInt(LAYOUT.PML4),
  cr4: CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT,
  efer: EFER_LME | EFER_LMA,
} as const;

function codeSegment(cpl: Cpl): Segment {
  return {
    base: 0n, limit: 0xffff_ffff, selector: cpl === 3 ? SELECTOR.CODE3 : SELECTOR.CODE0,
    type: 0xb, present: 1, dpl: cpl, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0,
  };
}

function dataSegment(cpl: Cpl): Segment {
  return {
    base: 0n, limit: 0xffff_ffff, selector: cpl === 3 ? SELECTOR.DATA3 : SELECTOR.DATA0,
    type: 0x3, present: 1, dpl: cpl, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0,
  };
}

/** Segment, descriptor-table and control registers for 64-bit mode at `cpl`. */
export function longModeSregs(current: Sregs, cpl: Cpl): Sregs {
  const data = dataSegment(cpl);
  return {
    ...current,
    cs: codeSegment(cpl),
    ds: data, es: data, fs: data, gs: data, ss: data,
    tr: {
      base: BigInt(LAYOUT.TSS), limit: TSS_LIMIT, selector: SELECTOR.TSS,
      type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0,
    },
    ldt: { base: 0n, limit: 0, selector: 0, type: 2, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 },
    gdt: { base: BigInt(LAYOUT.GDT), limit: 7 * 8 - 1 },
    idt: { base: BigInt(LAYOUT.IDT), limit: 0xfff },
    ...LONG_MODE_CONTROL,
  };
}

/** General registers at entry of a synthetic guest (docs/synthetic-guests.md). */
export function entryRegs(entry: number, vcpu: number, vcpuCount: number, param: bigint): Regs {
  const r = emptyRegs();
  r.rip = BigInt(entry);
  r.rsp = BigInt(LAYOUT.STACK_TOP - vcpu * LAYOUT.STACK_STRIDE);
  r.rdi = BigInt(vcpu);
  r.rsi = BigInt(vcpuCount);
  r.rdx = param;
  r.rflags = 0x3002n; // IOPL 3, reserved bit 1
  return r;
}
