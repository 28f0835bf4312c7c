// The host side of the guest exec agent (docs/exec-agent.md): runs more processes in
// a running guest over the sandbox's vsock device, one connection per process. Works
// the same under every engine, since both serve the guest through our VsockDevice.
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { TsiboxError } from '../errors.js';
import { silentLogger } from '../log.js';
import { RateLimitedLog } from '../log-rate.js';
import type { VsockDevice } from '../virtio/vsock/device.js';
import { AGENT_PORT } from './protocol.js';
import { ExecSession, type ExecHandle } from './session.js';
import { resizeMainTerminal, signalMainWorkload } from './signal-main.js';

export type { ExecExit, ExecHandle } from './session.js';

export interface AgentClientOptions {
  /** Guest vsock port of the agent (default AGENT_PORT, 52). */
  port?: number;
  /**
   * How long exec() keeps retrying a connect the guest refuses (the agent is not
   * listening yet: still booting), in ms, with backoff from 20 ms to 500 ms between
   * attempts. Past it the exec fails with AGENT_UNAVAILABLE. Default 60 000 (a guest
   * under the nested KVM test host takes about 17 s to boot).
   */
  connectTimeoutMs?: number;
  /** pino logger: one `agent.exec` info line per exec, `agent.protocol_error` warnings. */
  logger?: Logger;
  /**
   * The sandbox's limiter for lines the guest can trigger (shared so one guest cannot
   * flood the log through several clients); default: one of its own over `logger`.
   */
  guestLog?: RateLimitedLog;
}

/** What to run: everything but argv is optional. */
export interface ExecOptions {
  /** Added to the workload's environment (same names replace its values). */
  env?: Record<string, string>;
  /** Working directory in the guest, created when missing; default: the workload's. */
  workdir?: string;
  /** The process's stdin; it sees end of file afterwards. None: an empty stdin. */
  stdin?: Buffer | Uint8Array | string | Readable;
  /** Run as this uid (and gid, default the uid); default: the workload's user. */
  user?: { uid: number; gid?: number };
}

const DEFAULT_CONNECT_TIMEOUT_MS = 60_000;

/**
 * Runs processes in a running guest through its exec agent. One client per sandbox;
 * `close()` it when the sandbox ends: execs still connecting would otherwise keep
 * retrying (and the event loop alive) until their connect timeout.
 */
export class AgentClient {
  readonly #device: VsockDevice;
  readonly #port: number;
  readonly #connectTimeoutMs: number;
  readonly #guestLog: RateLimitedLog;
  readonly #sessions = new Set<ExecSession>();
  #closed = false;

  /** Throws INVALID_ARGUMENT for a bad port or timeout. */
  constructor(device: VsockDevice, opts: AgentClientOptions = {}) {
    const port = opts.port ?? AGENT_PORT;
    if (!Number.isInteger(port) || port < 0 || port >= 0xffff_ffff) throw new TsiboxError('INVALID_ARGUMENT', `agent port ${port} is not a u32 vsock port`);
    const timeout = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    if (!(timeout >= 0) || !Number.isFinite(timeout)) throw new TsiboxError('INVALID_ARGUMENT', `connectTimeoutMs ${timeout} is not a finite number >= 0`);
    this.#device = device;
    this.#port = port;
    this.#connectTimeoutMs = timeout;
    this.#guestLog = opts.guestLog ?? new RateLimitedLog(opts.logger ?? silentLogger);
  }

  /** Execs not finished yet. */
  get running(): number {
    return this.#sessions.size;
  }

  /**
   * Starts `argv` in the guest (argv[0] searched in the PATH of the merged
   * environment when it has no '/'). Returns at once; the handle's promises and
   * streams tell the rest. Throws INVALID_ARGUMENT for what the agent would refuse
   * (empty argv, NUL bytes, an env name with '=', more than 256 KiB of argv + env,
   * an unknown user id) and INVALID_STATE after close().
   */
  exec(argv: string[], opts: ExecOptions = {}): ExecHandle {
    if (this.#closed) throw new TsiboxError('INVALID_STATE', 'the agent client is closed');
    const session = new ExecSession({
      device: this.#device,
      port: this.#port,
      request: {
        argv,
        ...(opts.env !== undefined ? { env: opts.env } : {}),
        ...(opts.workdir !== undefined ? { workdir: opts.workdir } : {}),
        ...(opts.user !== undefined ? { user: opts.user } : {}),
      },
      stdin: opts.stdin,
      connectTimeoutMs: this.#connectTimeoutMs,
      guestLog: this.#guestLog,
      onDone: (s) => { this.#sessions.delete(s); },
    });
    if (!session.done) this.#sessions.add(session);
    return session;
  }

  /**
   * Sends `sig` to the guest's main workload (its process group), through the agent and
   * init; any signal, SIGKILL included. Resolves once init has it. Rejects with
   * INVALID_ARGUMENT (unknown signal), AGENT_UNAVAILABLE, AGENT_PROTOCOL, or
   * INVALID_STATE after close().
   */
  async signalMain(sig: NodeJS.Signals | number): Promise<void> {
    if (this.#closed) throw new TsiboxError('INVALID_STATE', 'the agent client is closed');
    await signalMainWorkload(this.#device, this.#port, sig, this.#connectTimeoutMs);
  }

  /**
   * Sets the window size of the main workload's terminal (a sandbox started with
   * `tty`); the guest kernel sends SIGWINCH to its foreground process group. Resolves
   * once it is set. Rejects with INVALID_ARGUMENT (not 1..65535), AGENT_UNAVAILABLE,
   * AGENT_PROTOCOL (e.g. the workload has no terminal), or INVALID_STATE after close().
   */
  async resizeMain(cols: number, rows: number): Promise<void> {
    if (this.#closed) throw new TsiboxError('INVALID_STATE', 'the agent client is closed');
    await resizeMainTerminal(this.#device, this.#port, cols, rows, this.#connectTimeoutMs);
  }

  /**
   * Ends every running exec (their connections reset, so the agent kills their
   * process groups; `exited` rejects with AGENT_UNAVAILABLE). Idempotent.
   */
  close(): void {
    this.#closed = true;
    for (const s of [...this.#sessions]) s.abort(new TsiboxError('AGENT_UNAVAILABLE', 'the agent client was closed'));
    this.#sessions.clear();
    this.#guestLog.flush();
  }
}
