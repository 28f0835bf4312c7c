// The guest exec agent's wire protocol (docs/exec-agent.md), version 1. One vsock
// stream connection per exec, carrying frames both ways:
//
//   offset size
//   0      2    magic 'E' 'X' (0x45 0x58)
//   2      1    version (1)
//   3      1    type
//   4      4    payload length, u32 little-endian
//   8      len  payload
//
// Every length is checked against its type's limit on the header, before a byte of
// the payload is buffered. Decoders never throw on peer bytes: they return an
// AgentPeerFault saying what was wrong. The C side is native/init/agent.c.
import { TsiboxError } from '../errors.js';
import { MAX_TERMINAL_DIM, checkTerminalSize } from '../guest/cmdline.js';

export const AGENT_VERSION = 1;
/** Guest vsock port the agent listens on (native/init/agent.h AGENT_PORT). */
export const AGENT_PORT = 52;
export const HEADER_SIZE = 8;
const MAGIC0 = 0x45; // 'E'
const MAGIC1 = 0x58; // 'X'

/** Largest STDIN / STDOUT / STDERR payload (bytes). */
export const MAX_DATA = 65536;
/** Largest EXEC payload: flags, ids, counts, workdir, argv and env (bytes). */
export const MAX_EXEC_PAYLOAD = 256 * 1024;
/** The most stdin bytes the host may have sent and not had acknowledged (bytes). */
export const STDIN_WINDOW = 128 * 1024;
/** Most argv entries, and most env entries, in one EXEC. */
export const MAX_ARGS = 4096;
/** Longest START_FAILED / ERROR message (bytes of UTF-8). */
export const MAX_TEXT = 512;
/** Fixed part of EXEC: flags, uid, gid, argc, envc (u32 each). */
export const EXEC_FIXED = 20;
/** EXEC flag: uid/gid are given (else the workload's user). */
export const EXEC_F_USER = 1;

/** Message types. 1..15 travel host → guest, 16.. guest → host. */
export const MsgType = {
  EXEC: 1,
  STDIN: 2,
  STDIN_EOF: 3,
  SIGNAL: 4,
  WINSIZE: 5,
  STARTED: 16,
  START_FAILED: 17,
  STDOUT: 18,
  STDERR: 19,
  STDIN_ACK: 20,
  EXIT: 21,
  ERROR: 22,
} as const;

/** ERROR codes the agent sends. */
export const AgentErrorCode = {
  /** The agent runs its maximum number of execs (64). */
  BUSY: 1,
  /** The agent rejected a message of ours (malformed, out of order, past the window). */
  BAD_MESSAGE: 2,
  /** No EXEC within 10 s of connecting. */
  TIMEOUT: 3,
  /** The agent ran out of memory for this connection. */
  INTERNAL: 4,
} as const;

/** Payload length limits per type, [min, max] bytes (both directions). */
const LIMITS: Record<number, readonly [number, number]> = {
  [MsgType.EXEC]: [EXEC_FIXED, MAX_EXEC_PAYLOAD],
  [MsgType.STDIN]: [0, MAX_DATA],
  [MsgType.STDIN_EOF]: [0, 0],
  [MsgType.SIGNAL]: [4, 4],
  [MsgType.WINSIZE]: [8, 8],
  [MsgType.STARTED]: [4, 4],
  [MsgType.START_FAILED]: [8, 8 + MAX_TEXT],
  [MsgType.STDOUT]: [1, MAX_DATA],
  [MsgType.STDERR]: [1, MAX_DATA],
  [MsgType.STDIN_ACK]: [4, 4],
  [MsgType.EXIT]: [8, 8],
  [MsgType.ERROR]: [4, 4 + MAX_TEXT],
};

const HOST_TYPES: ReadonlySet<number> = new Set([MsgType.EXEC, MsgType.STDIN, MsgType.STDIN_EOF, MsgType.SIGNAL, MsgType.WINSIZE]);
const GUEST_TYPES: ReadonlySet<number> = new Set([
  MsgType.STARTED, MsgType.START_FAILED, MsgType.STDOUT, MsgType.STDERR, MsgType.STDIN_ACK, MsgType.EXIT, MsgType.ERROR,
]);

/** Linux (x86-64, generic) signal numbers by name; the guest is always Linux. */
export const SIGNAL_NUMBERS: Readonly<Partial<Record<NodeJS.Signals, number>>> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGIOT: 6, SIGBUS: 7, SIGFPE: 8, SIGKILL: 9,
  SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15, SIGSTKFLT: 16, SIGCHLD: 17,
  SIGCONT: 18, SIGSTOP: 19, SIGTSTP: 20, SIGTTIN: 21, SIGTTOU: 22, SIGURG: 23, SIGXCPU: 24, SIGXFSZ: 25,
  SIGVTALRM: 26, SIGPROF: 27, SIGWINCH: 28, SIGIO: 29, SIGPOLL: 29, SIGPWR: 30, SIGSYS: 31,
};

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>();
for (const [name, n] of Object.entries(SIGNAL_NUMBERS) as Array<[NodeJS.Signals, number]>) {
  if (!SIGNAL_NAMES.has(n) && name !== 'SIGIOT' && name !== 'SIGPOLL') SIGNAL_NAMES.set(n, name);
}

/** The signal's name for a Linux signal number (undefined for real-time and unknown ones). */
export function signalName(n: number): NodeJS.Signals | undefined {
  return SIGNAL_NAMES.get(n);
}

/** A Linux signal number 1..64 for a name or number; throws INVALID_ARGUMENT otherwise. */
export function signalNumber(sig: NodeJS.Signals | number): number {
  const n = typeof sig === 'number' ? sig : SIGNAL_NUMBERS[sig];
  if (n === undefined || !Number.isInteger(n) || n < 1 || n > 64) {
    throw new TsiboxError('INVALID_ARGUMENT', `${String(sig)} is not a Linux signal (a name, or 1..64)`);
  }
  return n;
}

/** What the peer (the guest agent, or a host client) did wrong; decoders return it as a value instead of throwing, as for any hostile input. */
export class AgentPeerFault {
  constructor(readonly reason: string) {}
}

/** One frame: its type and payload (a view of the received bytes or a copy). */
export interface Frame {
  type: number;
  payload: Buffer;
}

function frame(type: number, payload: Uint8Array = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  b[0] = MAGIC0;
  b[1] = MAGIC1;
  b[2] = AGENT_VERSION;
  b[3] = type;
  b.writeUInt32LE(payload.length, 4);
  b.set(payload, HEADER_SIZE);
  return b;
}

function u32s(...v: number[]): Buffer {
  const b = Buffer.alloc(4 * v.length);
  v.forEach((x, i) => { b.writeUInt32LE(x >>> 0, 4 * i); });
  return b;
}

/**
 * Splits a byte stream into frames. `push()` bytes as they arrive, then `next()` until
 * it returns null. Holds at most one partial frame (≤ HEADER_SIZE + the largest
 * payload its direction allows); a header that breaks the rules (magic, version, a
 * type not sent in this direction, a length outside the type's limits) yields an
 * AgentPeerFault, after which the decoder stays failed.
 */
export class FrameDecoder {
  readonly #types: ReadonlySet<number>;
  #buf: Buffer = Buffer.alloc(0);
  #failed: AgentPeerFault | null = null;

  /** `from`: who sends the frames this decoder reads. */
  constructor(from: 'guest' | 'host') {
    this.#types = from === 'guest' ? GUEST_TYPES : HOST_TYPES;
  }

  /** Bytes held (a partial frame). */
  get buffered(): number {
    return this.#buf.length;
  }

  push(chunk: Uint8Array): void {
    if (this.#failed !== null || chunk.length === 0) return;
    const c = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    this.#buf = this.#buf.length === 0 ? c : Buffer.concat([this.#buf, c]);
  }

  next(): Frame | AgentPeerFault | null {
    if (this.#failed !== null) return this.#failed;
    const b = this.#buf;
    if (b.length < HEADER_SIZE) return null;
    const bad = checkHeader(b, this.#types);
    if (bad !== null) {
      this.#failed = bad;
      this.#buf = Buffer.alloc(0);
      return bad;
    }
    const len = b.readUInt32LE(4);
    if (b.length < HEADER_SIZE + len) return null;
    const payload = b.subarray(HEADER_SIZE, HEADER_SIZE + len);
    this.#buf = b.length === HEADER_SIZE + len ? Buffer.alloc(0) : b.subarray(HEADER_SIZE + len);
    return { type: b[3]!, payload };
  }
}

function checkHeader(b: Buffer, types: ReadonlySet<number>): AgentPeerFault | null {
  if (b[0] !== MAGIC0 || b[1] !== MAGIC1) return new AgentPeerFault(`bad magic 0x${b.readUInt16BE(0).toString(16).padStart(4, '0')}`);
  if (b[2] !== AGENT_VERSION) return new AgentPeerFault(`unsupported protocol version ${b[2]}`);
  const type = b[3]!;
  if (!types.has(type)) return new AgentPeerFault(`unknown message type ${type}`);
  const len = b.readUInt32LE(4);
  const [min, max] = LIMITS[type]!;
  if (len < min || len > max) return new AgentPeerFault(`message type ${type}: length ${len} outside ${min}..${max}`);
  return null;
}

// ---- host → guest ----

/** What EXEC carries (docs/exec-agent.md §3). */
export interface ExecRequest {
  /** argv, argv[0] included (searched in PATH when it has no '/'). 1..4096 entries, no NUL bytes. */
  argv: readonly string[];
  /** Entries added to (or replacing those of) the workload's environment. */
  env?: Readonly<Record<string, string>>;
  /** Working directory (created when missing); default: the workload's. */
  workdir?: string;
  /** Run as uid/gid (default: the workload's user). */
  user?: { uid: number; gid?: number };
}

function cstr(s: string, what: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.includes(0)) throw new TsiboxError('INVALID_ARGUMENT', `${what} contains a NUL byte`);
  return Buffer.concat([b, Buffer.alloc(1)]);
}

/** EXEC. Throws INVALID_ARGUMENT for what the agent would refuse (empty argv, NUL bytes, bad env names, too large). */
export function encodeExec(req: ExecRequest): Buffer {
  const { argv } = req;
  if (!Array.isArray(argv) || argv.length === 0) throw new TsiboxError('INVALID_ARGUMENT', 'argv must name a program');
  if (argv.length > MAX_ARGS) throw new TsiboxError('INVALID_ARGUMENT', `argv has ${argv.length} entries, the limit is ${MAX_ARGS}`);
  const env = Object.entries(req.env ?? {});
  if (env.length > MAX_ARGS) throw new TsiboxError('INVALID_ARGUMENT', `env has ${env.length} entries, the limit is ${MAX_ARGS}`);
  let flags = 0;
  let uid = 0;
  let gid = 0;
  if (req.user !== undefined) {
    uid = req.user.uid;
    gid = req.user.gid ?? req.user.uid;
    for (const id of [uid, gid]) {
      if (!Number.isInteger(id) || id < 0 || id > 0xffff_fffe) throw new TsiboxError('INVALID_ARGUMENT', 'uid/gid must be integers 0..2^32-2');
    }
    flags |= EXEC_F_USER;
  }
  const parts: Buffer[] = [u32s(flags, uid, gid, argv.length, env.length), cstr(req.workdir ?? '', 'workdir')];
  for (const a of argv) {
    if (typeof a !== 'string') throw new TsiboxError('INVALID_ARGUMENT', 'argv entries must be strings');
    parts.push(cstr(a, 'an argv entry'));
  }
  for (const [k, v] of env) {
    if (k === '' || k.includes('=')) throw new TsiboxError('INVALID_ARGUMENT', `bad environment name ${JSON.stringify(k)}`);
    if (typeof v !== 'string') throw new TsiboxError('INVALID_ARGUMENT', `env ${k}: the value must be a string`);
    parts.push(cstr(`${k}=${v}`, `env ${k}`));
  }
  const payload = Buffer.concat(parts);
  if (payload.length > MAX_EXEC_PAYLOAD) {
    throw new TsiboxError('INVALID_ARGUMENT', `argv, env and workdir take ${payload.length} bytes, the limit is ${MAX_EXEC_PAYLOAD}`);
  }
  return frame(MsgType.EXEC, payload);
}

/** STDIN with up to MAX_DATA bytes (split larger data first). */
export function encodeStdin(data: Uint8Array): Buffer {
  if (data.length > MAX_DATA) throw new TsiboxError('INVALID_ARGUMENT', `STDIN carries at most ${MAX_DATA} bytes`);
  return frame(MsgType.STDIN, data);
}

export function encodeStdinEof(): Buffer {
  return frame(MsgType.STDIN_EOF);
}

export function encodeSignal(signo: number): Buffer {
  return frame(MsgType.SIGNAL, u32s(signo));
}

/**
 * WINSIZE, the first and only frame of its connection: the main workload's terminal
 * gets this window size. Throws INVALID_ARGUMENT unless both are integers 1..65535.
 */
export function encodeWinsize(cols: number, rows: number): Buffer {
  checkTerminalSize({ cols, rows }, 'WINSIZE');
  return frame(MsgType.WINSIZE, u32s(cols, rows));
}

/** A host message as the agent reads it (for simulators and tests). */
export type HostMessage =
  | { type: 'exec'; argv: string[]; env: Array<[string, string]>; workdir: string; user?: { uid: number; gid: number } }
  | { type: 'stdin'; data: Buffer }
  | { type: 'stdin-eof' }
  | { type: 'signal'; signo: number }
  | { type: 'winsize'; cols: number; rows: number };

/** Decodes one host frame the way agent.c does (same checks). */
export function decodeHostMessage(f: Frame): HostMessage | AgentPeerFault {
  const p = f.payload;
  switch (f.type) {
    case MsgType.EXEC: {
      if (p.length < EXEC_FIXED) return new AgentPeerFault('EXEC too short');
      const flags = p.readUInt32LE(0);
      const argc = p.readUInt32LE(12);
      const envc = p.readUInt32LE(16);
      if ((flags & ~EXEC_F_USER) !== 0) return new AgentPeerFault('EXEC: unknown flags');
      if (argc < 1 || argc > MAX_ARGS || envc > MAX_ARGS) return new AgentPeerFault('EXEC: argc must be 1..4096 and envc 0..4096');
      let off = EXEC_FIXED;
      const take = (): string | null => {
        if (off >= p.length) return null;
        const nul = p.indexOf(0, off);
        if (nul < 0) return null;
        const s = p.toString('utf8', off, nul);
        off = nul + 1;
        return s;
      };
      const workdir = take();
      if (workdir === null) return new AgentPeerFault('EXEC: workdir is not a NUL-terminated string');
      const argv: string[] = [];
      for (let i = 0; i < argc; i++) {
        const a = take();
        if (a === null) return new AgentPeerFault('EXEC: argv is cut short');
        argv.push(a);
      }
      const env: Array<[string, string]> = [];
      for (let i = 0; i < envc; i++) {
        const kv = take();
        if (kv === null) return new AgentPeerFault('EXEC: env is cut short');
        const eq = kv.indexOf('=');
        if (eq <= 0) return new AgentPeerFault('EXEC: an env entry is not KEY=VALUE');
        env.push([kv.slice(0, eq), kv.slice(eq + 1)]);
      }
      if (off !== p.length) return new AgentPeerFault('EXEC: bytes after the last string');
      const msg: HostMessage = { type: 'exec', argv, env, workdir };
      if ((flags & EXEC_F_USER) !== 0) msg.user = { uid: p.readUInt32LE(4), gid: p.readUInt32LE(8) };
      return msg;
    }
    case MsgType.STDIN:
      return { type: 'stdin', data: p };
    case MsgType.STDIN_EOF:
      return { type: 'stdin-eof' };
    case MsgType.SIGNAL: {
      const signo = p.readUInt32LE(0);
      if (signo < 1 || signo > 64) return new AgentPeerFault(`SIGNAL ${signo} out of range`);
      return { type: 'signal', signo };
    }
    case MsgType.WINSIZE: {
      const cols = p.readUInt32LE(0);
      const rows = p.readUInt32LE(4);
      if (cols < 1 || cols > MAX_TERMINAL_DIM || rows < 1 || rows > MAX_TERMINAL_DIM) return new AgentPeerFault(`WINSIZE ${cols}x${rows} out of range`);
      return { type: 'winsize', cols, rows };
    }
    default:
      return new AgentPeerFault(`unknown message type ${f.type}`);
  }
}

// ---- guest → host ----

/** A guest message as the host reads it. */
export type GuestMessage =
  | { type: 'started'; pid: number }
  | { type: 'start-failed'; status: number; errno: number; message: string }
  | { type: 'stdout' | 'stderr'; data: Buffer }
  | { type: 'stdin-ack'; bytes: number }
  | { type: 'exit'; status: number; signal: number }
  | { type: 'error'; code: number; message: string };

/**
 * Decodes one guest frame (the decoder already checked type and length). Values
 * outside their ranges are an AgentPeerFault: a pid of 0, a start-failure status
 * other than 125..127, an exit status over 255, a signal over 64 or one that does not
 * match the status (128+N), an acknowledgement of 0 or over the window.
 */
export function decodeGuestMessage(f: Frame): GuestMessage | AgentPeerFault {
  const p = f.payload;
  const text = (from: number): string => p.toString('utf8', from);
  switch (f.type) {
    case MsgType.STARTED: {
      const pid = p.readUInt32LE(0);
      if (pid < 1 || pid > 0x3fff_ffff) return new AgentPeerFault(`STARTED with pid ${pid}`);
      return { type: 'started', pid };
    }
    case MsgType.START_FAILED: {
      const status = p.readUInt32LE(0);
      if (status < 125 || status > 127) return new AgentPeerFault(`START_FAILED with status ${status}`);
      return { type: 'start-failed', status, errno: p.readUInt32LE(4), message: text(8) };
    }
    case MsgType.STDOUT:
      return { type: 'stdout', data: p };
    case MsgType.STDERR:
      return { type: 'stderr', data: p };
    case MsgType.STDIN_ACK: {
      const bytes = p.readUInt32LE(0);
      if (bytes < 1 || bytes > STDIN_WINDOW) return new AgentPeerFault(`STDIN_ACK of ${bytes} bytes`);
      return { type: 'stdin-ack', bytes };
    }
    case MsgType.EXIT: {
      const status = p.readUInt32LE(0);
      const signal = p.readUInt32LE(4);
      if (status > 255 || signal > 64 || (signal !== 0 && status !== 128 + signal)) {
        return new AgentPeerFault(`EXIT with status ${status} and signal ${signal}`);
      }
      return { type: 'exit', status, signal };
    }
    case MsgType.ERROR:
      return { type: 'error', code: p.readUInt32LE(0), message: text(4) };
    default:
      return new AgentPeerFault(`unknown message type ${f.type}`);
  }
}

/** Guest-side encoders (the agent simulator, tests, the fuzzer). */
export const guestFrames = {
  started: (pid: number): Buffer => frame(MsgType.STARTED, u32s(pid)),
  startFailed: (status: number, errno: number, message: string): Buffer =>
    frame(MsgType.START_FAILED, Buffer.concat([u32s(status, errno), Buffer.from(message, 'utf8').subarray(0, MAX_TEXT)])),
  stdout: (data: Uint8Array): Buffer => frame(MsgType.STDOUT, data),
  stderr: (data: Uint8Array): Buffer => frame(MsgType.STDERR, data),
  stdinAck: (bytes: number): Buffer => frame(MsgType.STDIN_ACK, u32s(bytes)),
  exit: (status: number, signal = 0): Buffer => frame(MsgType.EXIT, u32s(status, signal)),
  error: (code: number, message: string): Buffer => frame(MsgType.ERROR, Buffer.concat([u32s(code), Buffer.from(message, 'utf8').subarray(0, MAX_TEXT)])),
  /** Any type and payload, unchecked (hostile tests). */
  raw: (type: number, payload: Uint8Array = Buffer.alloc(0)): Buffer => frame(type, payload),
};
