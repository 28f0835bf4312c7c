// `tsibox run --disk PATH[:raw|qcow2][:ro]... [--root-disk PATH[:raw|qcow2][:ro]]` → the
// Sandbox's disks and rootDisk options (checked further by the sandbox).
import type { DiskImage, RootDiskImage } from '../engine/disk-options.js';
import { UsageError } from './args.js';

/** The flags' Sandbox options; UsageError for a malformed spec. */
export function diskOptions(o: Record<string, unknown>): { disks?: DiskImage[]; rootDisk?: RootDiskImage } {
  const out: { disks?: DiskImage[]; rootDisk?: RootDiskImage } = {};
  if (typeof o['root-disk'] === 'string') out.rootDisk = parseDisk(o['root-disk'], '--root-disk');
  const specs = Array.isArray(o['disk']) ? o['disk'].map(String) : [];
  if (specs.length > 0) out.disks = specs.map((s) => parseDisk(s, '--disk'));
  return out;
}

/**
 * 'PATH', 'PATH:qcow2', 'PATH:ro', 'PATH:raw:ro' (format default raw; the path without
 * ':'). The suffixes are read from the end, so 'PATH:ro:qcow2' is refused.
 */
export function parseDisk(spec: string, flag = '--disk'): DiskImage {
  const parts = spec.split(':');
  let readOnly = false;
  if (parts.length > 1 && (parts.at(-1) === 'ro' || parts.at(-1) === 'rw')) readOnly = parts.pop() === 'ro';
  let format: DiskImage['format'] = 'raw';
  if (parts.length > 1 && (parts.at(-1) === 'raw' || parts.at(-1) === 'qcow2')) format = parts.pop() as DiskImage['format'];
  const [path] = parts;
  if (parts.length !== 1 || !path) {
    throw new UsageError(`${flag} wants PATH[:raw|qcow2][:ro] (an absolute path without ':'), got ${JSON.stringify(spec)}`);
  }
  return { path, format, ...(readOnly ? { readOnly: true } : {}) };
}
