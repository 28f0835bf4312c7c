// The one launcher and lifetime for external network processes (passt, gvproxy): spawn,
// keep the tail of stderr, know when it ended and why, stop it, and make sure it does
// not outlive this process, not even after a SIGKILL of Node.
//
// Lifetime ties, strongest first:
//  - the helper's own channel to us (passt: an inherited socketpair; gvproxy: our
//    connection to its qemu socket): both exit when it reaches end of stream;
//  - `setpriv --pdeathsig KILL` around the helper where util-linux has it;
//  - a helper with a private directory runs under a tiny `sh` keeper (its parent) that
//    holds a pipe from us on its stdin: at end of file (we closed it, or died) the keeper
//    sends SIGTERM to the helper, waits for it, removes the directory and exits. The
//    keeper itself has no pdeathsig, so the clean-up runs after a SIGKILL of Node; if
//    the keeper is killed, the helper dies by its pdeathsig;
//  - at process exit every helper still running is killed by PID (helper-programs.ts)
//    and private directories are removed.
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import type { Logger } from 'pino';
import { TsiboxError } from '../errors.js';
import { closeFd } from './libc.js';
import { killOnExit, parentDeathWrapper } from './helper-programs.js';

const STDERR_KEEP = 16 * 1024;
const SIGNAL_NAMES: Record<number, string> = { 1: 'SIGHUP', 2: 'SIGINT', 6: 'SIGABRT', 9: 'SIGKILL', 11: 'SIGSEGV', 13: 'SIGPIPE', 15: 'SIGTERM' };

/**
 * The keeper script: `sh -c KEEPER keeper DIR BINARY ARGS...`. fd 9 is the pipe from
 * Node (a copy of stdin); the watcher waits for its end of file.
 */
const KEEPER = [
  'd=$1; shift',
  'exec 9<&0',
  '"$@" </dev/null 9<&- &',
  'g=$!',
  '( while read -r _ <&9; do :; done; kill -TERM "$g" 2>/dev/null ) &',
  'w=$!',
  'exec 9<&- </dev/null',
  'wait "$g"; rc=$?',
  'kill "$w" 2>/dev/null',
  'rm -rf -- "$d"',
  'exit "$rc"',
].join('\n');

export interface HelperSpec {
  /** Short name for messages and logs ('passt', 'gvproxy'). */
  name: string;
  /** The executable and its arguments. */
  argv: readonly string[];
  /** File descriptors the helper inherits as 3, 4, ... (closed here after the spawn). */
  passFds?: readonly number[];
  /**
   * A directory that belongs to this helper only (sockets, pid files): removed when the
   * helper ends, by the keeper even after a SIGKILL of this process.
   */
  privateDir?: string;
  /** Removes noise from stderr before it is shown (default: as it is). */
  cleanStderr?: (text: string) => string;
  logger: Logger;
}

export interface HelperExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const liveDirs = new Set<string>();
let dirHook = false;

/** A running helper program. */
export class HelperProcess {
  readonly name: string;
  /** PID of the process we spawned (the keeper when there is a private directory). */
  readonly pid: number;
  /** What was run (wrappers included). */
  readonly argv: readonly string[];
  readonly privateDir: string | undefined;
  /** Resolves when the helper (and its keeper) has exited. */
  readonly exited: Promise<HelperExit>;
  readonly #child: ChildProcess;
  readonly #clean: (t: string) => string;
  #stderr = '';

  /** @internal use startHelper */
  constructor(child: ChildProcess, spec: HelperSpec, argv: string[]) {
    this.#child = child;
    this.name = spec.name;
    this.pid = child.pid ?? -1;
    this.argv = argv;
    this.privateDir = spec.privateDir;
    this.#clean = spec.cleanStderr ?? ((t) => t);
    const log = spec.logger;
    child.stderr?.setEncoding('utf8').on('data', (d: string) => { this.#stderr = (this.#stderr + d).slice(-STDERR_KEEP); });
    this.exited = new Promise<HelperExit>((resolve) => {
      child.once('error', (err) => {
        this.#stderr += `\n${err.message}`;
        this.#forgetDir();
        resolve({ code: null, signal: null });
      });
      child.once('close', (code, signal) => {
        log.debug({ code, signal, helper: spec.name }, `${spec.name} exited`);
        this.#forgetDir();
        resolve({ code, signal });
      });
    });
  }

  /** The tail of what the helper printed on stderr (noise removed). */
  get stderr(): string {
    return this.#clean(this.#stderr).trim();
  }

  get running(): boolean {
    return this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /**
   * "exited with status 1" / "was killed by SIGKILL" / "could not be started" (a
   * keeper reports its helper's death by signal N as status 128+N, as sh does).
   */
  static describe(ex: HelperExit): string {
    if (ex.signal !== null) return `was killed by ${ex.signal}`;
    if (ex.code === null) return 'could not be started';
    const sig = ex.code > 128 ? SIGNAL_NAMES[ex.code - 128] : undefined;
    return sig !== undefined ? `was killed by ${sig}` : `exited with status ${ex.code}`;
  }

  /** Sends SIGKILL to the spawned process (by its PID). */
  kill(): void {
    if (this.running) this.#child.kill('SIGKILL');
  }

  /**
   * Ends the helper: closes the keeper's pipe (the caller closes the helper's own
   * channel first: it then exits by itself), then SIGKILL after `graceMs`. Idempotent;
   * resolves when it is gone and its private directory is removed.
   */
  async close(graceMs = 1000): Promise<HelperExit> {
    this.#child.stdin?.destroy();
    if (this.running) {
      const timer = setTimeout(() => { this.kill(); }, graceMs);
      try {
        await this.exited;
      } finally {
        clearTimeout(timer);
      }
    }
    const ex = await this.exited;
    this.#forgetDir();
    return ex;
  }

  /** A DEVICE_ERROR saying that the helper `what`, with how it ended and its stderr. */
  async failure(what: string, bin: string): Promise<TsiboxError> {
    this.kill();
    const ex = await this.exited;
    const err = this.stderr;
    return new TsiboxError('DEVICE_ERROR', `${this.name} ${what} (${bin} ${HelperProcess.describe(ex)})${err ? `; its stderr:\n${err}` : ''}`);
  }

  #forgetDir(): void {
    const d = this.privateDir;
    if (d === undefined || !liveDirs.has(d)) return;
    liveDirs.delete(d);
    rmSync(d, { recursive: true, force: true });
  }
}

/** Spawns a helper (see the top of this file for its lifetime). */
export function startHelper(spec: HelperSpec): HelperProcess {
  const wrapper = parentDeathWrapper() ?? [];
  const passFds = spec.passFds ?? [];
  const argv = spec.privateDir === undefined
    ? [...wrapper, ...spec.argv]
    : ['sh', '-c', KEEPER, `${spec.name}-keeper`, spec.privateDir, ...wrapper, ...spec.argv];
  spec.logger.debug({ argv }, `starting ${spec.name}`);
  let child: ChildProcess;
  try {
    child = spawn(argv[0]!, argv.slice(1), {
      stdio: [spec.privateDir === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe', ...passFds],
    });
  } finally {
    for (const fd of passFds) closeFd(fd);
  }
  if (spec.privateDir !== undefined) {
    liveDirs.add(spec.privateDir);
    if (!dirHook) {
      dirHook = true;
      process.on('exit', () => { for (const d of liveDirs) rmSync(d, { recursive: true, force: true }); });
    }
    child.stdin?.on('error', () => { /* the keeper is gone: nothing to tell it */ });
  }
  killOnExit(child);
  return new HelperProcess(child, spec, argv);
}
