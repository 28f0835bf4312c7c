// A guest exec agent in TypeScript, for tests and the fuzzer: it listens on a guest
// vsock port of a GuestVsock (the simulated guest driver, through the real
// VsockDevice) and speaks docs/exec-agent.md from the guest side. What a "process"
// does is a handler the test gives; the agent decodes and checks host frames with the
// same rules as native/init/agent.c and records what it saw.
import type { GuestSocket, GuestVsock } from '../vsock/guest.js';
import {
  AGENT_PORT, AgentErrorCode, AgentPeerFault, FrameDecoder, STDIN_WINDOW, decodeHostMessage, guestFrames, type HostMessage,
} from '../../../src/agent/protocol.js';

/** One exec as the fake agent sees it; the handler drives it. */
export interface FakeExec {
  readonly argv: string[];
  readonly env: Array<[string, string]>;
  readonly workdir: string;
  readonly user: { uid: number; gid: number } | undefined;
  readonly socket: GuestSocket;
  /** Stdin bytes the host sent and this exec has not acknowledged (never over the window). */
  readonly unacked: number;
  started(pid: number): void;
  startFailed(status: number, errno: number, message: string): void;
  stdout(data: Uint8Array | string): void;
  stderr(data: Uint8Array | string): void;
  exit(status: number, signal?: number): void;
  /** Acknowledge `n` stdin bytes (default: all unacknowledged). */
  ack(n?: number): void;
  /** Any bytes, unchecked (hostile tests). */
  raw(bytes: Uint8Array): void;
  /** close() the socket (SHUTDOWN both ways, after what was written) / reset it at once. */
  close(): void;
  reset(): void;
  onStdin: ((data: Buffer) => void) | null;
  onStdinEof: (() => void) | null;
  onSignal: ((signo: number) => void) | null;
}

export type FakeHandler = (x: FakeExec) => void;

export interface FakeAgentStats {
  connections: number;
  execs: number;
  /** Host messages the fake agent found malformed (the client must never send one). */
  badHostMessages: number;
  /** Largest stdin backlog a host built up (must stay within STDIN_WINDOW). */
  maxUnacked: number;
  /** Hosts that sent past the window (the connection was reset). */
  windowOverruns: number;
  signals: number[];
  /** SIGNALs for the main workload (first frame of a connection). */
  mainSignals: number[];
  /** WINSIZEs for the main workload's terminal, in the order they arrived. */
  winsizes: Array<{ cols: number; rows: number }>;
}

/**
 * Acknowledges stdin as it arrives unless `autoAck` is false. Without a handler for
 * argv[0] the exec gets START_FAILED 127 and EXIT 127. A connection whose first frame
 * is SIGNAL or WINSIZE is recorded and closed, as the real agent does; WINSIZE gets
 * ERROR BAD_MESSAGE unless `terminal` is true (the workload has a terminal).
 */
export class FakeAgent {
  readonly stats: FakeAgentStats = { connections: 0, execs: 0, badHostMessages: 0, maxUnacked: 0, windowOverruns: 0, signals: [], mainSignals: [], winsizes: [] };
  readonly #stop: () => void;
  readonly #handlers: Map<string, FakeHandler>;
  readonly #fallback: FakeHandler | undefined;
  readonly #autoAck: boolean;
  readonly #terminal: boolean;
  readonly sockets = new Set<GuestSocket>();

  constructor(guest: GuestVsock, opts: { port?: number; handlers?: Record<string, FakeHandler>; fallback?: FakeHandler; autoAck?: boolean; terminal?: boolean } = {}) {
    this.#handlers = new Map(Object.entries(opts.handlers ?? {}));
    this.#fallback = opts.fallback;
    this.#autoAck = opts.autoAck ?? true;
    this.#terminal = opts.terminal ?? false;
    this.#stop = guest.listen(opts.port ?? AGENT_PORT, (s) => { this.#serve(s); });
  }

  /** Stops listening (open connections stay). */
  close(): void {
    this.#stop();
  }

  #serve(s: GuestSocket): void {
    this.stats.connections++;
    this.sockets.add(s);
    s.on('close', () => { this.sockets.delete(s); });
    const dec = new FrameDecoder('host');
    let exec: (FakeExec & { feed(m: HostMessage): void }) | null = null;
    s.on('data', (d) => {
      dec.push(d);
      for (;;) {
        const f = dec.next();
        if (f === null) return;
        const m = f instanceof AgentPeerFault ? f : decodeHostMessage(f);
        if (exec === null && !(m instanceof AgentPeerFault) && (m.type === 'signal' || m.type === 'winsize')) {
          // About the main workload: done with this one frame.
          if (m.type === 'signal') this.stats.mainSignals.push(m.signo);
          else if (this.#terminal) this.stats.winsizes.push({ cols: m.cols, rows: m.rows });
          else {
            void s.write(guestFrames.error(AgentErrorCode.BAD_MESSAGE, 'WINSIZE: the workload has no terminal (tsibox.tty)')).catch(() => {}).then(() => { if (s.state !== 'closed') s.close(); });
            return;
          }
          s.close();
          return;
        }
        if (m instanceof AgentPeerFault || (exec === null) !== (m.type === 'exec')) {
          this.stats.badHostMessages++;
          s.reset();
          return;
        }
        if (m.type === 'exec') {
          exec = this.#newExec(s, m);
          continue;
        }
        exec!.feed(m);
        if (s.state === 'closed') return;
      }
    });
  }

  #newExec(s: GuestSocket, m: Extract<HostMessage, { type: 'exec' }>): FakeExec & { feed(m: HostMessage): void } {
    this.stats.execs++;
    const stats = this.stats;
    const autoAck = this.#autoAck;
    let unacked = 0;
    let eof = false;
    // Writes wait for guest credit; a close must not overtake them (the real agent
    // closes once everything was sent).
    let last: Promise<void> = Promise.resolve();
    const send = (b: Uint8Array): void => { if (s.state !== 'closed') last = s.write(b).catch(() => {}); };
    const closeAfter = (): void => { void last.then(() => { if (s.state !== 'closed') s.close(); }); };
    const x: FakeExec & { feed(m: HostMessage): void } = {
      argv: m.argv, env: m.env, workdir: m.workdir, user: m.user, socket: s,
      get unacked() { return unacked; },
      started: (pid) => send(guestFrames.started(pid)),
      startFailed: (status, errno, message) => send(guestFrames.startFailed(status, errno, message)),
      stdout: (d) => send(guestFrames.stdout(typeof d === 'string' ? Buffer.from(d) : d)),
      stderr: (d) => send(guestFrames.stderr(typeof d === 'string' ? Buffer.from(d) : d)),
      exit: (status, signal = 0) => {
        send(guestFrames.exit(status, signal));
        closeAfter();
      },
      ack: (n = unacked) => {
        const k = Math.min(n, unacked);
        if (k <= 0) return;
        unacked -= k;
        send(guestFrames.stdinAck(k));
      },
      raw: (b) => send(b),
      close: closeAfter,
      reset: () => s.reset(),
      onStdin: null,
      onStdinEof: null,
      onSignal: null,
      feed(h: HostMessage): void {
        switch (h.type) {
          case 'stdin':
            if (eof) { stats.badHostMessages++; s.reset(); return; }
            unacked += h.data.length;
            if (unacked > stats.maxUnacked) stats.maxUnacked = unacked;
            if (unacked > STDIN_WINDOW) { stats.windowOverruns++; s.reset(); return; }
            x.onStdin?.(h.data);
            if (autoAck) x.ack(h.data.length);
            return;
          case 'stdin-eof':
            if (eof) { stats.badHostMessages++; s.reset(); return; }
            eof = true;
            x.onStdinEof?.();
            return;
          case 'signal':
            stats.signals.push(h.signo);
            x.onSignal?.(h.signo);
            return;
          case 'exec':
          case 'winsize':
            stats.badHostMessages++;
            s.reset();
        }
      },
    };
    const handler = this.#handlers.get(m.argv[0] ?? '') ?? this.#fallback;
    if (handler === undefined) {
      x.startFailed(127, 2, `exec ${m.argv[0]}: No such file or directory`);
      x.stderr(`tsibox-agent: exec ${m.argv[0]}: No such file or directory\n`);
      x.exit(127);
    } else {
      handler(x);
    }
    return x;
  }
}
