// The options that give the guest block devices (`disks`, `rootDisk`), their checks,
// and the guest device each one becomes. Checked before anything starts; the
// processes are in disks.ts.
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { TsiboxError } from '../errors.js';

/** Image formats qemu-storage-daemon opens for us. */
export type DiskFormat = 'raw' | 'qcow2';

/** A host image file the guest sees as a virtio-blk disk (/dev/vdX). */
export interface DiskImage {
  /** Absolute path of an existing regular file (or block device). */
  path: string;
  /** 'raw': the file's bytes are the disk; 'qcow2': a qcow2 image (its virtual size is the disk's). */
  format: DiskFormat;
  /** The guest sees a read-only disk (writes fail with EROFS/EPERM); the image is opened read-only. */
  readOnly?: boolean;
}

/** File systems init can mount as the root (built into the guest kernel: ext4, which also reads ext2/ext3). */
export type RootDiskFsType = 'ext4' | 'ext3' | 'ext2';

/** A disk that holds the guest's root file system on the whole device (no partition table). */
export interface RootDiskImage extends DiskImage {
  /** Default 'ext4'. */
  fsType?: RootDiskFsType;
}

/** A checked disk: where it comes from and what the guest calls it. */
export interface CheckedDisk {
  path: string;
  format: DiskFormat;
  readOnly: boolean;
  /** The guest's device name ('vda', 'vdb', ...): the root disk first, then `disks` in order. */
  guestDevice: string;
  /** 'rootDisk' or 'disks[N]', for messages. */
  what: string;
}

/** The sandbox's disks: the root disk (or none) and all of them in attach order. */
export interface CheckedDisks {
  root: { guestDevice: string; fsType: RootDiskFsType; readOnly: boolean } | null;
  disks: CheckedDisk[];
}

/** At most this many disks, the root disk included: each is a daemon and a virtio-mmio slot. */
export const MAX_DISKS = 8;
const FS_TYPES: readonly string[] = ['ext4', 'ext3', 'ext2'];
/** A qcow2 image starts with "QFI\xfb". */
const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

/**
 * Checks `disks` and `rootDisk` and names each disk's guest device; null when there is
 * none. INVALID_ARGUMENT (naming the option and the path) for a relative, missing or
 * non-file path, a format other than 'raw'/'qcow2', a 'qcow2' file without the qcow2
 * header or whose header names another host file (a backing file, an external data
 * file), an fsType other than ext4/ext3/ext2, the same path twice, more than MAX_DISKS.
 */
export function checkDisks(opts: { disks?: readonly DiskImage[]; rootDisk?: RootDiskImage }): CheckedDisks | null {
  const { disks, rootDisk } = opts;
  if (disks !== undefined && !Array.isArray(disks)) throw new TsiboxError('INVALID_ARGUMENT', 'disks must be an array of { path, format, readOnly? }');
  const list: Array<{ what: string; d: unknown }> = [
    ...(rootDisk !== undefined ? [{ what: 'rootDisk', d: rootDisk as unknown }] : []),
    ...(disks ?? []).map((d, i) => ({ what: `disks[${i}]`, d: d as unknown })),
  ];
  if (list.length === 0) return null;
  if (list.length > MAX_DISKS) throw new TsiboxError('INVALID_ARGUMENT', `disks: at most ${MAX_DISKS} disks (rootDisk included), got ${list.length}`);
  const out: CheckedDisks = { root: null, disks: [] };
  const seen = new Map<string, string>();
  list.forEach(({ what, d }, i) => {
    if (typeof d !== 'object' || d === null) throw new TsiboxError('INVALID_ARGUMENT', `${what} must be { path, format, readOnly? }`);
    const { path, format, readOnly } = d as Record<string, unknown>;
    if (format !== 'raw' && format !== 'qcow2') throw new TsiboxError('INVALID_ARGUMENT', `${what}.format must be 'raw' or 'qcow2', got ${JSON.stringify(format)}`);
    if (readOnly !== undefined && typeof readOnly !== 'boolean') throw new TsiboxError('INVALID_ARGUMENT', `${what}.readOnly must be a boolean`);
    const file = hostImage(`${what}.path`, path);
    if (format === 'qcow2') {
      const why = qcow2Refusal(file);
      if (why !== null) throw new TsiboxError('INVALID_ARGUMENT', `${what}: ${file} ${why}`);
    }
    // Two writers of one image would corrupt it; qemu-storage-daemon's locks would refuse too, less clearly.
    const twice = seen.get(file);
    if (twice !== undefined) throw new TsiboxError('INVALID_ARGUMENT', `${what}: ${file} is already ${twice}`);
    seen.set(file, what);
    out.disks.push({ path: file, format, readOnly: readOnly === true, guestDevice: guestDeviceName(i), what });
  });
  if (rootDisk !== undefined) {
    const fsType = rootDisk.fsType ?? 'ext4';
    if (!FS_TYPES.includes(fsType)) throw new TsiboxError('INVALID_ARGUMENT', `rootDisk.fsType must be one of ${FS_TYPES.join(', ')}, got ${JSON.stringify(fsType)}`);
    out.root = { guestDevice: out.disks[0]!.guestDevice, fsType, readOnly: out.disks[0]!.readOnly };
  }
  return out;
}

/** virtio-blk's names in probe order: vda..vdz (MAX_DISKS keeps us far from vdaa). */
export function guestDeviceName(index: number): string {
  return `vd${String.fromCharCode(0x61 + index)}`;
}

/** An absolute path of an existing regular file or block device, else INVALID_ARGUMENT naming `what`. */
function hostImage(what: string, p: unknown): string {
  if (typeof p !== 'string' || p === '') throw new TsiboxError('INVALID_ARGUMENT', `${what} must be a host image file path`);
  if (!isAbsolute(p)) throw new TsiboxError('INVALID_ARGUMENT', `${what} must be an absolute host path, got ${JSON.stringify(p)}`);
  if (p.includes('\0')) throw new TsiboxError('INVALID_ARGUMENT', `${what} contains a NUL byte`);
  let ok: boolean;
  try {
    const st = statSync(p);
    ok = st.isFile() || st.isBlockDevice();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new TsiboxError('INVALID_ARGUMENT', `${what}: ${p} cannot be used (${code === 'ENOENT' ? 'it does not exist' : code})`, { cause: err });
  }
  if (!ok) throw new TsiboxError('INVALID_ARGUMENT', `${what}: ${p} is not a regular file or block device`);
  return p;
}

/**
 * Why a 'qcow2' image is refused, or null. Besides the magic, the header must name no
 * other host file: qemu-storage-daemon (running as the caller, often root) would open a
 * backing file or an external data file named there (any path: /etc/shadow, /dev/sda)
 * and serve it to the guest, for reading and (data file) writing. An image from
 * somewhere else must not be able to do that; flatten it first.
 */
function qcow2Refusal(file: string): string | null {
  const head = Buffer.alloc(80);
  let got = 0;
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    got = readSync(fd, head, 0, head.length, 0);
  } catch {
    got = 0;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  if (got < 4 || !head.subarray(0, 4).equals(QCOW2_MAGIC)) return "is not a qcow2 image (no qcow2 header); use format 'raw' for a plain image";
  if (got < 72) return 'has a truncated qcow2 header';
  const version = head.readUInt32BE(4);
  if (head.readBigUInt64BE(8) !== 0n) {
    return 'has a backing file, which tsibox does not open (the header can name any host file); flatten it first: qemu-img convert -O qcow2 IMAGE FLAT.qcow2';
  }
  // Incompatible feature bit 2 (version 3+): the data lives in an external file the header names.
  if (version >= 3 && got >= 80 && (head.readBigUInt64BE(72) & 4n) !== 0n) {
    return 'keeps its data in an external data file, which tsibox does not open (the header can name any host file); convert it first: qemu-img convert -O qcow2 IMAGE FLAT.qcow2';
  }
  return null;
}
