// The Linux x86-64 boot protocol, 64-bit entry: kernel segments in RAM, a zero page
// (struct boot_params) with the setup header, e820 map, command line and initrd,
// identity page tables, a flat GDT, and the BSP's registers at startup_64.
import { readFileSync } from 'node:fs';
import { writeMpTable } from './mptable.js';
import { TsiboxError } from '../../errors.js';
import type { Vm } from '../vm.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { Segment } from '../../kvm/structs.js';
import { emptyRegs } from '../../kvm/structs.js';
import { KVM_MP_STATE } from '../../kvm/ioctl-numbers.js';
import { flatDescriptor, writeIdentityPageTables, LONG_MODE_CONTROL } from '../x86/longmode.js';
import { parseKernelImage, type KernelImage } from './kernel-image.js';

/** Guest-physical addresses of what the loader writes (as libkrun and Firecracker). */
export const BOOT_LAYOUT = {
  GDT: 0x500,
  ZERO_PAGE: 0x7000,
  STACK: 0x8ff0,
  CMDLINE: 0x20000,
  /** Room reserved for the command line (0x20000..0x30000). */
  CMDLINE_MAX: 0xffff,
  EBDA_START: 0x9fc00,
  HIGH_MEMORY: 0x10_0000,
} as const;

// The boot protocol asks for __BOOT_CS = 0x10 and __BOOT_DS = 0x18.
const BOOT_CS = 0x10;
const BOOT_DS = 0x18;
const BOOT_TSS = 0x20;

const E820_RAM = 1;
const E820_MAX = 128;

// Zero-page offsets (arch/x86/include/uapi/asm/bootparam.h).
const ZP = {
  E820_ENTRIES: 0x1e8,
  SETUP_HEADER: 0x1f1,
  BOOT_FLAG: 0x1fe,
  HEADER: 0x202,
  VERSION: 0x206,
  TYPE_OF_LOADER: 0x210,
  LOADFLAGS: 0x211,
  RAMDISK_IMAGE: 0x218,
  RAMDISK_SIZE: 0x21c,
  HEAP_END_PTR: 0x224,
  CMD_LINE_PTR: 0x228,
  KERNEL_ALIGNMENT: 0x230,
  CMDLINE_SIZE: 0x238,
  E820_TABLE: 0x2d0,
} as const;
const LOADED_HIGH = 0x01;
const CAN_USE_HEAP = 0x80;

export interface LinuxBootOptions {
  /** bzImage or ELF vmlinux: a path or the bytes. */
  kernel: string | Uint8Array;
  /** An initramfs (cpio, optionally compressed): a path or the bytes. */
  initrd?: string | Uint8Array;
  cmdline: string;
}

export interface LinuxBootInfo {
  format: KernelImage['format'];
  entry: number;
  initrd: { address: number; size: number } | null;
  cmdline: string;
  e820: Array<{ address: number; size: number; type: number }>;
}

export function loadLinux(vm: Vm, opts: LinuxBootOptions): LinuxBootInfo {
  const image = parseKernelImage(typeof opts.kernel === 'string' ? readFileSync(opts.kernel) : opts.kernel);
  const mem = vm.memory;
  for (const seg of image.segments) {
    if (!mem.contains(seg.guestAddress, seg.memSize)) {
      throw new TsiboxError('GUEST_IMAGE', `kernel segment at 0x${seg.guestAddress.toString(16)} (+0x${seg.memSize.toString(16)}) does not fit in ${mem.size >> 20} MiB of RAM`);
    }
    mem.write(seg.guestAddress, seg.data);
    mem.fill(seg.guestAddress + seg.data.length, seg.memSize - seg.data.length, 0);
  }
  const kernelEnd = Math.max(...image.segments.map((s) => s.guestAddress + s.memSize));

  const cmdline = Buffer.from(opts.cmdline, 'latin1');
  if (cmdline.includes(0)) throw new TsiboxError('INVALID_ARGUMENT', 'the kernel command line contains a NUL byte');
  const maxCmdline = Math.min(image.cmdlineSize || 255, BOOT_LAYOUT.CMDLINE_MAX);
  if (cmdline.length > maxCmdline) {
    throw new TsiboxError('INVALID_ARGUMENT', `the kernel command line is ${cmdline.length} bytes; this kernel accepts at most ${maxCmdline}`);
  }
  mem.write(BOOT_LAYOUT.CMDLINE, cmdline);
  mem.writeU8(BOOT_LAYOUT.CMDLINE + cmdline.length, 0);

  let initrd: LinuxBootInfo['initrd'] = null;
  if (opts.initrd !== undefined) {
    const bytes = typeof opts.initrd === 'string' ? readFileSync(opts.initrd) : opts.initrd;
    initrd = placeInitrd(mem, bytes.length, kernelEnd, image.initrdAddrMax);
    mem.write(initrd.address, bytes);
  }

  const e820 = e820Map(mem);
  writeZeroPage(mem, image, cmdline.length, initrd, e820);
  // CPUs and the I/O APIC for a kernel without ACPI (below 640 KiB, outside the e820 RAM).
  writeMpTable(mem, vm.vcpus.length);
  writeBootGdt(mem);
  writeIdentityPageTables(mem, false);
  setBootRegisters(vm, image.entry64);
  return { format: image.format, entry: image.entry64, initrd, cmdline: opts.cmdline, e820 };
}

/** Highest page-aligned spot in low RAM that ends below the kernel's limit and above the kernel. */
function placeInitrd(mem: GuestMemory, size: number, kernelEnd: number, addrMax: number): { address: number; size: number } {
  const low = mem.regions[0]!;
  const top = Math.min(low.guestAddress + low.size, addrMax + 1);
  const address = Math.floor((top - size) / 4096) * 4096;
  if (size === 0 || address < kernelEnd) {
    throw new TsiboxError('GUEST_IMAGE', `the initrd (${size} bytes) does not fit between the kernel's end (0x${kernelEnd.toString(16)}) and 0x${top.toString(16)}: give the VM more memory`);
  }
  return { address, size };
}

function e820Map(mem: GuestMemory): LinuxBootInfo['e820'] {
  const map: LinuxBootInfo['e820'] = [{ address: 0, size: BOOT_LAYOUT.EBDA_START, type: E820_RAM }];
  for (const r of mem.regions) {
    const start = Math.max(r.guestAddress, BOOT_LAYOUT.HIGH_MEMORY);
    const end = r.guestAddress + r.size;
    if (end > start) map.push({ address: start, size: end - start, type: E820_RAM });
  }
  if (map.length > E820_MAX) throw new TsiboxError('INVALID_STATE', 'too many e820 entries');
  return map;
}

function writeZeroPage(mem: GuestMemory, image: KernelImage, cmdlineLength: number, initrd: LinuxBootInfo['initrd'], e820: LinuxBootInfo['e820']): void {
  const zp = BOOT_LAYOUT.ZERO_PAGE;
  mem.fill(zp, 0x1000, 0);
  if (image.setupHeader !== null) {
    mem.write(zp + ZP.SETUP_HEADER, image.setupHeader);
  } else {
    mem.writeU16(zp + ZP.BOOT_FLAG, 0xaa55);
    mem.writeU32(zp + ZP.HEADER, 0x5372_6448); // "HdrS"
    mem.writeU16(zp + ZP.VERSION, image.protocol);
    mem.writeU32(zp + ZP.KERNEL_ALIGNMENT, image.kernelAlignment);
  }
  mem.writeU8(zp + ZP.TYPE_OF_LOADER, 0xff); // undefined loader
  mem.writeU8(zp + ZP.LOADFLAGS, mem.readU8(zp + ZP.LOADFLAGS) | LOADED_HIGH | CAN_USE_HEAP);
  mem.writeU16(zp + ZP.HEAP_END_PTR, 0xfe00);
  mem.writeU32(zp + ZP.CMD_LINE_PTR, BOOT_LAYOUT.CMDLINE);
  mem.writeU32(zp + ZP.CMDLINE_SIZE, cmdlineLength);
  if (initrd !== null) {
    mem.writeU32(zp + ZP.RAMDISK_IMAGE, initrd.address);
    mem.writeU32(zp + ZP.RAMDISK_SIZE, initrd.size);
  }
  mem.writeU8(zp + ZP.E820_ENTRIES, e820.length);
  e820.forEach((e, i) => {
    const o = zp + ZP.E820_TABLE + i * 20;
    mem.writeU64(o, BigInt(e.address));
    mem.writeU64(o + 8, BigInt(e.size));
    mem.writeU32(o + 16, e.type);
  });
}

function writeBootGdt(mem: GuestMemory): void {
  const g = BOOT_LAYOUT.GDT;
  mem.fill(g, 0x30, 0);
  mem.writeU64(g + BOOT_CS, flatDescriptor(0x9b, 0xa));
  mem.writeU64(g + BOOT_DS, flatDescriptor(0x93, 0xc));
  // A minimal busy TSS descriptor: VMX entry wants a usable TR; Linux loads its own.
  mem.writeU64(g + BOOT_TSS, 0x67n | (0x8bn << 40n));
}

function segment(selector: number, code: boolean): Segment {
  return {
    base: 0n, limit: 0xffff_ffff, selector, type: code ? 0xb : 0x3, present: 1, dpl: 0,
    db: code ? 0 : 1, s: 1, l: code ? 1 : 0, g: 1, avl: 0, unusable: 0,
  };
}

function setBootRegisters(vm: Vm, entry: number): void {
  const bsp = vm.vcpus[0]!;
  const data = segment(BOOT_DS, false);
  bsp.setSregs({
    ...bsp.getSregs(),
    cs: segment(BOOT_CS, true),
    ds: data, es: data, fs: data, gs: data, ss: data,
    tr: { base: 0n, limit: 0x67, selector: BOOT_TSS, type: 0xb, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 },
    ldt: { base: 0n, limit: 0, selector: 0, type: 2, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 1 },
    gdt: { base: BigInt(BOOT_LAYOUT.GDT), limit: 0x27 },
    idt: { base: 0n, limit: 0 },
    ...LONG_MODE_CONTROL,
  });
  const r = emptyRegs();
  r.rip = BigInt(entry);
  r.rsi = BigInt(BOOT_LAYOUT.ZERO_PAGE);
  r.rsp = BigInt(BOOT_LAYOUT.STACK);
  r.rbp = BigInt(BOOT_LAYOUT.STACK);
  r.rflags = 2n;
  bsp.setRegs(r);
  bsp.setMpState(KVM_MP_STATE.RUNNABLE);
  // Application processors wait for INIT/SIPI from the kernel (the default state).
}

