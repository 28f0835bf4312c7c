// config.json `linux` (config-linux.md): the namespaces (a VM has all of its own; the
// network namespace's path is where the VMM makes its host sockets), the resources that
// size the VM (memory.limit, cpu quota/period), and the rest, which a microVM accepts
// without doing it: each present field becomes one `notHonoured` entry.
import { integerField, invalid, objectField, optionalArray, optionalObject, optionalString, stringField } from './json-fields.js';
import type { NotHonoured } from './notes.js';

const NAMESPACE_TYPES = new Set(['pid', 'network', 'mount', 'ipc', 'uts', 'user', 'cgroup', 'time']);

/** namespaces[] → the network namespace to enter; a user namespace or a joined (path) one is noted. */
export function planNamespaces(v: unknown, notHonoured: NotHonoured[]): { netnsPath?: string; newNetns?: true } {
  const list = optionalArray(v, 'linux.namespaces', 16, (x, f) => {
    const o = objectField(x, f);
    const type = stringField(o['type'], `${f}.type`, 16);
    if (!NAMESPACE_TYPES.has(type)) throw invalid(`${f}.type`, `is not a namespace type: ${JSON.stringify(type)}`);
    const path = optionalString(o['path'], `${f}.path`, 4096);
    if (path !== undefined && !path.startsWith('/')) throw invalid(`${f}.path`, `must be an absolute path, got ${JSON.stringify(path)}`);
    return { type, path, field: f };
  }) ?? [];
  const seen = new Set<string>();
  let netnsPath: string | undefined;
  let newNetns = false;
  for (const ns of list) {
    if (seen.has(ns.type)) throw invalid('linux.namespaces', `lists ${ns.type} twice`);
    seen.add(ns.type);
    if (ns.type === 'network') {
      if (ns.path !== undefined) netnsPath = ns.path;
      else newNetns = true;
    } else if (ns.type === 'user') {
      notHonoured.push({ field: ns.field, reason: 'no user namespace: the VM is the boundary, the workload\'s ids are the guest\'s' });
    } else if (ns.path !== undefined) {
      notHonoured.push({ field: `${ns.field}.path`, reason: `joining another ${ns.type} namespace (a pod sharing one VM) is not supported yet; the container gets the VM's own` });
    }
  }
  return netnsPath !== undefined ? { netnsPath } : newNetns ? { newNetns: true } : {};
}

/** The VM's size from linux.resources: memory.limit (bytes → MiB, rounded up), cpu quota/period (rounded up). Everything else there is noted. */
export function resourceSizes(v: unknown, notHonoured: NotHonoured[]): { cpus?: number; memoryMiB?: number } {
  const r = optionalObject(v, 'linux.resources');
  if (r === undefined) return {};
  const out: { cpus?: number; memoryMiB?: number } = {};
  const mem = optionalObject(r['memory'], 'linux.resources.memory');
  const limit = mem?.['limit'];
  if (limit !== undefined && limit !== null && limit !== -1) {
    const bytes = integerField(limit, 'linux.resources.memory.limit', 1, Number.MAX_SAFE_INTEGER);
    const mib = Math.ceil(bytes / (1024 * 1024));
    if (mib >= 32 && mib <= 65536) out.memoryMiB = mib;
    else notHonoured.push({ field: 'linux.resources.memory.limit', reason: `${mib} MiB is outside the VM's 32..65536 MiB; the default size is used` });
  }
  const cpu = optionalObject(r['cpu'], 'linux.resources.cpu');
  const quota = cpu?.['quota'];
  const period = cpu?.['period'];
  if (quota !== undefined && quota !== null && quota !== -1 && period !== undefined && period !== null) {
    const q = integerField(quota, 'linux.resources.cpu.quota', 1, Number.MAX_SAFE_INTEGER);
    const p = integerField(period, 'linux.resources.cpu.period', 1, Number.MAX_SAFE_INTEGER);
    out.cpus = Math.min(16, Math.max(1, Math.ceil(q / p)));
  }
  const rest = Object.keys(r).filter((k) => !isSizeOnly(k, r[k]));
  if (rest.length > 0) notHonoured.push({ field: 'linux.resources', reason: `cgroup limits inside the VM (${rest.join(', ')}); only memory.limit and cpu quota/period size the VM` });
  return out;
}

/** A resources entry that carries nothing but what sizes the VM (podman always sends pids, devices, ...). */
function isSizeOnly(key: string, value: unknown): boolean {
  const o = typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  if (key === 'memory' && o !== null) return Object.keys(o).every((k) => k === 'limit');
  if (key === 'cpu' && o !== null) return Object.keys(o).every((k) => k === 'quota' || k === 'period');
  return false;
}

/** Why each other linux field is accepted without being done. */
const LINUX_NOTES: Readonly<Record<string, string>> = {
  cgroupsPath: 'the VMM process is not moved into this cgroup yet',
  seccomp: 'no seccomp filter inside the guest; the guest kernel behind KVM is the boundary',
  maskedPaths: 'paths are not masked inside the guest',
  readonlyPaths: 'paths are not made read-only inside the guest',
  sysctl: 'sysctls are not set inside the guest yet',
  uidMappings: 'no user namespace',
  gidMappings: 'no user namespace',
  devices: 'host devices are not passed into the VM',
  mountLabel: 'no SELinux inside the guest',
  rootfsPropagation: 'mount propagation does not cross the VM',
  intelRdt: 'not supported',
  personality: 'not set inside the guest',
  timeOffsets: 'no time namespace inside the guest',
  memoryPolicy: 'not set inside the guest',
};

/** Adds a notHonoured entry for each linux field other than namespaces and resources. */
export function linuxNotes(linux: Record<string, unknown> | undefined, notHonoured: NotHonoured[]): void {
  if (linux === undefined) return;
  for (const k of Object.keys(linux)) {
    if (k === 'namespaces' || k === 'resources') continue;
    const v = linux[k];
    if (v === null || (Array.isArray(v) && v.length === 0) || (typeof v === 'object' && v !== null && !Array.isArray(v) && Object.keys(v).length === 0)) continue;
    if (k === 'cgroupsPath') stringField(v, 'linux.cgroupsPath', 4096);
    notHonoured.push({ field: `linux.${k}`, reason: LINUX_NOTES[k] ?? 'unknown to tsibox' });
  }
}
