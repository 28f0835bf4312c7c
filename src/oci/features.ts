// `tsibox oci features`: the runtime-spec "Features structure" (features.md), the shape
// `runc features` prints, saying what tsibox recognises. Fixed at build time, as the
// spec asks: it describes tsibox, not this host.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../paths.js';
import { ANNOTATION } from './config.js';

export const OCI_VERSION_MIN = '1.0.0';
export const OCI_VERSION_MAX = '1.0.2-dev';

/** Mount options a bind mount may carry: ro/rro make it read-only; the rest are accepted and have no effect across the VM. */
export const MOUNT_OPTIONS = [
  'bind', 'rbind', 'ro', 'rro', 'rw', 'rrw',
  'nosuid', 'suid', 'nodev', 'dev', 'noexec', 'exec',
  'private', 'rprivate', 'shared', 'rshared', 'slave', 'rslave', 'unbindable', 'runbindable',
  'relatime', 'norelatime', 'noatime', 'strictatime', 'nodiratime', 'defaults',
].sort();

export interface Features {
  ociVersionMin: string;
  ociVersionMax: string;
  hooks: string[];
  mountOptions: string[];
  linux: {
    namespaces: string[];
    capabilities: null;
    cgroup: { v1: boolean; v2: boolean; systemd: boolean; systemdUser: boolean };
    seccomp: { enabled: boolean };
    apparmor: { enabled: boolean };
    selinux: { enabled: boolean };
  };
  annotations: Record<string, string>;
}

export function features(): Features {
  return {
    ociVersionMin: OCI_VERSION_MIN,
    ociVersionMax: OCI_VERSION_MAX,
    // Hooks are not run yet (docs/oci.md).
    hooks: [],
    mountOptions: [...MOUNT_OPTIONS],
    linux: {
      // The VM gives the container all of these of its own; no user namespace (the VM is the boundary).
      namespaces: ['cgroup', 'ipc', 'mount', 'network', 'pid', 'uts'],
      capabilities: null,
      cgroup: { v1: false, v2: false, systemd: false, systemdUser: false },
      seccomp: { enabled: false },
      apparmor: { enabled: false },
      selinux: { enabled: false },
    },
    annotations: {
      'io.tsibox.version': packageVersion(),
      'io.tsibox.annotations': Object.values(ANNOTATION).join(','),
    },
  };
}

function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}
