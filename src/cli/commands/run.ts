import { pino } from 'pino';
import { isIPv4, isIPv6 } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import type { ReadStream, WriteStream } from 'node:tty';
import { Sandbox, type EngineChoice, type TsiNetwork } from '../../sandbox.js';
import { Policy, type PolicyRule } from '../../policy/index.js';
import { PortMap } from '../../portmap/index.js';
import { checkHostPorts } from '../../portmap/preflight.js';
import { TsiboxError } from '../../errors.js';
import { DEFAULT_LIMITS, type TsiLimitOptions } from '../../../proxies/limits.js';
import { UsageError } from '../args.js';
import { gvproxyNetworkOption, passtNetworkOption } from '../net-passt.js';
import { expectPositionals, type Command } from '../registry.js';
import { rootOptions } from '../root-flags.js';
import { diskOptions } from '../disk-flags.js';

export const runCommand: Command = {
  name: 'run',
  summary: 'run a program in a microVM (default root: busybox); exits with its status',
  usage: 'run [-i] [-t] [--engine kvm|qemu|auto] [--cpus N] [--mem MiB] [--kernel PATH] [--initrd PATH] [--env K=V]... [--workdir DIR] [--timeout SEC] [--root DIR [--root-read-only]] [--mount HOST:GUEST[:ro]]... [--disk PATH[:raw|qcow2][:ro]]... [--root-disk PATH[:raw|qcow2][:ro]] [--net tsi [--allow CIDR[:PORTS]]... [--host-alias ADDR]... [--publish [ADDR:]HOST:GUEST[/udp]]... [--allow-unix PATH]... [--max-connections N] [--max-listeners N] [--max-udp-sockets N] [--connect-rate N] | --net passt [--allow CIDR[:PORTS]]... | --net gvproxy [--allow CIDR[:PORTS]]... [--publish [ADDR:]HOST:GUEST[/udp]]...] [--on-publish-error stop|warn] [--verbose] -- CMD [ARGS...]',
  options: {
    engine: { type: 'string', value: 'kvm|qemu|auto', choices: ['kvm', 'qemu', 'auto'], description: 'how to run the VM (default auto: KVM where guest ring 0 runs natively, else QEMU)' },
    cpus: { type: 'integer', value: 'N', min: 1, max: 16, description: 'vCPUs (default 1)' },
    mem: { type: 'integer', value: 'MiB', min: 32, max: 65536, description: 'guest RAM (default 256)' },
    kernel: { type: 'string', value: 'PATH', description: 'guest kernel (default: the tsibox kernel, built when missing)' },
    initrd: { type: 'string', value: 'PATH', description: 'guest initramfs (default: the busybox root, built when missing)' },
    env: { type: 'string', value: 'K=V', repeatable: true, description: 'environment variable for CMD (repeatable)' },
    workdir: { type: 'string', value: 'DIR', description: 'working directory in the guest (created when missing)' },
    timeout: { type: 'integer', value: 'SEC', min: 1, description: 'kill the VM after this many seconds' },
    root: { type: 'string', value: 'DIR', description: 'the guest\'s root is this host directory (absolute), shared over virtio-fs by a virtiofsd tsibox runs with the sandbox; the guest\'s writes reach it; init puts /proc, /sys, /dev, /tmp and /run inside it. Both engines; needs root on the host and virtiofsd (Debian: qemu-system-common)' },
    'root-read-only': { type: 'boolean', description: 'with --root: mount it read-only in the guest (writes fail with EROFS; the host directory is not changed)' },
    mount: { type: 'string', value: 'HOST:GUEST[:ro]', repeatable: true, description: 'mount the host directory HOST at GUEST in the guest (absolute paths without \':\'; virtio-fs, one virtiofsd each; :ro read-only in the guest); GUEST is created when missing, except on a read-only root (then CMD fails with 125); at most 8' },
    disk: { type: 'string', value: 'PATH[:raw|qcow2][:ro]', repeatable: true, description: 'give the guest the host image file PATH (absolute, without \':\'; format raw unless :qcow2) as a virtio-blk disk, served by a qemu-storage-daemon tsibox runs with the sandbox; the guest sees them as /dev/vda, /dev/vdb, ... in order (after --root-disk); :ro read-only; at most 8; needs qemu-storage-daemon (Debian: qemu-system-common)' },
    'root-disk': { type: 'string', value: 'PATH[:raw|qcow2][:ro]', description: 'the guest\'s root is the ext4 file system on this whole image (no partition table; e.g. made by mkfs.ext4 -d DIR PATH 64M), attached as /dev/vda; init sets up /proc, /sys, /dev, /tmp and /run inside it; not with --root' },
    verbose: { type: 'boolean', description: 'say on stderr which engine runs the VM, and why' },
    interactive: { type: 'boolean', short: 'i', description: 'accepted for docker run -it habits; stdin is always passed to CMD' },
    tty: { type: 'boolean', short: 't', description: 'give CMD a terminal, like docker run -it: stdin must be a terminal, which tsibox puts in raw mode (restored on exit); in the guest CMD runs on a pseudo-terminal of the host terminal\'s size (following its resizes), with line editing, and Ctrl-C, Ctrl-Z, Ctrl-\\ acting inside the guest (not on tsibox); stderr goes to the terminal too; TERM=xterm unless --env TERM=...' },
    net: { type: 'string', value: 'tsi|passt|gvproxy', choices: ['tsi', 'passt', 'gvproxy'], description: 'tsi: guest TCP connect() and UDP go out through tsibox (TSI); everything is denied unless --allow permits it. passt: a virtio-net NIC (eth0 10.0.2.15/24) wired to passt; 10.0.2.2 reaches the host\'s 127.0.0.1. gvproxy: the NIC wired to gvproxy, configured by DHCP (eth0 192.168.127.2/24, gateway and DNS 192.168.127.1, IPv4 only); 192.168.127.254 reaches the host\'s 127.0.0.1; --publish goes through gvproxy\'s API. passt and gvproxy frames are filtered by the same policy: everything is denied unless --allow permits it' },
    allow: { type: 'string', value: 'CIDR[:PORTS]', repeatable: true, description: 'allow TCP and UDP with CIDR (with --net tsi: outbound destinations, and clients of --publish ports; with --net passt / gvproxy: what the host connects to, so 10.0.2.2:PORT (passt) or 192.168.127.254:PORT (gvproxy) is --allow 127.0.0.1:PORT; gvproxy\'s own API at 192.168.127.1:80 only by --allow 192.168.127.1:80 itself) (e.g. 93.184.216.0/24:443, 127.0.0.1:8000-8100, [::1]:80, 0.0.0.0/0 for all IPv4, ::/0 for all IPv6)' },
    'allow-unix': { type: 'string', value: 'PATH', repeatable: true, description: 'with --net tsi: let the guest connect to the host unix socket PATH (or anything under PATH/ when it ends in /); a guest AF_UNIX stream connect() to that path is made on the host, judged on the canonical path (symlinks resolved); other guest unix sockets stay guest-local; off unless given' },
    'max-connections': { type: 'integer', value: 'N', min: 1, max: 1_000_000, description: `with --net tsi: concurrent guest connections (default ${DEFAULT_LIMITS.maxConnections}); over it connect() fails with ENOBUFS` },
    'max-listeners': { type: 'integer', value: 'N', min: 1, max: 1_000_000, description: `with --net tsi: guest listeners registered with the host (default ${DEFAULT_LIMITS.maxListeners})` },
    'max-udp-sockets': { type: 'integer', value: 'N', min: 1, max: 1_000_000, description: `with --net tsi: guest UDP sockets with a host socket (default ${DEFAULT_LIMITS.maxUdpSockets}); over it sendto() fails with ENOBUFS` },
    'connect-rate': { type: 'integer', value: 'N', min: 1, max: 1_000_000, description: `with --net tsi: new guest connections per second (default ${DEFAULT_LIMITS.connectionsPerSecond}); over it connect() fails with EAGAIN` },
    publish: { type: 'string', value: '[ADDR:]HOST:GUEST[/udp]', repeatable: true, description: 'with --net tsi or gvproxy: expose guest port GUEST on host ADDR:HOST (default address 127.0.0.1; HOST 0 lets the OS choose); the policy must allow the clients (gvproxy hides them: --allow 127.0.0.1:GUEST)' },
    'on-publish-error': { type: 'string', value: 'stop|warn', choices: ['stop', 'warn'], description: 'what a --publish the host cannot listen for (host port taken, not permitted) does. Either way an error line naming the mapping and the reason goes to stderr. At start (numbered host ports are tried before the VM boots) and while it runs (when the guest listens): stop (default) ends the sandbox and tsibox exits 1; warn drops that mapping and keeps running (exit status: CMD\'s own)' },
    'host-alias': { type: 'string', value: 'ADDR', repeatable: true, description: "with --net tsi: the guest reaches the host's 127.0.0.1 (IPv4 ADDR) or ::1 (IPv6 ADDR) through ADDR, e.g. 10.0.2.2; --allow 127.0.0.1 (or ::1) too" },
  },
  help: 'Exit status: CMD\'s own; 125 guest setup failed, 126 CMD not executable, 127 CMD not found, 128+N killed by signal N; 1 when tsibox itself failed (e.g. a --publish it could not set up, see --on-publish-error).',
  async run(args, io) {
    expectPositionals(this, args, 1, Infinity);
    const o = args.options;
    const stdin = io.stdin ?? process.stdin;
    // -t: like docker run -it. stdin must be a terminal; it goes into raw mode once the
    // VM is launched (until then Ctrl-C still stops tsibox, e.g. during a first kernel
    // build), so every key reaches the guest's terminal as a byte: Ctrl-C is 0x03, which
    // the guest's line discipline turns into SIGINT there, and no SIGINT reaches us.
    const tty = o.tty === true ? hostTerminal(stdin, [io.stdout, io.stderr]) : null;
    const env: Record<string, string> = {};
    for (const kv of Array.isArray(o.env) ? o.env : []) {
      const eq = kv.indexOf('=');
      if (eq <= 0) throw new UsageError(`--env wants KEY=VALUE, got ${JSON.stringify(kv)}`);
      env[kv.slice(0, eq)] = kv.slice(eq + 1);
    }
    const rootOpts = rootOptions(o);
    const diskOpts = diskOptions(o);
    if (o.net === 'passt' && (o['host-alias'] !== undefined || o.publish !== undefined)) {
      throw new UsageError('--host-alias and --publish need --net tsi (passt has its own addressing: 10.0.2.2 is the host; see README)');
    }
    if (o.net === 'gvproxy' && o['host-alias'] !== undefined) {
      throw new UsageError('--host-alias needs --net tsi (gvproxy has its own addressing: 192.168.127.254 is the host; see README)');
    }
    const tsiOnlyFlags = ['allow-unix', 'max-connections', 'max-listeners', 'max-udp-sockets', 'connect-rate'].filter((k) => o[k] !== undefined);
    if ((o.net === 'passt' || o.net === 'gvproxy') && tsiOnlyFlags.length > 0) {
      throw new UsageError(`--${tsiOnlyFlags[0]!} needs --net tsi (${o.net} opens the host sockets itself)`);
    }
    const network = o.net === 'passt'
      ? passtNetworkOption(allowPolicy(o.allow))
      : o.net === 'gvproxy'
        ? gvproxyNetworkOption(allowPolicy(o.allow), o.publish)
        : networkOption(o.net, o.allow, o['host-alias'], o.publish, tsiExtras(o));
    if (o['on-publish-error'] !== undefined && o.publish === undefined) throw new UsageError('--on-publish-error needs --publish');
    const portMap = network !== undefined && network.mode !== 'passt' ? network.portMap : undefined;
    const stop = new AbortController();
    if (portMap !== undefined) {
      if (o['on-publish-error'] === 'warn') await dropUnpublishable(portMap, (line) => { io.stderr.write(line); });
      portMap.on('failed', (_m, err) => {
        if (o['on-publish-error'] === 'warn') io.stderr.write(`tsibox: ${err.message} [${err.code}]; running without it\n`);
        else stop.abort(new TsiboxError(err.code, `${err.message}; the sandbox was stopped (--on-publish-error warn keeps it running)`, { cause: err, ...(err.errno !== undefined ? { errno: err.errno } : {}) }));
      });
    }
    const verbose = o.verbose === true;
    // TSIBOX_LOG=info|debug: structured lines (tsi.connection, net.flow, tsi.limit) on stderr.
    const logger = pino({ name: 'tsibox', level: process.env['TSIBOX_LOG'] ?? 'silent' }, pino.destination(2));
    let restoreTty = (): void => {};
    let onResize: (() => void) | null = null;
    // Ctrl-C (SIGINT) or SIGTERM: the signal goes to the guest's program (its process
    // group), which ends as it would under a shell; if it has not within 10 s, or on a
    // second signal, the VM is stopped and tsibox exits 128+N. The VM, network helpers
    // and sockets go with it either way.
    let interrupted: number | null = null;
    let sandbox: Sandbox | null = null;
    const hardStop = (sig: NodeJS.Signals): void => {
      interrupted ??= sig === 'SIGINT' ? 130 : 143;
      stop.abort(new TsiboxError('INVALID_STATE', `interrupted by ${sig}`));
      sandbox?.stop({ timeoutMs: 0 }).catch(() => { /* the result is awaited below */ });
    };
    let signalled = false;
    const onSignal = (sig: NodeJS.Signals): void => {
      if (signalled || sandbox === null) return hardStop(sig);
      signalled = true;
      const sb = sandbox;
      sb.kill(sig).catch(() => { hardStop(sig); });
      setTimeout(() => { if (sb.running) hardStop(sig); }, 10_000).unref();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      sandbox = await Sandbox.start({
        argv: args.positionals,
        env,
        engine: (typeof o.engine === 'string' ? o.engine : 'auto') as EngineChoice,
        ...(typeof o.cpus === 'number' ? { cpus: o.cpus } : {}),
        ...(typeof o.mem === 'number' ? { memoryMiB: o.mem } : {}),
        ...(typeof o.kernel === 'string' ? { kernel: o.kernel } : {}),
        ...(typeof o.initrd === 'string' ? { initrd: o.initrd } : {}),
        ...(typeof o.workdir === 'string' ? { workdir: o.workdir } : {}),
        ...(typeof o.timeout === 'number' ? { timeoutMs: o.timeout * 1000 } : {}),
        ...rootOpts,
        ...diskOpts,
        ...(network ? { network } : {}),
        ...(tty !== null ? { tty: tty.size() } : {}),
        stdin,
        signal: stop.signal,
        stdout: io.stdout,
        stderr: io.stderr,
        // The one human line --verbose promises; details stay in the (silent) logger.
        logger: verbose ? engineLineLogger((line) => { io.stderr.write(`tsibox: ${line}\n`); }) : logger,
      });
      if (interrupted !== null) sandbox.stop({ timeoutMs: 0 }).catch(() => { /* the result is awaited below */ });
      else if (tty !== null) {
        restoreTty = tty.raw();
        const sb = sandbox;
        onResize = (): void => {
          const size = tty.size();
          sb.resize(size.cols, size.rows).catch(() => { /* the sandbox ended, or the guest is gone */ });
        };
        tty.sizeSource?.on('resize', onResize);
        onResize(); // the window may have changed while the VM was launched
      }
      const r = await sandbox.exited.catch((err: unknown) => {
        if (interrupted !== null) return null;
        throw err;
      });
      return interrupted ?? r!.exitCode;
    } catch (err) {
      if (interrupted !== null) return interrupted;
      throw err;
    } finally {
      if (onResize !== null) tty?.sizeSource?.off('resize', onResize);
      restoreTty();
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      stdin.pause();
      if (stdin === process.stdin) process.stdin.destroy();
    }
  },
};

/** The host terminal behind `tsibox run -t`. */
interface HostTerminal {
  /** Where the window size comes from ('resize' events); null: none of our outputs is a terminal. */
  sizeSource: WriteStream | null;
  /** The window size now (80x24 when no output is a terminal). */
  size(): { cols: number; rows: number };
  /** Puts stdin in raw mode; returns what restores it (idempotent; also run at process exit). */
  raw(): () => void;
}

/** -t: stdin must be a terminal (docker says "the input device is not a TTY"). */
function hostTerminal(stdin: Readable, outputs: Writable[]): HostTerminal {
  const input = stdin as ReadStream;
  if (input.isTTY !== true || typeof input.setRawMode !== 'function') {
    throw new UsageError('-t: the input device is not a TTY (run it from a terminal, or leave -t out to pipe stdin)');
  }
  const sizeSource = (outputs as WriteStream[]).find((s) => s.isTTY === true && typeof s.columns === 'number') ?? null;
  const dim = (n: number | undefined, dflt: number): number => (n !== undefined && Number.isInteger(n) && n >= 1 && n <= 65535 ? n : dflt);
  return {
    sizeSource,
    size: () => ({ cols: dim(sizeSource?.columns, 80), rows: dim(sizeSource?.rows, 24) }),
    raw: () => {
      const wasRaw = input.isRaw;
      input.setRawMode(true);
      let restored = false;
      const restore = (): void => {
        if (restored) return;
        restored = true;
        process.off('exit', restore);
        try {
          input.setRawMode(wasRaw);
        } catch {
          // the terminal is gone
        }
      };
      // Any other way out (process.exit, an uncaught error) restores it too.
      process.once('exit', restore);
      return restore;
    },
  };
}

/** --on-publish-error warn at start: entries whose numbered host port cannot be bound now are reported and dropped. */
async function dropUnpublishable(portMap: PortMap, print: (line: string) => void): Promise<void> {
  for (const m of [...portMap.entries]) {
    const err = await checkHostPorts([m]);
    if (err === null) continue;
    print(`tsibox: ${err.message} [${err.code}]; running without it\n`);
    portMap.remove(m.protocol, m.guestPort);
  }
}

/** A silent logger that prints the engine decision as one plain line. */
function engineLineLogger(print: (line: string) => void): pino.Logger {
  return pino({ level: 'info' }, {
    write(line: string) {
      try {
        const rec = JSON.parse(line) as { engine?: string; reason?: string };
        if (rec.engine !== undefined && rec.reason !== undefined) print(`engine ${rec.engine}: ${rec.reason}`);
      } catch {
        // not ours
      }
    },
  });
}

/** --allow-unix and the limit flags (TSI only). */
export interface TsiExtras {
  allowUnix: string[];
  limits: TsiLimitOptions;
}

function tsiExtras(o: Record<string, unknown>): TsiExtras {
  const limits: TsiLimitOptions = {};
  if (typeof o['max-connections'] === 'number') limits.maxConnections = o['max-connections'];
  if (typeof o['max-listeners'] === 'number') limits.maxListeners = o['max-listeners'];
  if (typeof o['max-udp-sockets'] === 'number') limits.maxUdpSockets = o['max-udp-sockets'];
  if (typeof o['connect-rate'] === 'number') limits.connectionsPerSecond = o['connect-rate'];
  const allowUnix = Array.isArray(o['allow-unix']) ? o['allow-unix'].map(String) : [];
  return { allowUnix, limits };
}

/** --net tsi, --allow CIDR[:PORTS]... and --host-alias ADDR... → Sandbox network (default deny). */
export function networkOption(net: unknown, allow: unknown, aliases: unknown, publish?: unknown, extras: TsiExtras = { allowUnix: [], limits: {} }): TsiNetwork | undefined {
  const allows = Array.isArray(allow) ? allow.map(String) : [];
  const alias = Array.isArray(aliases) ? aliases.map(String) : [];
  const published = Array.isArray(publish) ? publish.map(String) : [];
  const tsiOnly = extras.allowUnix.length > 0 || Object.keys(extras.limits).length > 0;
  if (net !== 'tsi') {
    if (allows.length > 0) throw new UsageError('--allow needs --net tsi or passt; --host-alias, --publish, --allow-unix and the limit flags need --net tsi');
    if (alias.length > 0 || published.length > 0 || tsiOnly) {
      const given = alias.length > 0 ? '--host-alias' : published.length > 0 ? '--publish' : extras.allowUnix.length > 0 ? '--allow-unix' : 'the limit flags';
      throw new UsageError(`${given} ${given === 'the limit flags' ? 'need' : 'needs'} --net tsi (so do --host-alias, --publish, --allow-unix and the limit flags)`);
    }
    return undefined;
  }
  for (const p of extras.allowUnix) if (!p.startsWith('/')) throw new UsageError(`--allow-unix wants an absolute path, got ${JSON.stringify(p)}`);
  const unixRules: PolicyRule[] = extras.allowUnix.map((path) => ({ action: 'allow', protocol: 'unix', path, name: `--allow-unix ${path}` }));
  const base = allowPolicy(allows);
  const network: TsiNetwork = {
    mode: 'tsi',
    policy: unixRules.length > 0 ? new Policy({ default: 'deny', rules: [...unixRules, ...base.rules] }) : base,
    ...(extras.allowUnix.length > 0 ? { unixSockets: true } : {}),
    ...(Object.keys(extras.limits).length > 0 ? { limits: extras.limits } : {}),
  };
  if (published.length > 0) {
    try {
      network.portMap = new PortMap(published);
    } catch (e) {
      throw new UsageError(`--publish: ${(e as Error).message}`);
    }
  }
  for (const a of alias) {
    if (isIPv4(a)) {
      if (network.hostLoopbackAlias !== undefined) throw new UsageError('--host-alias: one IPv4 alias only');
      network.hostLoopbackAlias = a;
    } else if (isIPv6(a)) {
      if (network.hostLoopbackAlias6 !== undefined) throw new UsageError('--host-alias: one IPv6 alias only');
      network.hostLoopbackAlias6 = a;
    } else {
      throw new UsageError(`--host-alias wants an IP address, got ${JSON.stringify(a)}`);
    }
  }
  return network;
}

/** --allow CIDR[:PORTS]... → a policy allowing TCP and UDP there, denying the rest. */
export function allowPolicy(allow: unknown): Policy {
  const allows = Array.isArray(allow) ? allow.map(String) : [];
  const rules: PolicyRule[] = allows.map((a) => ({ action: 'allow', protocol: ['tcp', 'udp'], name: `--allow ${a}`, ...parseAllow(a) }));
  return new Policy({ default: 'deny', rules });
}

/** 'CIDR', 'CIDR:PORT', 'CIDR:LOW-HIGH'; IPv6 with ports in brackets: '[::1]:80', '[fd00::/8]:1-1024'. */
export function parseAllow(spec: string): { cidr: string; ports?: number | [number, number] } {
  let cidr = spec;
  let ports: string | undefined;
  const bracket = /^\[([^\]]+)\](?::(.*))?$/.exec(spec);
  if (bracket) {
    cidr = bracket[1]!;
    ports = bracket[2];
  } else if (spec.split(':').length === 2) {
    [cidr, ports] = spec.split(':') as [string, string];
  }
  const [addr, len, extra] = cidr.split('/');
  const max = isIPv4(addr ?? '') ? 32 : isIPv6(addr ?? '') ? 128 : -1;
  const bad = (): never => {
    const hint = spec.includes(':') && !spec.startsWith('[') ? ' (an IPv6 CIDR with ports is written [ADDR]:PORTS, e.g. [::1]:80)' : '';
    throw new UsageError(`--allow wants CIDR[:PORT[-PORT]], got ${JSON.stringify(spec)}${hint}`);
  };
  if (max < 0 || extra !== undefined) bad();
  if (len !== undefined && (!/^\d+$/.test(len) || Number(len) > max)) bad();
  if (ports === undefined) return { cidr };
  const m = /^(\d+)(?:-(\d+))?$/.exec(ports);
  if (!m) return bad();
  const lo = Number(m[1]);
  const hi = m[2] === undefined ? lo : Number(m[2]);
  if (lo < 1 || hi > 65535 || lo > hi) bad();
  return { cidr, ports: lo === hi ? lo : [lo, hi] };
}
