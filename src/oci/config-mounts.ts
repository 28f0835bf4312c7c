// config.json `mounts` → what a Sandbox can share. Bind mounts of host directories
// become `mounts` (virtio-fs, one virtiofsd each); the kernel file systems a container
// expects (proc, sysfs, devpts, /dev, mqueue, cgroup) are made by our guest init, so
// those entries are skipped and listed; bind mounts of single files (podman's
// /etc/resolv.conf, /etc/hosts, /etc/hostname, /run/.containerenv) cannot be a virtio-fs
// share and are handed on as `fileBinds`, which the monitor stages (src/oci/file-binds.ts).
import { statSync } from 'node:fs';
import { posix, resolve } from 'node:path';
import { MAX_MOUNTS, type DirectoryMount } from '../engine/directory-share-options.js';
import { invalid, objectField, optionalArray, optionalString, stringField } from './json-fields.js';

/** What a host path is, for a bind mount's source (injectable for tests). */
export type PathKind = 'directory' | 'file' | 'missing' | 'other';

export function hostPathKind(path: string): PathKind {
  try {
    const st = statSync(path);
    return st.isDirectory() ? 'directory' : st.isFile() ? 'file' : 'other';
  } catch {
    return 'missing';
  }
}

export interface FileBind {
  source: string;
  destination: string;
  readOnly: boolean;
}

export interface SkippedMount {
  destination: string;
  type: string;
  reason: string;
}

export interface MountPlan {
  mounts: DirectoryMount[];
  fileBinds: FileBind[];
  skipped: SkippedMount[];
}

export const MAX_CONFIG_MOUNTS = 256;
const MAX_PATH = 4096;
const MAX_OPTIONS = 64;

/** Mount types our guest init provides itself, and why that is enough. */
const INIT_PROVIDED: Readonly<Record<string, string>> = {
  proc: 'the guest init mounts /proc',
  sysfs: 'the guest init mounts /sys',
  devpts: 'the guest init mounts /dev/pts',
  mqueue: 'the guest kernel\'s own POSIX message queues; no mqueue mount inside the VM yet',
  cgroup: 'cgroups are not managed inside the VM',
  cgroup2: 'cgroups are not managed inside the VM',
  devtmpfs: 'the guest init sets up /dev',
};

/** Guest folders that are the guest's own (a Sandbox refuses shares there). */
const GUEST_OWNED = ['/proc', '/sys', '/dev'];

/**
 * Sorts config.json `mounts` into directory shares, file binds and skipped entries.
 * Bind sources relative to the bundle are resolved against it. INVALID_ARGUMENT naming
 * the entry for a malformed one, a bind source that does not exist or is neither file
 * nor directory, or more than the Sandbox's MAX_MOUNTS directory binds (a volume the
 * container was promised must not vanish quietly).
 */
export function planMounts(v: unknown, bundle: string, kind: (p: string) => PathKind = hostPathKind): MountPlan {
  const plan: MountPlan = { mounts: [], fileBinds: [], skipped: [] };
  const entries = optionalArray(v, 'mounts', MAX_CONFIG_MOUNTS, (x) => x) ?? [];
  entries.forEach((raw, i) => {
    const field = `mounts[${i}]`;
    const m = objectField(raw, field);
    const destination = posix.resolve('/', stringField(m['destination'], `${field}.destination`, MAX_PATH));
    const type = optionalString(m['type'], `${field}.type`, 64) ?? '';
    const source = optionalString(m['source'], `${field}.source`, MAX_PATH);
    const options = optionalArray(m['options'], `${field}.options`, MAX_OPTIONS, (o, f) => stringField(o, f, 4096)) ?? [];
    const isBind = type === 'bind' || options.includes('bind') || options.includes('rbind');
    if (!isBind) {
      const reason = INIT_PROVIDED[type]
        ?? (type === 'tmpfs' && (destination === '/dev' || destination === '/dev/shm' || destination === '/tmp' || destination === '/run')
          ? `the guest init makes ${destination === '/dev/shm' ? '/dev' : destination} itself`
          : undefined);
      plan.skipped.push({ destination, type, reason: reason ?? `mount type ${JSON.stringify(type)} is not honoured inside the VM yet` });
      return;
    }
    if (source === undefined || source === '') throw invalid(`${field}.source`, 'is required for a bind mount');
    const hostPath = resolve(bundle, source);
    const readOnly = options.includes('ro') || options.includes('rro');
    if (GUEST_OWNED.some((g) => destination === g || destination.startsWith(`${g}/`))) {
      plan.skipped.push({ destination, type: 'bind', reason: `${destination} lies in the guest's own ${GUEST_OWNED.find((g) => destination === g || destination.startsWith(`${g}/`))}` });
      return;
    }
    if (destination === '/') throw invalid(`${field}.destination`, 'is "/": the root is root.path');
    switch (kind(hostPath)) {
      case 'directory':
        plan.mounts.push({ hostPath, guestPath: destination, ...(readOnly ? { readOnly: true } : {}) });
        return;
      case 'file':
        plan.fileBinds.push({ source: hostPath, destination, readOnly });
        return;
      case 'missing':
        throw invalid(`${field}.source`, `${JSON.stringify(hostPath)} does not exist`);
      default:
        throw invalid(`${field}.source`, `${JSON.stringify(hostPath)} is neither a file nor a directory`);
    }
  });
  // File binds travel in one more share (src/oci/file-binds.ts).
  const shares = plan.mounts.length + (plan.fileBinds.length > 0 ? 1 : 0);
  if (shares > MAX_MOUNTS) {
    throw invalid('mounts', `has ${plan.mounts.length} directory bind mounts${plan.fileBinds.length > 0 ? ' and file binds (one more share)' : ''}; a tsibox VM takes at most ${MAX_MOUNTS} shares (one virtiofsd each)`);
  }
  const seen = new Set<string>();
  for (const m of plan.mounts) {
    if (seen.has(m.guestPath)) throw invalid('mounts', `binds two directories at ${m.guestPath}`);
    seen.add(m.guestPath);
  }
  return plan;
}
