// One exec on the guest agent: one vsock connection, from connect (retried while the
// agent is not listening yet) to EXIT. Everything the guest sends is checked
// (protocol.ts and the order rules of docs/exec-agent.md §4); a violation ends this
// exec with AGENT_PROTOCOL and resets the connection. Nothing here throws into the
// device's event handlers, and the promises handed out never reject unobserved.
//
// Flow control, both ways:
//  - guest → host: bytes are credited back to the guest (conn.consumed) only while
//    neither output stream is over its high-water mark; a reader that stops reading
//    stops the guest after one vsock buf_alloc (256 KiB), and the agent then stops
//    reading the child's pipe, so the child blocks. A destroyed stream drops its data.
//  - host → guest: stdin goes out within the agent's window (STDIN_WINDOW bytes not
//    yet acknowledged) and only while the connection's queue is below its high-water
//    mark; a Readable source is paused meanwhile.
import { Readable } from 'node:stream';
import { TsiboxError } from '../errors.js';
import type { RateLimitedLog } from '../log-rate.js';
import type { CloseReason, VsockConnection } from '../virtio/vsock/connection.js';
import type { VsockDevice } from '../virtio/vsock/device.js';
import {
  AgentErrorCode, AgentPeerFault, FrameDecoder, MAX_DATA, STDIN_WINDOW, decodeGuestMessage, encodeExec, encodeSignal,
  encodeStdin, encodeStdinEof, signalName, signalNumber, type ExecRequest, type GuestMessage,
} from './protocol.js';

/** How a process ended: its status (128+N for signal N; 125/126/127 when it did not start). */
export interface ExecExit {
  exitCode: number;
  /** The signal's name when the process was killed by one (exitCode is then 128+N). */
  signal?: NodeJS.Signals;
}

/** A process started through the agent (AgentClient.exec). */
export interface ExecHandle {
  /** The process's stdout; ends after its EXIT (or when the exec fails). */
  readonly stdout: Readable;
  /** The process's stderr (separate from stdout); ends like stdout. */
  readonly stderr: Readable;
  /**
   * The guest pid once it runs. Rejects with AGENT_EXEC_FAILED when the program did
   * not start (errno set), or with the error `exited` rejects with.
   */
  readonly pid: Promise<number>;
  /**
   * The exit status. Rejects with AGENT_UNAVAILABLE (no agent within the connect
   * timeout, or the connection lost before the status), AGENT_BUSY or AGENT_PROTOCOL.
   * It can resolve before the last output was read: wait for the streams' 'end' for
   * all of it.
   */
  readonly exited: Promise<ExecExit>;
  /**
   * Sends a signal (a name or a Linux number 1..64) to the process's group (it leads
   * its own session). Queued while connecting; ignored once it has exited. Throws
   * INVALID_ARGUMENT for an unknown signal.
   */
  kill(signal?: NodeJS.Signals | number): void;
}

export interface SessionOptions {
  device: VsockDevice;
  port: number;
  request: ExecRequest;
  stdin: Readable | Uint8Array | string | undefined;
  /** How long refused connects are retried (ms). */
  connectTimeoutMs: number;
  guestLog: RateLimitedLog;
  /** Called once when the exec is over (settled), to forget it. */
  onDone: (s: ExecSession) => void;
}

/** Connect close reasons that mean "nobody listening yet": retried until the deadline. */
const RETRY_REASONS: ReadonlySet<CloseReason> = new Set(['refused', 'connect-timeout', 'device-reset', 'transport-reset']);
/** Connect retries while the agent is not listening yet: from 20 ms, doubling to 500 ms. */
export const BACKOFF_FIRST_MS = 20;
export const BACKOFF_MAX_MS = 500;
/** After EXIT: how long the guest has to close before we reset. */
const CLOSE_GRACE_MS = 2000;
/** kill() calls remembered while connecting. */
const MAX_PENDING_SIGNALS = 16;

type Which = 'stdout' | 'stderr';

function noop(): void {}

export class ExecSession implements ExecHandle {
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly pid: Promise<number>;
  readonly exited: Promise<ExecExit>;
  readonly #o: SessionOptions;
  readonly #exec: Buffer;
  readonly #started = performance.now();
  #resolvePid!: (pid: number) => void;
  #rejectPid!: (e: Error) => void;
  #resolveExit!: (e: ExecExit) => void;
  #rejectExit!: (e: Error) => void;
  #state: 'connecting' | 'open' | 'done' = 'connecting';
  #conn: VsockConnection | null = null;
  #attempts = 0;
  #deadline: number;
  #backoff = BACKOFF_FIRST_MS;
  #retryTimer: NodeJS.Timeout | null = null;
  #decoder = new FrameDecoder('guest');
  #start: 'none' | 'started' | 'failed' = 'none';
  #guestPid = 0;
  #pendingSignals: number[] = [];
  // guest → host credit
  #owed = 0;
  #blocked: Record<Which, boolean> = { stdout: false, stderr: false };
  #dropped: Record<Which, boolean> = { stdout: false, stderr: false };
  #bytes = { stdout: 0, stderr: 0, stdin: 0 };
  // host → guest stdin
  #stdinQueue: Buffer[] = [];
  #stdinQueued = 0;
  #stdinSent = 0;
  #stdinAcked = 0;
  #stdinEnd = false;
  #stdinEofSent = false;
  #stdinSource: Readable | null = null;
  #stdinDetach: () => void = noop;

  constructor(o: SessionOptions) {
    this.#o = o;
    this.#exec = encodeExec(o.request); // throws INVALID_ARGUMENT before anything starts
    this.#deadline = performance.now() + o.connectTimeoutMs;
    this.pid = new Promise<number>((res, rej) => { this.#resolvePid = res; this.#rejectPid = rej; });
    this.exited = new Promise<ExecExit>((res, rej) => { this.#resolveExit = res; this.#rejectExit = rej; });
    // Never an unhandled rejection: callers who do not await these must not crash the VMM.
    this.pid.catch(noop);
    this.exited.catch(noop);
    this.stdout = this.#output('stdout');
    this.stderr = this.#output('stderr');
    const src = o.stdin;
    if (src === undefined) this.#stdinEnd = true;
    else if (typeof src === 'string' || src instanceof Uint8Array) {
      const b = typeof src === 'string' ? Buffer.from(src, 'utf8') : Buffer.isBuffer(src) ? src : Buffer.from(src.buffer, src.byteOffset, src.byteLength);
      if (b.length > 0) this.#stdinQueue.push(b);
      this.#stdinQueued = b.length;
      this.#stdinEnd = true;
    } else {
      this.#stdinSource = src;
      // From now on, and for good: a source failing before we connect or after the
      // exec ended must not become an uncaught 'error' in the VMM's process.
      src.on('error', (err: Error) => { this.#stdinFailed(err); });
    }
    this.#attempt();
  }

  /** Whether the exec is over (settled either way). */
  get done(): boolean {
    return this.#state === 'done';
  }

  kill(signal: NodeJS.Signals | number = 'SIGTERM'): void {
    const n = signalNumber(signal);
    if (this.#state === 'done') return;
    if (this.#state === 'connecting') {
      if (this.#pendingSignals.length < MAX_PENDING_SIGNALS) this.#pendingSignals.push(n);
      return;
    }
    this.#conn?.write(encodeSignal(n));
  }

  /** Ends the exec now (the agent kills the process when its connection resets). */
  abort(err: TsiboxError): void {
    this.#fail(err);
  }

  // ---- connecting ----

  #attempt(): void {
    this.#retryTimer = null;
    if (this.#state !== 'connecting') return;
    this.#attempts++;
    let conn: VsockConnection;
    try {
      conn = this.#o.device.connect(this.#o.port);
    } catch (err) {
      // VSOCK_BUSY: the device is full right now; like a refusal, retried.
      if (err instanceof TsiboxError && err.code === 'VSOCK_BUSY') return this.#retry(err.message);
      return this.#fail(new TsiboxError('AGENT_UNAVAILABLE', `cannot connect to the exec agent: ${(err as Error).message}`, { cause: err }));
    }
    this.#conn = conn;
    conn.once('connect', () => { this.#opened(conn); });
    conn.on('close', (reason, detail) => { this.#closed(conn, reason, detail); });
  }

  #retry(reason: string): void {
    this.#conn = null;
    const left = this.#deadline - performance.now();
    if (left <= 0) {
      this.#fail(new TsiboxError('AGENT_UNAVAILABLE',
        `the guest exec agent did not accept a connection on vsock port ${this.#o.port} within ${this.#o.connectTimeoutMs} ms ` +
        `(${this.#attempts} attempts, last: ${reason}); is it off (tsibox.agent=0), or is the guest not up?`));
      return;
    }
    const wait = Math.min(this.#backoff, left);
    this.#backoff = Math.min(this.#backoff * 2, BACKOFF_MAX_MS);
    this.#retryTimer = setTimeout(() => { this.#attempt(); }, wait);
  }

  #opened(conn: VsockConnection): void {
    if (this.#state !== 'connecting' || this.#conn !== conn) return;
    this.#state = 'open';
    conn.on('data', (d) => { this.#onData(d); });
    conn.on('end', () => {
      if (this.#state !== 'done') this.#fail(new TsiboxError('AGENT_UNAVAILABLE', 'the exec agent closed the connection before the exit status'));
    });
    conn.on('drain', () => { this.#pumpStdin(); });
    conn.write(this.#exec);
    for (const n of this.#pendingSignals) conn.write(encodeSignal(n));
    this.#pendingSignals = [];
    this.#startStdin();
  }

  #closed(conn: VsockConnection, reason: CloseReason, detail: string): void {
    if (this.#conn !== conn) return;
    if (this.#state === 'connecting') {
      if (RETRY_REASONS.has(reason)) return this.#retry(`${reason}: ${detail}`);
      return this.#fail(new TsiboxError('AGENT_UNAVAILABLE', `cannot connect to the exec agent: ${reason} (${detail})`));
    }
    if (this.#state === 'open') {
      this.#fail(new TsiboxError('AGENT_UNAVAILABLE', `the connection to the exec agent ended before the exit status: ${reason} (${detail})`));
    }
  }

  // ---- guest → host ----

  #output(which: Which): Readable {
    const r = new Readable({
      read: () => {
        if (!this.#blocked[which]) return;
        this.#blocked[which] = false;
        this.#credit();
      },
    });
    r.on('close', () => {
      // Destroyed by its reader: drop what comes for it, never stall the other stream.
      this.#dropped[which] = true;
      this.#blocked[which] = false;
      this.#credit();
    });
    return r;
  }

  #credit(): void {
    if (this.#blocked.stdout || this.#blocked.stderr || this.#owed === 0 || this.#conn === null) return;
    const n = this.#owed;
    this.#owed = 0;
    this.#conn.consumed(n);
  }

  #onData(d: Buffer): void {
    this.#owed += d.length;
    if (this.#state !== 'open') {
      this.#credit();
      return;
    }
    this.#decoder.push(d);
    for (;;) {
      const f = this.#decoder.next();
      if (f === null) break;
      if (f instanceof AgentPeerFault) return this.#protocolError(f.reason);
      const m = decodeGuestMessage(f);
      if (m instanceof AgentPeerFault) return this.#protocolError(m.reason);
      this.#handle(m);
      if (this.#state !== 'open') break;
    }
    this.#credit();
  }

  #handle(m: GuestMessage): void {
    switch (m.type) {
      case 'started':
        if (this.#start !== 'none') return this.#protocolError('a second STARTED');
        this.#start = 'started';
        this.#guestPid = m.pid;
        this.#resolvePid(m.pid);
        return;
      case 'start-failed':
        if (this.#start !== 'none') return this.#protocolError('START_FAILED after the start result');
        this.#start = 'failed';
        this.#rejectPid(new TsiboxError('AGENT_EXEC_FAILED', `${this.#o.request.argv[0]}: ${m.message} (status ${m.status})`, { errno: m.errno }));
        return;
      case 'stdout':
      case 'stderr': {
        if (this.#start === 'none') return this.#protocolError(`${m.type} before the start result`);
        this.#bytes[m.type] += m.data.length;
        const r = this[m.type];
        if (this.#dropped[m.type] || r.destroyed) return;
        if (!r.push(m.data)) this.#blocked[m.type] = true;
        return;
      }
      case 'stdin-ack':
        if (m.bytes > this.#stdinSent - this.#stdinAcked) {
          return this.#protocolError(`STDIN_ACK of ${m.bytes} bytes, only ${this.#stdinSent - this.#stdinAcked} unacknowledged`);
        }
        this.#stdinAcked += m.bytes;
        this.#pumpStdin();
        return;
      case 'exit': {
        if (this.#start === 'none') return this.#protocolError('EXIT before the start result');
        const exit: ExecExit = { exitCode: m.status };
        const sig = m.signal === 0 ? undefined : signalName(m.signal);
        if (sig !== undefined) exit.signal = sig;
        this.#settle(exit, null);
        return;
      }
      case 'error': {
        const busy = m.code === AgentErrorCode.BUSY;
        this.#fail(new TsiboxError(busy ? 'AGENT_BUSY' : 'AGENT_PROTOCOL', `the exec agent refused: ${m.message || `error ${m.code}`}`));
        return;
      }
    }
  }

  #protocolError(reason: string): void {
    this.#o.guestLog.warn({ event: 'agent.protocol_error', reason, argv0: this.#o.request.argv[0] }, `exec agent broke the protocol: ${reason}`);
    this.#fail(new TsiboxError('AGENT_PROTOCOL', `the exec agent broke the protocol: ${reason}`));
  }

  // ---- host → guest stdin ----

  #startStdin(): void {
    const src = this.#stdinSource;
    if (src !== null) {
      const onData = (chunk: Buffer | string): void => {
        const b = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
        if (b.length === 0) return;
        this.#stdinQueue.push(b);
        this.#stdinQueued += b.length;
        // Hold the source while a window's worth waits (memory: one window + one chunk).
        if (this.#stdinQueued >= STDIN_WINDOW) src.pause();
        this.#pumpStdin();
      };
      const onEnd = (): void => {
        this.#stdinEnd = true;
        this.#pumpStdin();
      };
      src.on('data', onData);
      src.once('end', onEnd);
      this.#stdinDetach = () => {
        src.off('data', onData);
        src.off('end', onEnd);
        src.pause();
      };
      if (src.readableEnded || src.destroyed) onEnd();
    }
    this.#pumpStdin();
  }

  /** The stdin source failed: the process sees end of file (its status tells what it made of that). */
  #stdinFailed(err: Error): void {
    if (this.#state === 'done' || this.#stdinEnd) return;
    this.#o.guestLog.debug({ event: 'agent.stdin_error', err: err.message }, 'exec stdin source failed; sending end of file');
    this.#stdinEnd = true;
    this.#pumpStdin();
  }

  #pumpStdin(): void {
    const conn = this.#conn;
    if (this.#state !== 'open' || conn === null || this.#stdinEofSent) return;
    while (this.#stdinQueue.length > 0 && conn.bufferedToGuest < conn.highWater) {
      const room = STDIN_WINDOW - (this.#stdinSent - this.#stdinAcked);
      if (room <= 0) return;
      const head = this.#stdinQueue[0]!;
      const n = Math.min(head.length, room, MAX_DATA);
      conn.write(encodeStdin(head.subarray(0, n)));
      this.#stdinSent += n;
      this.#bytes.stdin += n;
      this.#stdinQueued -= n;
      if (n === head.length) this.#stdinQueue.shift();
      else this.#stdinQueue[0] = head.subarray(n);
    }
    if (this.#stdinQueue.length === 0 && this.#stdinEnd) {
      this.#stdinEofSent = true;
      this.#stdinDetach();
      conn.write(encodeStdinEof());
      return;
    }
    if (this.#stdinSource !== null && this.#stdinQueued < STDIN_WINDOW && this.#stdinSource.isPaused() && !this.#stdinEnd) this.#stdinSource.resume();
  }

  // ---- the end ----

  #fail(err: TsiboxError): void {
    this.#settle(null, err);
  }

  #settle(exit: ExecExit | null, err: TsiboxError | null): void {
    if (this.#state === 'done') return;
    const wasOpen = this.#state === 'open';
    this.#state = 'done';
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#stdinDetach();
    this.#stdinQueue = [];
    this.#stdinQueued = 0;
    for (const w of ['stdout', 'stderr'] as const) {
      const r = this[w];
      if (!r.destroyed && !r.readableEnded) r.push(null);
      // Whatever still arrives is consumed and dropped.
      this.#dropped[w] = true;
      this.#blocked[w] = false;
    }
    const conn = this.#conn;
    if (conn !== null && conn.state !== 'closed') {
      if (err === null) {
        // EXIT: the agent closes its side next; reset if it does not.
        this.#credit();
        conn.end();
        setTimeout(() => { conn.destroy('exec finished'); }, CLOSE_GRACE_MS).unref();
      } else {
        conn.destroy(err.code === 'AGENT_PROTOCOL' ? 'agent protocol error' : 'exec abandoned');
      }
    }
    if (err === null) {
      this.#resolveExit(exit!);
      if (this.#start === 'none') this.#rejectPid(new TsiboxError('AGENT_PROTOCOL', 'EXIT without a start result'));
    } else {
      this.#rejectPid(err);
      this.#rejectExit(err);
    }
    const log = this.#o.guestLog;
    if (log.enabled('info')) {
      log.info({
        event: 'agent.exec', argv0: this.#o.request.argv[0], pid: this.#guestPid || undefined,
        exitCode: exit?.exitCode, signal: exit?.signal, error: err?.code, connected: wasOpen || undefined,
        attempts: this.#attempts, ms: Math.round(performance.now() - this.#started),
        stdinBytes: this.#bytes.stdin, stdoutBytes: this.#bytes.stdout, stderrBytes: this.#bytes.stderr,
      }, err === null ? `exec ${this.#o.request.argv[0]}: status ${exit!.exitCode}` : `exec ${this.#o.request.argv[0]}: ${err.message}`);
    }
    this.#o.onDone(this);
  }
}
