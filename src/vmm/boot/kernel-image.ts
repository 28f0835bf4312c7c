// Parsing the two kernel image formats we boot: bzImage (the x86 boot protocol's
// setup header + protected-mode kernel) and ELF vmlinux. Every field is checked:
// a malformed image is rejected with GUEST_IMAGE, never half-loaded.
import { TsiboxError } from '../../errors.js';

/** A piece of the image to copy into guest RAM. */
export interface LoadSegment {
  guestAddress: number;
  /** Bytes from the file; `memSize - data.length` zero bytes follow. */
  data: Uint8Array;
  memSize: number;
}

export interface KernelImage {
  format: 'bzimage' | 'elf';
  segments: LoadSegment[];
  /** Guest-physical address of the 64-bit entry point (startup_64). */
  entry64: number;
  /** The bzImage setup header bytes (0x1f1..end of header); null for ELF. */
  setupHeader: Uint8Array | null;
  /** Boot protocol version (0x020f = 2.15); ELF images speak 2.12 through our zero page. */
  protocol: number;
  /** Highest address the initrd may end at. */
  initrdAddrMax: number;
  /** Max command-line length the kernel accepts (excluding NUL). */
  cmdlineSize: number;
  /** kernel_alignment / pref_address, for relocatable bzImages. */
  kernelAlignment: number;
  prefAddress: number;
}

const HDR_OFFSET = 0x1f1;
const HDR_MAGIC = 0x5372_6448; // "HdrS"
const XLF_KERNEL_64 = 1;
const KERNEL_LOAD_ADDRESS = 0x10_0000; // 1 MiB: bzImage protected-mode kernel

function bad(msg: string): TsiboxError {
  return new TsiboxError('GUEST_IMAGE', `invalid kernel image: ${msg}`);
}

export function parseKernelImage(bytes: Uint8Array): KernelImage {
  if (bytes.length >= 4 && bytes[0] === 0x7f && bytes[1] === 0x45 && bytes[2] === 0x4c && bytes[3] === 0x46) return parseElf(bytes);
  if (bytes.length >= 0x206 && new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(0x202, true) === HDR_MAGIC) return parseBzImage(bytes);
  throw bad(`neither an ELF vmlinux nor a bzImage (${bytes.length} bytes, no ELF magic, no "HdrS" at 0x202)`);
}

function parseBzImage(bytes: Uint8Array): KernelImage {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const version = dv.getUint16(0x206, true);
  if (version < 0x020c) throw bad(`boot protocol ${fmtVersion(version)} is too old; 2.12+ is needed for 64-bit entry`);
  if (bytes.length < 0x268) throw bad('truncated setup header');
  if (dv.getUint16(0x1fe, true) !== 0xaa55) throw bad('boot_flag is not 0xaa55');
  const xloadflags = dv.getUint16(0x236, true);
  if (!(xloadflags & XLF_KERNEL_64)) throw bad('kernel has no 64-bit entry point (XLF_KERNEL_64 clear)');
  let setupSects = dv.getUint8(0x1f1);
  if (setupSects === 0) setupSects = 4;
  const setupSize = (setupSects + 1) * 512;
  if (setupSize >= bytes.length) throw bad(`setup (${setupSize} bytes) is not followed by a kernel`);
  const syssize = dv.getUint32(0x1f4, true) * 16;
  const kernel = bytes.subarray(setupSize);
  if (syssize > kernel.length) throw bad(`syssize says ${syssize} bytes but the file has ${kernel.length} after setup`);
  const headerEnd = 0x202 + dv.getUint8(0x201);
  if (headerEnd > setupSize || headerEnd < 0x268) throw bad(`setup header end 0x${headerEnd.toString(16)} is out of range`);
  const initSize = dv.getUint32(0x260, true);
  return {
    format: 'bzimage',
    segments: [{ guestAddress: KERNEL_LOAD_ADDRESS, data: kernel, memSize: Math.max(kernel.length, initSize) }],
    entry64: KERNEL_LOAD_ADDRESS + 0x200,
    setupHeader: bytes.slice(HDR_OFFSET, headerEnd),
    protocol: version,
    initrdAddrMax: dv.getUint32(0x22c, true),
    cmdlineSize: dv.getUint32(0x238, true),
    kernelAlignment: dv.getUint32(0x230, true),
    prefAddress: Number(dv.getBigUint64(0x258, true)),
  };
}

function parseElf(bytes: Uint8Array): KernelImage {
  if (bytes.length < 64) throw bad('truncated ELF header');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  if (bytes[4] !== 2) throw bad('not a 64-bit ELF');
  if (bytes[5] !== 1) throw bad('not a little-endian ELF');
  if (dv.getUint16(18, true) !== 62) throw bad('not an x86-64 ELF');
  const entry = dv.getBigUint64(24, true);
  const phoff = dv.getBigUint64(32, true);
  const phentsize = dv.getUint16(54, true);
  const phnum = dv.getUint16(56, true);
  if (phentsize < 56 || phnum === 0 || phnum > 256) throw bad(`bad program headers (size ${phentsize}, count ${phnum})`);
  if (phoff > BigInt(bytes.length) || Number(phoff) + phentsize * phnum > bytes.length) throw bad('program headers lie outside the file');
  const segments: LoadSegment[] = [];
  for (let i = 0; i < phnum; i++) {
    const o = Number(phoff) + i * phentsize;
    if (dv.getUint32(o, true) !== 1 /* PT_LOAD */) continue;
    const offset = dv.getBigUint64(o + 8, true);
    const paddr = dv.getBigUint64(o + 24, true);
    const filesz = dv.getBigUint64(o + 32, true);
    const memsz = dv.getBigUint64(o + 40, true);
    if (filesz > memsz) throw bad(`segment ${i}: file size exceeds memory size`);
    if (offset + filesz > BigInt(bytes.length)) throw bad(`segment ${i} lies outside the file`);
    if (paddr + memsz > 0x1_0000_0000n) throw bad(`segment ${i} at physical 0x${paddr.toString(16)} is above 4 GiB`);
    segments.push({ guestAddress: Number(paddr), data: bytes.subarray(Number(offset), Number(offset + filesz)), memSize: Number(memsz) });
  }
  if (segments.length === 0) throw bad('no loadable segments');
  // x86-64 vmlinux is linked with ENTRY(phys_startup_64): e_entry is physical.
  if (entry >= 0x1_0000_0000n) throw bad(`entry point 0x${entry.toString(16)} is not a physical address`);
  const e = Number(entry);
  if (!segments.some((s) => e >= s.guestAddress && e < s.guestAddress + s.memSize)) throw bad('entry point is outside every loadable segment');
  return {
    format: 'elf',
    segments,
    entry64: e,
    setupHeader: null,
    protocol: 0x020c,
    initrdAddrMax: 0x7fff_ffff,
    cmdlineSize: 2048,
    kernelAlignment: 0x20_0000,
    prefAddress: segments[0]!.guestAddress,
  };
}

function fmtVersion(v: number): string {
  return `${v >> 8}.${v & 0xff}`;
}
