// `tsibox oci ...`: the runc command-line interface, so that podman (through conmon) and
// containerd (through its runc shim) can run containers in tsibox microVMs
// (docs/oci.md). Global flags: --root DIR (state, default /run/tsibox-oci), --log FILE,
// --log-format text|json, --debug, --systemd-cgroup (accepted, ignored), --rootless
// VALUE (accepted, ignored). Subcommands: create, start, state, kill, delete, features
// (src/oci/lifecycle.ts moves a container through its life).
import { appendFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { TsiboxError } from '../errors.js';
import { loadBundle } from './config.js';
import { features, OCI_VERSION_MAX } from './features.js';
import { OciUsageError, parseFlags, parseSignal, type FlagSpecs } from './flags.js';
import { DEFAULT_STATE_ROOT, StateStore, checkContainerId, notFound, ociState } from './state-store.js';
import { createContainer, deleteContainer, killContainer, startContainer } from './lifecycle.js';

export interface OciIo {
  stdout: Writable;
  stderr: Writable;
}

export interface OciGlobals {
  root: string;
  log?: string;
  logFormat: 'text' | 'json';
  debug: boolean;
}

const GLOBAL_FLAGS: FlagSpecs = {
  root: { type: 'string' },
  log: { type: 'string' },
  'log-format': { type: 'string' },
  debug: { type: 'boolean' },
  'systemd-cgroup': { type: 'boolean' },
  rootless: { type: 'string' },
  criu: { type: 'string' },
  version: { type: 'boolean', short: 'v' },
  help: { type: 'boolean', short: 'h' },
};

/** runc subcommands an engine may call that tsibox-oci does not have: a plain NOT_SUPPORTED, not a usage error. */
const NOT_YET: ReadonlySet<string> = new Set(['exec', 'run', 'ps', 'list', 'pause', 'resume', 'update', 'events', 'checkpoint', 'restore', 'spec']);

interface Subcommand {
  usage: string;
  flags: FlagSpecs;
  run(args: { flags: Record<string, string | boolean | number>; positionals: string[] }, g: OciGlobals, io: OciIo): Promise<number>;
}

const SUBCOMMANDS: Readonly<Record<string, Subcommand>> = {
  state: {
    usage: 'state <container-id>',
    flags: {},
    async run({ positionals }, g, io) {
      const id = oneId(positionals, this.usage);
      const store = new StateStore(g.root);
      const s = store.read(id);
      if (s === null) throw notFound(id);
      io.stdout.write(JSON.stringify(ociState(s), null, 2) + '\n');
      return 0;
    },
  },
  features: {
    usage: 'features',
    flags: {},
    async run({ positionals }, _g, io) {
      if (positionals.length > 0) throw new OciUsageError(`features takes no arguments`);
      io.stdout.write(JSON.stringify(features(), null, 4) + '\n');
      return 0;
    },
  },
  create: {
    usage: 'create [--bundle DIR] [--pid-file FILE] [--console-socket SOCKET] [--no-pivot] [--no-new-keyring] [--preserve-fds N] <container-id>',
    flags: {
      bundle: { type: 'string', short: 'b' },
      'pid-file': { type: 'string' },
      'console-socket': { type: 'string' },
      'no-pivot': { type: 'boolean' },
      'no-new-keyring': { type: 'boolean' },
      'preserve-fds': { type: 'integer' },
    },
    async run({ flags, positionals }, g) {
      const id = oneId(positionals, this.usage);
      const bundle = resolve(typeof flags['bundle'] === 'string' ? flags['bundle'] : '.');
      const consoleSocket = flags['console-socket'];
      if (typeof consoleSocket === 'string' && !isAbsolute(consoleSocket)) throw new OciUsageError(`--console-socket must be an absolute path`);
      const pidFile = typeof flags['pid-file'] === 'string' ? resolve(flags['pid-file']) : undefined;
      const plan = loadBundle(bundle);
      if (plan.sandbox.tty !== undefined && consoleSocket === undefined) {
        throw new TsiboxError('INVALID_ARGUMENT', 'process.terminal is true: create needs --console-socket to hand the terminal to');
      }
      if (plan.sandbox.tty === undefined && consoleSocket !== undefined) {
        throw new TsiboxError('INVALID_ARGUMENT', '--console-socket given but process.terminal is false');
      }
      await createContainer(new StateStore(g.root), {
        id, plan,
        ...(pidFile !== undefined ? { pidFile } : {}),
        ...(typeof consoleSocket === 'string' ? { consoleSocket } : {}),
      });
      return 0;
    },
  },
  start: {
    usage: 'start <container-id>',
    flags: {},
    async run({ positionals }, g) {
      const id = oneId(positionals, this.usage);
      const store = new StateStore(g.root);
      if (store.read(id) === null) throw notFound(id);
      await startContainer(store, id);
      return 0;
    },
  },
  kill: {
    usage: 'kill [--all] <container-id> [SIGNAL]',
    flags: { all: { type: 'boolean', short: 'a' } },
    async run({ positionals }, g) {
      if (positionals.length < 1 || positionals.length > 2) throw new OciUsageError(`usage: ${this.usage}`);
      const id = checkContainerId(positionals[0]!);
      const signal = parseSignal(positionals[1] ?? 'SIGTERM');
      const store = new StateStore(g.root);
      if (store.read(id) === null) throw notFound(id);
      await killContainer(store, id, signal);
      return 0;
    },
  },
  delete: {
    usage: 'delete [--force] <container-id>',
    flags: { force: { type: 'boolean', short: 'f' } },
    async run({ flags, positionals }, g) {
      const id = oneId(positionals, this.usage);
      const force = flags['force'] === true;
      const store = new StateStore(g.root);
      if (!force && store.read(id) === null) throw notFound(id);
      await deleteContainer(store, id, force);
      return 0;
    },
  },
};

function oneId(positionals: string[], usage: string): string {
  if (positionals.length !== 1) throw new OciUsageError(`usage: ${usage}`);
  return checkContainerId(positionals[0]!);
}

export function ociUsage(): string {
  return [
    'usage: tsibox oci [--root DIR] [--log FILE] [--log-format text|json] [--debug] [--systemd-cgroup] <subcommand> ...',
    'The runc command-line interface, for podman (--runtime) and containerd (runc shim BinaryName).',
    'Subcommands:',
    ...Object.values(SUBCOMMANDS).map((s) => `  ${s.usage}`),
    `State lives under --root (default ${DEFAULT_STATE_ROOT}). docs/oci.md says what works today.`,
    '',
  ].join('\n');
}

/** Parses the global flags (everything before the subcommand). */
export function parseGlobals(argv: readonly string[]): { globals: OciGlobals; rest: string[]; version: boolean; help: boolean } {
  const { flags, positionals } = parseFlags(argv, GLOBAL_FLAGS, true);
  const root = typeof flags['root'] === 'string' ? flags['root'] : DEFAULT_STATE_ROOT;
  if (!isAbsolute(root)) throw new OciUsageError(`--root must be an absolute path, got ${JSON.stringify(root)}`);
  const logFormat = flags['log-format'] ?? 'text';
  if (logFormat !== 'text' && logFormat !== 'json') throw new OciUsageError(`--log-format must be text or json, got ${JSON.stringify(logFormat)}`);
  return {
    globals: {
      root,
      ...(typeof flags['log'] === 'string' ? { log: resolve(flags['log']) } : {}),
      logFormat,
      debug: flags['debug'] === true,
    },
    rest: positionals,
    version: flags['version'] === true,
    help: flags['help'] === true,
  };
}

/** Runs `tsibox oci <argv>`; resolves with the exit status (0 ok, 1 failure, 2 usage). */
export async function runOci(argv: readonly string[], io: OciIo): Promise<number> {
  let globals: OciGlobals | null = null;
  try {
    const g = parseGlobals(argv);
    globals = g.globals;
    if (g.version) {
      io.stdout.write(`tsibox-oci version ${features().annotations['io.tsibox.version']}\nspec: ${OCI_VERSION_MAX}\n`);
      return 0;
    }
    const [name, ...rest] = g.rest;
    if (g.help || name === undefined || name === 'help') {
      (name === undefined && !g.help ? io.stderr : io.stdout).write(ociUsage());
      return name === undefined && !g.help ? 2 : 0;
    }
    const sub = Object.hasOwn(SUBCOMMANDS, name) ? SUBCOMMANDS[name] : undefined;
    if (sub === undefined && NOT_YET.has(name)) throw new TsiboxError('NOT_SUPPORTED', `tsibox-oci does not implement \`${name}\` yet (docs/oci.md lists what it does)`);
    if (sub === undefined) throw new OciUsageError(`unknown subcommand ${JSON.stringify(name)}`);
    return await sub.run(parseFlags(rest, sub.flags), globals, io);
  } catch (err) {
    const msg = err instanceof TsiboxError ? `${err.message} [${err.code}]` : err instanceof Error ? (err.stack ?? err.message) : String(err);
    io.stderr.write(`tsibox oci: ${msg}\n`);
    if (err instanceof OciUsageError) io.stderr.write(ociUsage());
    if (globals?.log !== undefined) writeLog(globals, 'error', msg);
    return err instanceof OciUsageError ? 2 : 1;
  }
}

/**
 * One line to --log, as runc writes it: with --log-format json
 * `{"level":"error","msg":"...","time":"..."}` (containerd's shim reads the last error
 * from it), else `time="..." level=error msg="..."`.
 */
export function writeLog(g: OciGlobals, level: 'error' | 'warning' | 'info' | 'debug', msg: string): void {
  const time = new Date().toISOString();
  const line = g.logFormat === 'json' ? JSON.stringify({ level, msg, time }) : `time=${JSON.stringify(time)} level=${level} msg=${JSON.stringify(msg)}`;
  try {
    appendFileSync(g.log!, line + '\n', { mode: 0o600 });
  } catch { /* the log is best effort; the error went to stderr */ }
}
