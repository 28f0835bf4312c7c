/**
 * The kernel command-line contract between the host and the tsibox guest init
 * (native/init/init.c). See docs/guest-init.md.
 */
import { gzipSync } from 'node:zlib';
import { TsiboxError } from '../errors.js';

/** Exit statuses init reports besides the workload's own. */
export const EXIT_INIT_FAILED = 125;
export const EXIT_EXEC_FAILED = 126;
export const EXIT_NOT_FOUND = 127;

/** virtio-console port names init looks for (multiport device). */
export const PORT_STDIN = 'tsibox.stdin';
export const PORT_STDOUT = 'tsibox.stdout';
export const PORT_STDERR = 'tsibox.stderr';
export const PORT_STATUS = 'tsibox.status';

/** The line init writes to /dev/console just before ending the VM. */
export const STATUS_MARKER = 'tsibox: exit-status=';

/** Linux x86 COMMAND_LINE_SIZE, including the terminating NUL. */
export const X86_COMMAND_LINE_SIZE = 2048;

/** Path inside the guest of the optional extra command-line file. */
export const CMDLINE_FILE = '/.tsibox/cmdline';
/** The same for the tokens that must not be on the kernel command line (the environment); read after CMDLINE_FILE. */
export const PRIVATE_CMDLINE_FILE = '/.tsibox/cmdline.private';

export type Bytes = string | Uint8Array;

/** Resource names init accepts (RLIMIT_ prefix optional, any case). */
export type RlimitName =
  | 'CPU' | 'FSIZE' | 'DATA' | 'STACK' | 'CORE' | 'RSS' | 'NPROC' | 'NOFILE' | 'MEMLOCK'
  | 'AS' | 'LOCKS' | 'SIGPENDING' | 'MSGQUEUE' | 'NICE' | 'RTPRIO' | 'RTTIME';

export interface Rlimit {
  resource: RlimitName | number;
  /** Soft limit; 'unlimited' or a non-negative integer. */
  cur: number | bigint | 'unlimited';
  max: number | bigint | 'unlimited';
}

export interface InitConfig {
  /** argv of the workload (argv[0] included). Default: ['/bin/sh']. */
  argv?: Bytes[];
  /** Program to execute; default argv[0]. Without '/', PATH (from env) is searched. */
  exec?: Bytes;
  /** Environment; init adds PATH and HOME when absent. */
  env?: Record<string, Bytes> | Array<[string, Bytes]>;
  /** Working directory (created when missing). */
  workdir?: Bytes;
  hostname?: string;
  rlimits?: Rlimit[];
  /** Run as UID (and GID; default GID = UID). */
  user?: { uid: number; gid?: number };
  /** Console port names init must wait for (e.g. all four PORT_* names). */
  ports?: string[];
  /** How long init waits for those ports (ms, default 5000). */
  portTimeoutMs?: number;
  /** How init ends the VM: reboot(RB_AUTOBOOT) (default), RB_POWER_OFF or RB_HALT_SYSTEM. */
  poweroff?: 'reboot' | 'poweroff' | 'halt';
  /** init prints what it does on the console. */
  debug?: boolean;
  /**
   * Start the guest exec agent on vsock port 52 (docs/exec-agent.md): default true;
   * false adds `tsibox.agent=0` (no agent: host execs fail with AGENT_UNAVAILABLE).
   */
  agent?: boolean;
  /**
   * Give the workload a terminal (`tsibox.tty=COLSxROWS`): init opens a pseudo-terminal
   * of this window size, makes it the workload's stdin, stdout, stderr and controlling
   * terminal, and relays it to the stdin and stdout ports (the stderr port stays
   * empty). Each dimension 1..65535 (docs/guest-init.md "A terminal for the workload").
   */
  tty?: TerminalSize;
  /**
   * Configure eth0 (virtio-net): address/prefix, default route via gateway,
   * /etc/resolv.conf; 'dhcp': init asks a DHCP server for all of them (`tsibox.net=dhcp`;
   * no answer within 10 s is an init failure, exit 125).
   */
  net?: GuestNetConfig | 'dhcp';
  /**
   * Switch to a virtio-fs root (`tsibox.root=TAG,ro|rw`): init mounts the tag, sets up
   * /proc, /sys, /dev, /tmp, /run and /etc/resolv.conf inside it and switches root
   * before the agent and the workload start (docs/directory-root.md).
   */
  root?: { tag: string; readOnly?: boolean };
  /**
   * Switch to a root file system on a whole block device instead
   * (`tsibox.rootdisk=/dev/DEV,FSTYPE,ro|rw`), set up as for `root` (docs/disks.md).
   */
  rootDisk?: { device: string; fsType: string; readOnly?: boolean };
  /** virtio-fs tags mounted at `path` (in the new root, if any): `tsibox.mount=TAG,ro|rw,PATH`, one token each. */
  mounts?: Array<{ tag: string; path: Bytes; readOnly?: boolean }>;
  /**
   * Bind mounts made after `mounts`: guest path `source` (a file or directory, absolute)
   * onto `path` (absolute; created when missing, an empty file for a file):
   * `tsibox.bind=SOURCE,ro|rw,PATH`, one token each (docs/guest-init.md).
   */
  binds?: Array<{ source: Bytes; path: Bytes; readOnly?: boolean }>;
}

/** A terminal's window size in character cells. */
export interface TerminalSize {
  cols: number;
  rows: number;
}

/** Largest terminal dimension (the kernel's struct winsize holds unsigned shorts). */
export const MAX_TERMINAL_DIM = 65535;

/** Throws INVALID_ARGUMENT unless cols and rows are integers 1..65535. */
export function checkTerminalSize(size: TerminalSize, what = 'tty'): void {
  const ok = (n: unknown): boolean => Number.isInteger(n) && (n as number) >= 1 && (n as number) <= MAX_TERMINAL_DIM;
  if (typeof size !== 'object' || size === null || !ok(size.cols) || !ok(size.rows)) {
    const shown = typeof size === 'object' && size !== null ? `${String(size.cols)}x${String(size.rows)}` : String(size);
    throw new TsiboxError('INVALID_ARGUMENT', `${what}: cols and rows must be whole numbers 1..${MAX_TERMINAL_DIM}, got ${shown}`);
  }
}

/** Static IPv4 setup of eth0 (the host chose it, and gave the same to passt). */
export interface GuestNetConfig {
  address: string;
  /** Prefix length, 1..30. */
  prefix: number;
  gateway: string;
  /** Up to 3 name servers written to /etc/resolv.conf. */
  dns?: string[];
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** The `tsibox.net=ADDR/PREFIX,GW[,DNS...]` token. */
export function netToken(n: GuestNetConfig): string {
  const addrs = [n.address, n.gateway, ...(n.dns ?? [])];
  for (const a of addrs) if (typeof a !== 'string' || !IPV4.test(a)) throw new TsiboxError('INVALID_ARGUMENT', `net: ${JSON.stringify(a)} is not an IPv4 address`);
  if (!Number.isInteger(n.prefix) || n.prefix < 1 || n.prefix > 30) throw new TsiboxError('INVALID_ARGUMENT', `net: prefix ${n.prefix} is not 1..30`);
  if ((n.dns ?? []).length > 3) throw new TsiboxError('INVALID_ARGUMENT', 'net: at most 3 DNS servers');
  return `tsibox.net=${n.address}/${n.prefix},${addrs.slice(1).join(',')}`;
}

const SAFE = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~/:@+=') {
  SAFE[c.charCodeAt(0)] = 1;
}

function toBytes(v: Bytes): Uint8Array {
  return typeof v === 'string' ? Buffer.from(v, 'utf8') : v;
}

/**
 * Percent-encode one value: every byte outside [A-Za-z0-9-_.~/:@+=] becomes %XX.
 * The result has no whitespace, quotes, commas or '%' of its own, so it survives the
 * kernel's command-line parser and init's list splitting. NUL bytes are rejected.
 */
export function encodeValue(v: Bytes): string {
  const b = toBytes(v);
  let out = '';
  for (const byte of b) {
    if (byte === 0) throw new TsiboxError('INVALID_ARGUMENT', 'a NUL byte cannot be passed to the guest');
    out += SAFE[byte] ? String.fromCharCode(byte) : '%' + byte.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

/** Inverse of encodeValue (for tests and diagnostics). */
export function decodeValue(s: string): Buffer {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] !== '%') {
      out.push(s.charCodeAt(i));
      continue;
    }
    const h = s.slice(i + 1, i + 3);
    if (!/^[0-9a-fA-F]{2}$/.test(h)) throw new TsiboxError('INVALID_ARGUMENT', `bad %-escape in ${JSON.stringify(s)}`);
    out.push(parseInt(h, 16));
    i += 2;
  }
  return Buffer.from(out);
}

function limitValue(v: number | bigint | 'unlimited'): string {
  if (v === 'unlimited') return 'unlimited';
  const n = BigInt(v);
  if (n < 0n) throw new TsiboxError('INVALID_ARGUMENT', `rlimit value ${v} is negative`);
  return n.toString();
}

/**
 * The init tokens for a workload, in order. Join them with ' ' and append them to the
 * kernel command line, or write them (one per line) to CMDLINE_FILE in an extra
 * initramfs archive (see cmdlineArchive) when they are too long for the command line.
 */
export function initTokens(cfg: InitConfig): string[] {
  const t: string[] = [];
  if (cfg.argv !== undefined) {
    if (cfg.argv.length === 0) throw new TsiboxError('INVALID_ARGUMENT', 'argv must have at least one element');
    t.push('tsibox.argv=' + cfg.argv.map(encodeValue).join(','));
  }
  if (cfg.exec !== undefined) t.push('tsibox.exec=' + encodeValue(cfg.exec));
  const env = cfg.env === undefined ? [] : Array.isArray(cfg.env) ? cfg.env : Object.entries(cfg.env);
  if (env.length > 0) {
    t.push(
      'tsibox.env=' +
        env
          .map(([k, v]) => {
            if (k === '' || k.includes('=')) throw new TsiboxError('INVALID_ARGUMENT', `bad environment name ${JSON.stringify(k)}`);
            return encodeValue(Buffer.concat([Buffer.from(k + '=', 'utf8'), toBytes(v)]));
          })
          .join(','),
    );
  }
  if (cfg.workdir !== undefined) t.push('tsibox.workdir=' + encodeValue(cfg.workdir));
  if (cfg.hostname !== undefined) t.push('tsibox.hostname=' + encodeValue(cfg.hostname));
  if (cfg.rlimits && cfg.rlimits.length > 0) {
    t.push(
      'tsibox.rlimit=' +
        cfg.rlimits.map((r) => `${String(r.resource)}:${limitValue(r.cur)}:${limitValue(r.max)}`).map(encodeValue).join(','),
    );
  }
  if (cfg.user) {
    const { uid, gid } = cfg.user;
    if (!Number.isInteger(uid) || uid < 0 || (gid !== undefined && (!Number.isInteger(gid) || gid < 0))) {
      throw new TsiboxError('INVALID_ARGUMENT', 'uid/gid must be non-negative integers');
    }
    t.push(`tsibox.user=${uid}${gid === undefined ? '' : ':' + gid}`);
  }
  if (cfg.ports && cfg.ports.length > 0) t.push('tsibox.ports=' + cfg.ports.map(encodeValue).join(','));
  if (cfg.portTimeoutMs !== undefined) t.push(`tsibox.port_timeout_ms=${Math.max(0, Math.floor(cfg.portTimeoutMs))}`);
  if (cfg.poweroff !== undefined) t.push(`tsibox.poweroff=${cfg.poweroff}`);
  if (cfg.debug) t.push('tsibox.debug=1');
  if (cfg.agent === false) t.push('tsibox.agent=0');
  if (cfg.tty !== undefined) {
    checkTerminalSize(cfg.tty);
    t.push(`tsibox.tty=${cfg.tty.cols}x${cfg.tty.rows}`);
  }
  if (cfg.net === 'dhcp') t.push('tsibox.net=dhcp');
  else if (cfg.net !== undefined) t.push(netToken(cfg.net));
  if (cfg.root !== undefined) t.push(`tsibox.root=${encodeValue(cfg.root.tag)},${cfg.root.readOnly === true ? 'ro' : 'rw'}`);
  if (cfg.rootDisk !== undefined) t.push(`tsibox.rootdisk=${encodeValue(cfg.rootDisk.device)},${encodeValue(cfg.rootDisk.fsType)},${cfg.rootDisk.readOnly === true ? 'ro' : 'rw'}`);
  for (const m of cfg.mounts ?? []) t.push(`tsibox.mount=${encodeValue(m.tag)},${m.readOnly === true ? 'ro' : 'rw'},${encodeValue(m.path)}`);
  for (const b of cfg.binds ?? []) t.push(`tsibox.bind=${encodeValue(b.source)},${b.readOnly === true ? 'ro' : 'rw'},${encodeValue(b.path)}`);
  return t;
}

/**
 * A kernel command line: `base` (kernel options chosen by the loader) followed by the
 * init tokens. Throws when the result does not fit COMMAND_LINE_SIZE; callers can then
 * pass the tokens through cmdlineArchive instead.
 */
export function buildCmdline(base: string, cfg: InitConfig): string {
  const line = [base.trim(), ...initTokens(cfg)].filter((s) => s !== '').join(' ');
  if (Buffer.byteLength(line) >= X86_COMMAND_LINE_SIZE) {
    throw new TsiboxError(
      'INVALID_ARGUMENT',
      `kernel command line is ${Buffer.byteLength(line)} bytes, the limit is ${X86_COMMAND_LINE_SIZE - 1}; pass the workload with cmdlineArchive()`,
    );
  }
  return line;
}

function newcEntry(name: string, mode: number, data: Uint8Array, ino: number): Buffer {
  const nameBytes = Buffer.from(name + '\0', 'utf8');
  const fields = [ino, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
  const hdr = Buffer.from('070701' + fields.map((f) => f.toString(16).toUpperCase().padStart(8, '0')).join(''), 'ascii');
  const pad = (n: number): Buffer => Buffer.alloc((4 - (n % 4)) % 4);
  const head = Buffer.concat([hdr, nameBytes]);
  return Buffer.concat([head, pad(head.length), Buffer.from(data), pad(data.length)]);
}

/** One member of a newc archive: a directory (no data) or a regular file. */
export interface ArchiveEntry {
  /** Path inside the root, without a leading '/'. */
  name: string;
  /** Full st_mode, type bits included (e.g. 0o040755, 0o100755). */
  mode: number;
  data?: Uint8Array;
}

/**
 * A gzip'd newc archive (owner 0:0, mtime 0) of `entries` in order, with its trailer.
 * Append it to the initramfs (after padding that to a multiple of 4 bytes); Linux
 * unpacks concatenated archives in order, later members replacing earlier ones.
 */
export function newcArchive(entries: readonly ArchiveEntry[]): Buffer {
  const parts = entries.map((e, i) => newcEntry(e.name.replace(/^\/+/, ''), e.mode, e.data ?? new Uint8Array(), i + 1));
  parts.push(newcEntry('TRAILER!!!', 0, new Uint8Array(), entries.length + 1));
  return gzipSync(Buffer.concat(parts));
}

/**
 * A gzip'd newc archive holding CMDLINE_FILE with the given tokens (one per line);
 * init reads the file after /proc/cmdline.
 */
export function cmdlineArchive(tokens: string[], file: string = CMDLINE_FILE): Buffer {
  const body = Buffer.from(tokens.join('\n') + '\n', 'utf8');
  return newcArchive([
    { name: '.tsibox', mode: 0o040755 },
    // 0600: it may hold the environment; init removes it once read.
    { name: file.slice(1), mode: 0o100600, data: body },
  ]);
}

/** Pad an archive to a multiple of 4 bytes so another can be appended. */
export function padTo4(b: Uint8Array): Buffer {
  const pad = (4 - (b.length % 4)) % 4;
  return Buffer.concat([Buffer.from(b), Buffer.alloc(pad)]);
}

/**
 * The exit status from console output: the last `tsibox: exit-status=N` line. init
 * writes it after every other guest process is gone, so the last one is init's own.
 */
export function parseStatusMarker(consoleText: string): number | undefined {
  const re = /tsibox: exit-status=(\d+)\r?\n/g;
  let last: number | undefined;
  for (let m = re.exec(consoleText); m !== null; m = re.exec(consoleText)) last = Number(m[1]);
  return last;
}

/** The status port carries ASCII decimal + "\n". */
export function parseStatusPort(data: string): number | undefined {
  const m = /^(\d{1,3})\n/.exec(data);
  return m ? Number(m[1]) : undefined;
}
