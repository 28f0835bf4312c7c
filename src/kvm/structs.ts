// Byte layouts of the KVM structs we exchange, encoded into Buffers by hand: struct
// marshalling through koffi costs microseconds, DataView access costs nanoseconds.

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
  avl: number;
  unusable: number;
}

export interface DescriptorTable {
  base: bigint;
  limit: number;
}

export interface Sregs {
  cs: Segment; ds: Segment; es: Segment; fs: Segment; gs: Segment; ss: Segment; tr: Segment; ldt: Segment;
  gdt: DescriptorTable;
  idt: DescriptorTable;
  cr0: bigint; cr2: bigint; cr3: bigint; cr4: bigint; cr8: bigint; efer: bigint; apicBase: bigint;
}

export const REG_NAMES = [
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const;
export type RegName = (typeof REG_NAMES)[number];
export type Regs = Record<RegName, bigint>;

export const REGS_SIZE = 144;
export const SREGS_SIZE = 312;
export const FPU_SIZE = 416;
export const LAPIC_SIZE = 1024;
export const SEGMENT_SIZE = 24;

const SEGMENT_ORDER = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;

export function emptyRegs(): Regs {
  const r = {} as Regs;
  for (const n of REG_NAMES) r[n] = 0n;
  return r;
}

export function encodeRegs(r: Regs, out: Buffer = Buffer.alloc(REGS_SIZE)): Buffer {
  REG_NAMES.forEach((n, i) => out.writeBigUInt64LE(BigInt.asUintN(64, r[n]), i * 8));
  return out;
}

export function decodeRegs(b: Buffer): Regs {
  const r = {} as Regs;
  REG_NAMES.forEach((n, i) => { r[n] = b.readBigUInt64LE(i * 8); });
  return r;
}

function encodeSegment(s: Segment, b: Buffer, off: number): void {
  b.writeBigUInt64LE(s.base, off);
  b.writeUInt32LE(s.limit >>> 0, off + 8);
  b.writeUInt16LE(s.selector, off + 12);
  const bytes = [s.type, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable, 0];
  bytes.forEach((v, i) => b.writeUInt8(v, off + 14 + i));
}

function decodeSegment(b: Buffer, off: number): Segment {
  return {
    base: b.readBigUInt64LE(off),
    limit: b.readUInt32LE(off + 8),
    selector: b.readUInt16LE(off + 12),
    type: b[off + 14]!, present: b[off + 15]!, dpl: b[off + 16]!, db: b[off + 17]!,
    s: b[off + 18]!, l: b[off + 19]!, g: b[off + 20]!, avl: b[off + 21]!, unusable: b[off + 22]!,
  };
}

export function encodeSregs(s: Sregs, out: Buffer = Buffer.alloc(SREGS_SIZE)): Buffer {
  SEGMENT_ORDER.forEach((n, i) => encodeSegment(s[n], out, i * SEGMENT_SIZE));
  out.writeBigUInt64LE(s.gdt.base, 192);
  out.writeUInt16LE(s.gdt.limit, 200);
  out.writeBigUInt64LE(s.idt.base, 208);
  out.writeUInt16LE(s.idt.limit, 216);
  const crs = [s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer, s.apicBase];
  crs.forEach((v, i) => out.writeBigUInt64LE(v, 224 + i * 8));
  // interrupt_bitmap (280..312) is left as the caller's buffer has it (zero when new).
  return out;
}

export function decodeSregs(b: Buffer): Sregs {
  const seg = (i: number): Segment => decodeSegment(b, i * SEGMENT_SIZE);
  return {
    cs: seg(0), ds: seg(1), es: seg(2), fs: seg(3), gs: seg(4), ss: seg(5), tr: seg(6), ldt: seg(7),
    gdt: { base: b.readBigUInt64LE(192), limit: b.readUInt16LE(200) },
    idt: { base: b.readBigUInt64LE(208), limit: b.readUInt16LE(216) },
    cr0: b.readBigUInt64LE(224), cr2: b.readBigUInt64LE(232), cr3: b.readBigUInt64LE(240),
    cr4: b.readBigUInt64LE(248), cr8: b.readBigUInt64LE(256), efer: b.readBigUInt64LE(264),
    apicBase: b.readBigUInt64LE(272),
  };
}

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export const CPUID_ENTRY_SIZE = 40;

export function encodeCpuid(entries: readonly CpuidEntry[]): Buffer {
  const b = Buffer.alloc(8 + entries.length * CPUID_ENTRY_SIZE);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    const o = 8 + i * CPUID_ENTRY_SIZE;
    b.writeUInt32LE(e.function >>> 0, o);
    b.writeUInt32LE(e.index >>> 0, o + 4);
    b.writeUInt32LE(e.flags >>> 0, o + 8);
    b.writeUInt32LE(e.eax >>> 0, o + 12);
    b.writeUInt32LE(e.ebx >>> 0, o + 16);
    b.writeUInt32LE(e.ecx >>> 0, o + 20);
    b.writeUInt32LE(e.edx >>> 0, o + 24);
  });
  return b;
}

export function decodeCpuid(b: Buffer): CpuidEntry[] {
  const n = b.readUInt32LE(0);
  const out: CpuidEntry[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + i * CPUID_ENTRY_SIZE;
    out.push({
      function: b.readUInt32LE(o), index: b.readUInt32LE(o + 4), flags: b.readUInt32LE(o + 8),
      eax: b.readUInt32LE(o + 12), ebx: b.readUInt32LE(o + 16), ecx: b.readUInt32LE(o + 20), edx: b.readUInt32LE(o + 24),
    });
  }
  return out;
}

export interface MsrEntry {
  index: number;
  data: bigint;
}

export function encodeMsrs(entries: readonly MsrEntry[]): Buffer {
  const b = Buffer.alloc(8 + entries.length * 16);
  b.writeUInt32LE(entries.length, 0);
  entries.forEach((e, i) => {
    b.writeUInt32LE(e.index >>> 0, 8 + i * 16);
    b.writeBigUInt64LE(e.data, 8 + i * 16 + 8);
  });
  return b;
}

export function decodeMsrs(b: Buffer, count: number): MsrEntry[] {
  const out: MsrEntry[] = [];
  for (let i = 0; i < count; i++) out.push({ index: b.readUInt32LE(8 + i * 16), data: b.readBigUInt64LE(8 + i * 16 + 8) });
  return out;
}

/** Offsets inside the mmap'ed struct kvm_run. */
export const KVM_RUN_OFFSETS = {
  immediateExit: 1,
  exitReason: 8,
  io: { direction: 32, size: 33, port: 34, count: 36, dataOffset: 40 },
  mmio: { physAddr: 32, data: 40, len: 48, isWrite: 52 },
  failEntry: { reason: 32, cpu: 40 },
  internal: { suberror: 32, ndata: 36, data: 40 },
  systemEvent: { type: 32, ndata: 36, data: 40 },
} as const;
