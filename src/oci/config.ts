// A bundle's config.json (OCI runtime spec config.md, config-linux.md) → what a tsibox
// Sandbox runs. The file is hostile input: its size is bounded, every field we read is
// type-checked, and a malformed one is TsiboxError INVALID_ARGUMENT naming the field.
// What a microVM cannot honour (cgroups inside the VM, seccomp, user namespaces, masked
// paths, capabilities, ...) is accepted and listed in `notHonoured`, never a failure:
// the VM is the isolation boundary those settings approximate.
import { isAbsolute, join, resolve } from 'node:path';
import type { EngineChoice, SandboxOptions } from '../sandbox.js';
import type { Rlimit, RlimitName } from '../guest/cmdline.js';
import { planMounts, hostPathKind, type FileBind, type PathKind, type SkippedMount } from './config-mounts.js';
import type { NotHonoured } from './notes.js';
import { linuxNotes, planNamespaces, resourceSizes } from './config-linux.js';
import {
  arrayField, integerField, invalid, objectField, optionalArray, optionalBoolean, optionalInteger, optionalObject,
  optionalString, readJsonFile, stringField, stringMap,
} from './json-fields.js';

/** config.json larger than this is refused (podman's, seccomp profile included, is ~40 KiB). */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;
const MAX_ARGS = 4096;
const MAX_ARG_CHARS = 128 * 1024;
const MAX_ENV = 4096;
const MAX_PATH = 4096;
const MAX_ANNOTATIONS = 1024;
/** Linux HOST_NAME_MAX. */
const MAX_HOSTNAME = 64;

export type { NotHonoured } from './notes.js';

/** The annotations tsibox reads; every other annotation is passed through untouched. */
export const ANNOTATION = {
  cpus: 'io.tsibox.cpus',
  memory: 'io.tsibox.memory',
  network: 'io.tsibox.network',
  policy: 'io.tsibox.policy',
  engine: 'io.tsibox.engine',
} as const;

export type OciNetworkMode = 'tsi' | 'passt' | 'none';

/** What a container run in tsibox will be: the Sandbox options plus what the lifecycle still has to place. */
export interface OciPlan {
  ociVersion: string;
  /** Absolute bundle directory. */
  bundle: string;
  /**
   * Sandbox options (all but `network`, which needs the policy the lifecycle loads):
   * argv, env, workdir, root, engine, hostname, user, rlimits, rootReadOnly, mounts, cpus, memoryMiB, tty.
   */
  sandbox: Omit<SandboxOptions, 'network'> & { argv: string[]; env: Record<string, string>; workdir: string; root: string; engine: EngineChoice };
  network: {
    mode: OciNetworkMode;
    /** io.tsibox.policy: a policy file (absolute path); none: the container's network namespace is the only limit. */
    policyFile?: string;
    /** The network namespace (namespaces[type=network].path) the monitor enters before it makes host sockets. */
    netnsPath?: string;
    /**
     * namespaces lists a network namespace without a path: the container gets a new one
     * of its own (loopback only, as runc makes it), and so do its host sockets. Neither
     * this nor netnsPath: the container shares the runtime's namespace (`--network host`).
     */
    newNetns?: true;
  };
  /** Bind mounts of single host files (virtio-fs shares directories: src/oci/file-binds.ts stages them). */
  fileBinds: FileBind[];
  /** Mounts the guest init provides itself, or that are not honoured. */
  skippedMounts: SkippedMount[];
  notHonoured: NotHonoured[];
  annotations: Record<string, string>;
}

export interface PlanOptions {
  /** What a host path is (default: stat). */
  pathKind?: (p: string) => PathKind;
}

/** Reads `<bundle>/config.json` and plans the container. */
export function loadBundle(bundle: string, opts: PlanOptions = {}): OciPlan {
  const dir = resolve(bundle);
  return planContainer(readJsonFile(join(dir, 'config.json'), MAX_CONFIG_BYTES, 'config.json'), dir, opts);
}

/** Validates a parsed config.json and maps it to an OciPlan; `bundle` must be absolute. */
export function planContainer(json: unknown, bundle: string, opts: PlanOptions = {}): OciPlan {
  if (!isAbsolute(bundle)) throw invalid('bundle', `must be an absolute path, got ${JSON.stringify(bundle)}`);
  const kind = opts.pathKind ?? hostPathKind;
  const c = objectField(json, '(top level)');
  const notHonoured: NotHonoured[] = [];

  const ociVersion = stringField(c['ociVersion'], 'ociVersion', 64);
  if (!/^1\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$/.test(ociVersion)) throw invalid('ociVersion', `must be a 1.x version, got ${JSON.stringify(ociVersion)}`);

  const root = objectField(c['root'], 'root');
  const rootPath = resolve(bundle, stringField(root['path'], 'root.path', MAX_PATH));
  if (kind(rootPath) !== 'directory') throw invalid('root.path', `${JSON.stringify(rootPath)} is not a directory`);
  const rootReadOnly = optionalBoolean(root['readonly'], 'root.readonly') === true;

  const p = objectField(c['process'], 'process');
  const argv = arrayField(p['args'], 'process.args', MAX_ARGS, (x, f) => stringField(x, f, MAX_ARG_CHARS));
  if (argv.length === 0) throw invalid('process.args', 'must name a program');
  if (argv[0] === '') throw invalid('process.args[0]', 'must not be empty');
  const env = planEnv(p['env']);
  const cwd = stringField(p['cwd'], 'process.cwd', MAX_PATH);
  if (!cwd.startsWith('/')) throw invalid('process.cwd', `must be an absolute path, got ${JSON.stringify(cwd)}`);
  const terminal = optionalBoolean(p['terminal'], 'process.terminal') === true;
  const consoleSize = optionalObject(p['consoleSize'], 'process.consoleSize');
  const tty = terminal
    ? {
        cols: optionalInteger(consoleSize?.['width'], 'process.consoleSize.width', 1, 65535) ?? 80,
        rows: optionalInteger(consoleSize?.['height'], 'process.consoleSize.height', 1, 65535) ?? 24,
      }
    : undefined;
  const user = planUser(p['user'], notHonoured);
  const rlimits = optionalArray(p['rlimits'], 'process.rlimits', 64, planRlimit) ?? [];
  const PROCESS_NOTES: Readonly<Record<string, string>> = {
    capabilities: 'the workload runs with the guest init\'s credentials; the VM is the boundary',
    noNewPrivileges: 'not set inside the guest yet',
    apparmorProfile: 'no AppArmor inside the guest',
    selinuxLabel: 'no SELinux inside the guest',
    oomScoreAdj: 'not set inside the guest yet',
    ioPriority: 'not set inside the guest yet',
    scheduler: 'not set inside the guest yet',
    execCPUAffinity: 'not set inside the guest yet',
  };
  for (const [k, reason] of Object.entries(PROCESS_NOTES)) if (p[k] !== undefined && p[k] !== null) notHonoured.push({ field: `process.${k}`, reason });

  const hostname = optionalString(c['hostname'], 'hostname', MAX_HOSTNAME);
  if (hostname !== undefined && !/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(hostname)) throw invalid('hostname', `is not a host name: ${JSON.stringify(hostname)}`);
  if (c['domainname'] !== undefined) notHonoured.push({ field: 'domainname', reason: 'not set inside the guest yet' });
  const hooks = optionalObject(c['hooks'], 'hooks');
  if (hooks !== undefined && Object.values(hooks).some((h) => Array.isArray(h) && h.length > 0)) {
    notHonoured.push({ field: 'hooks', reason: 'hooks are not run yet' });
  }
  for (const k of ['solaris', 'windows', 'vm', 'zos']) if (c[k] !== undefined) notHonoured.push({ field: k, reason: 'not a Linux container setting' });

  const annotations = c['annotations'] === undefined || c['annotations'] === null
    ? new Map<string, string>()
    : stringMap(c['annotations'], 'annotations', MAX_ANNOTATIONS, 1024, 64 * 1024);

  const mounts = planMounts(c['mounts'], bundle, kind);
  const linux = optionalObject(c['linux'], 'linux');
  const ns = planNamespaces(linux?.['namespaces'], notHonoured);
  const sizes = resourceSizes(linux?.['resources'], notHonoured);
  linuxNotes(linux, notHonoured);

  const cpus = annotationInt(annotations, ANNOTATION.cpus, 1, 16) ?? sizes.cpus;
  const memoryMiB = annotationMemory(annotations) ?? sizes.memoryMiB;
  const networkMode = annotations.get(ANNOTATION.network) ?? 'tsi';
  if (networkMode !== 'tsi' && networkMode !== 'passt' && networkMode !== 'none') {
    throw invalid(`annotations["${ANNOTATION.network}"]`, `must be tsi, passt or none, got ${JSON.stringify(networkMode)}`);
  }
  const engine = annotations.get(ANNOTATION.engine) ?? 'auto';
  if (engine !== 'auto' && engine !== 'kvm' && engine !== 'qemu') throw invalid(`annotations["${ANNOTATION.engine}"]`, `must be auto, kvm or qemu, got ${JSON.stringify(engine)}`);
  const policyFile = annotations.get(ANNOTATION.policy);
  if (policyFile !== undefined && !isAbsolute(policyFile)) throw invalid(`annotations["${ANNOTATION.policy}"]`, `must be an absolute path, got ${JSON.stringify(policyFile)}`);
  if (policyFile !== undefined && networkMode === 'none') throw invalid(`annotations["${ANNOTATION.policy}"]`, `makes no sense with ${ANNOTATION.network}=none`);

  return {
    ociVersion,
    bundle,
    sandbox: {
      argv,
      env,
      workdir: cwd,
      root: rootPath,
      engine,
      ...(hostname !== undefined ? { hostname } : {}),
      user,
      ...(rlimits.length > 0 ? { rlimits } : {}),
      ...(rootReadOnly ? { rootReadOnly: true } : {}),
      ...(mounts.mounts.length > 0 ? { mounts: mounts.mounts } : {}),
      ...(cpus !== undefined ? { cpus } : {}),
      ...(memoryMiB !== undefined ? { memoryMiB } : {}),
      ...(tty !== undefined ? { tty } : {}),
    },
    network: {
      mode: networkMode,
      ...(policyFile !== undefined ? { policyFile } : {}),
      ...(ns.netnsPath !== undefined ? { netnsPath: ns.netnsPath } : {}),
      ...(ns.newNetns === true ? { newNetns: true as const } : {}),
    },
    fileBinds: mounts.fileBinds,
    skippedMounts: mounts.skipped,
    notHonoured,
    annotations: Object.fromEntries(annotations),
  };
}

/** process.env: "KEY=VALUE" strings → a map; a key given twice keeps its last value. */
function planEnv(v: unknown): Record<string, string> {
  const list = optionalArray(v, 'process.env', MAX_ENV, (x, f) => stringField(x, f, MAX_ARG_CHARS)) ?? [];
  const entries: Array<[string, string]> = list.map((kv, i) => {
    const eq = kv.indexOf('=');
    if (eq <= 0) throw invalid(`process.env[${i}]`, `must be KEY=VALUE, got ${JSON.stringify(kv.slice(0, 80))}`);
    return [kv.slice(0, eq), kv.slice(eq + 1)];
  });
  // Object.fromEntries defines own properties: a key "__proto__" stays a plain key.
  return Object.fromEntries(entries);
}

function planUser(v: unknown, notHonoured: NotHonoured[]): { uid: number; gid: number } {
  const u = optionalObject(v, 'process.user');
  if (u === undefined) return { uid: 0, gid: 0 };
  const uid = integerField(u['uid'], 'process.user.uid', 0, 0xffff_fffe);
  const gid = integerField(u['gid'], 'process.user.gid', 0, 0xffff_fffe);
  if (u['umask'] !== undefined && u['umask'] !== null) {
    integerField(u['umask'], 'process.user.umask', 0, 0o777);
    notHonoured.push({ field: 'process.user.umask', reason: 'the guest init does not set a umask yet' });
  }
  const extra = optionalArray(u['additionalGids'], 'process.user.additionalGids', 256, (x, f) => integerField(x, f, 0, 0xffff_fffe)) ?? [];
  if (extra.length > 0) notHonoured.push({ field: 'process.user.additionalGids', reason: 'the guest init sets no supplementary groups yet' });
  return { uid, gid };
}

const RLIMIT_NAMES: ReadonlySet<string> = new Set<RlimitName>([
  'CPU', 'FSIZE', 'DATA', 'STACK', 'CORE', 'RSS', 'NPROC', 'NOFILE', 'MEMLOCK', 'AS', 'LOCKS', 'SIGPENDING', 'MSGQUEUE', 'NICE', 'RTPRIO', 'RTTIME',
]);

function planRlimit(v: unknown, field: string): Rlimit {
  const r = objectField(v, field);
  const type = stringField(r['type'], `${field}.type`, 32);
  const name = type.startsWith('RLIMIT_') ? type.slice('RLIMIT_'.length) : '';
  if (!RLIMIT_NAMES.has(name)) throw invalid(`${field}.type`, `is not a Linux resource limit: ${JSON.stringify(type)}`);
  return { resource: name as RlimitName, cur: limitValue(r['soft'], `${field}.soft`), max: limitValue(r['hard'], `${field}.hard`) };
}

/** An rlimit value: a uint64. JSON numbers past 2^53 arrive rounded; 2^64-1 (RLIM_INFINITY) rounds to 2^64. */
function limitValue(v: unknown, field: string): number | 'unlimited' {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || !Number.isInteger(v)) throw invalid(field, 'must be a whole number 0..2^64-1');
  if (v >= 2 ** 64) return v === 2 ** 64 ? 'unlimited' : (() => { throw invalid(field, 'is larger than 2^64-1'); })();
  if (!Number.isSafeInteger(v)) throw invalid(field, 'is too large to be exact (use 18446744073709551615 for unlimited)');
  return v;
}

function annotationInt(a: Map<string, string>, key: string, min: number, max: number): number | undefined {
  const raw = a.get(key);
  if (raw === undefined) return undefined;
  if (!/^[0-9]{1,9}$/.test(raw)) throw invalid(`annotations["${key}"]`, `must be a whole number, got ${JSON.stringify(raw)}`);
  const n = Number(raw);
  if (n < min || n > max) throw invalid(`annotations["${key}"]`, `must be ${min}..${max}, got ${n}`);
  return n;
}

/** io.tsibox.memory: MiB as a number, or with an M or G suffix ("512", "512M", "2G"); 32..65536 MiB. */
function annotationMemory(a: Map<string, string>): number | undefined {
  const raw = a.get(ANNOTATION.memory);
  if (raw === undefined) return undefined;
  const m = /^([0-9]{1,9})([MG]?)$/i.exec(raw);
  const field = `annotations["${ANNOTATION.memory}"]`;
  if (m === null) throw invalid(field, `must be MiB (e.g. 512, 512M, 2G), got ${JSON.stringify(raw)}`);
  const mib = Number(m[1]) * (m[2]!.toUpperCase() === 'G' ? 1024 : 1);
  if (mib < 32 || mib > 65536) throw invalid(field, `must be 32..65536 MiB, got ${mib}`);
  return mib;
}
