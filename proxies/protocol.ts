// The TSI wire protocol (docs/tsi-protocol.md), version 1: fixed little-endian structs
// behind an 8-byte header. Encoders build messages; decoders never throw on peer bytes,
// they return a GuestErrno with the negative errno the peer gets back.
import { ipv4Bytes, ipv6Bytes, canonicalAddress } from '../netstack/address.js';

export { ipv4Bytes, ipv6Bytes, canonicalAddress };

export const TSI_VERSION = 1;
/** "TI" little-endian. */
export const TSI_MAGIC = 0x4954;
export const HDR_SIZE = 8;
export const SOCKADDR_SIZE = 24;
/** Largest UDP payload carried in one DGRAM message. */
/** Largest UDP payload: 65527 over IPv6 (65535 - 8), 65507 over IPv4 (also - 20), as Linux. */
export const MAX_DGRAM_PAYLOAD = 65527;
export const MAX_DGRAM_PAYLOAD_V4 = 65507;
/** Largest message of any kind (DGRAM with the largest payload). */
export const MAX_MESSAGE = HDR_SIZE + SOCKADDR_SIZE + MAX_DGRAM_PAYLOAD;
/** AF_UNIX sun_path length. */
export const MAX_UNIX_PATH = 108;

/**
 * Guest vsock source ports at or below this are privileged: Linux lets only
 * CAP_NET_BIND_SERVICE bind them (af_vsock.c, LAST_RESERVED_PORT), and our guest kernel
 * binds its control socket, and the datagram sockets of bound UDP sockets, there.
 * Registering a listener or exposing a published UDP port needs one (docs/security.md).
 */
export const MAX_PRIVILEGED_GUEST_PORT = 1023;

/** Host vsock ports (on CID 2) where the TSI services listen. */
export const TsiPort = {
  CONTROL: 1023,
  STREAM: 1024,
  DGRAM: 1025,
} as const;

export const TsiOp = {
  CONNECT: 1,
  CONNECT_RESULT: 2,
  ACCEPT: 3,
  DGRAM_OPEN: 4,
  DGRAM_OPEN_RESULT: 5,
  DGRAM: 6,
  DGRAM_ERROR: 7,
  HELLO: 16,
  HELLO_RESULT: 17,
  LISTEN: 18,
  LISTEN_RESULT: 19,
  UNLISTEN: 20,
  UNLISTEN_RESULT: 21,
  ERROR: 31,
} as const;

/** Fixed sizes of each message (CONNECT and DGRAM have a variable tail). */
export const MessageSize: Record<number, number> = {
  [TsiOp.CONNECT]: 40,
  [TsiOp.CONNECT_RESULT]: 64,
  [TsiOp.ACCEPT]: 64,
  [TsiOp.DGRAM_OPEN]: 40,
  [TsiOp.DGRAM_OPEN_RESULT]: 40,
  [TsiOp.DGRAM]: 32,
  [TsiOp.DGRAM_ERROR]: 40,
  [TsiOp.HELLO]: 16,
  [TsiOp.HELLO_RESULT]: 24,
  [TsiOp.LISTEN]: 48,
  [TsiOp.LISTEN_RESULT]: 48,
  [TsiOp.UNLISTEN]: 16,
  [TsiOp.UNLISTEN_RESULT]: 16,
  [TsiOp.ERROR]: 16,
};

/** Linux address families as the guest kernel numbers them. */
export const AF = { UNSPEC: 0, UNIX: 1, INET: 2, INET6: 10 } as const;
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;

/** Linux errno values (x86-64 and generic) used on the wire, positive here. */
export const Errno = {
  EPERM: 1, ENOENT: 2, EINTR: 4, EIO: 5, EBADF: 9, EAGAIN: 11, ENOMEM: 12, EACCES: 13, EBUSY: 16, EINVAL: 22,
  EMFILE: 24, ENAMETOOLONG: 36, EPROTO: 71, EMSGSIZE: 90, EPROTOTYPE: 91, EPROTONOSUPPORT: 93, EOPNOTSUPP: 95,
  EAFNOSUPPORT: 97, EADDRINUSE: 98, EADDRNOTAVAIL: 99, ENETDOWN: 100, ENETUNREACH: 101, ECONNABORTED: 103,
  ECONNRESET: 104, ENOBUFS: 105, EDESTADDRREQ: 89, ETIMEDOUT: 110, ECONNREFUSED: 111, EHOSTUNREACH: 113,
} as const;

/** Node error code ('ECONNREFUSED') → Linux errno; unknown codes become EIO. */
export function errnoOf(err: unknown): number {
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && code in Errno) return Errno[code as keyof typeof Errno];
  return Errno.EIO;
}

export function errnoName(n: number): string {
  const e = Math.abs(n);
  for (const [k, v] of Object.entries(Errno)) if (v === e) return k;
  return `errno ${e}`;
}

export type SockAddr =
  | { family: 'ipv4' | 'ipv6'; address: string; port: number; scopeId?: number }
  | { family: 'unix'; path: string }
  | { family: 'none' };

/**
 * What a guest's syscall gets back (a Linux errno) and why, for the log. Decoders and
 * proxies return it as a value — a malformed or refused request is an expected
 * outcome on a hostile input, not an exception (like netstack's ParseResult).
 */
export class GuestErrno {
  constructor(readonly errno: number, readonly reason: string) {}
}

// ---- header ----

export interface TsiMessage {
  op: number;
  version: number;
  /** The whole message, header included. */
  bytes: Buffer;
  view: DataView;
}

export function header(op: number, len: number): Buffer {
  const b = Buffer.alloc(len);
  b.writeUInt16LE(TSI_MAGIC, 0);
  b[2] = TSI_VERSION;
  b[3] = op;
  b.writeUInt32LE(len, 4);
  return b;
}

/**
 * Splits a byte stream into frames. Each message carries its own length, so the same
 * reader serves STREAM and SEQPACKET connections. After an error the reader is dead.
 */
export class TsiMessageReader {
  readonly maxLen: number;
  #chunks: Buffer[] = [];
  #bytes = 0;
  #error: GuestErrno | null = null;

  constructor(maxLen = MAX_MESSAGE) {
    this.maxLen = maxLen;
  }

  get buffered(): number {
    return this.#bytes;
  }

  push(data: Buffer): void {
    if (this.#error !== null || data.length === 0) return;
    this.#chunks.push(data);
    this.#bytes += data.length;
  }

  /** The next complete frame, null when more bytes are needed, or the error that ended the stream. */
  next(): TsiMessage | GuestErrno | null {
    if (this.#error !== null) return this.#error;
    if (this.#bytes < HDR_SIZE) return null;
    const head = this.#peek(HDR_SIZE);
    const magic = head.readUInt16LE(0);
    const version = head[2]!;
    const op = head[3]!;
    const len = head.readUInt32LE(4);
    if (magic !== TSI_MAGIC) return this.#fail(Errno.EPROTO, `bad magic 0x${magic.toString(16)}`);
    if (version !== TSI_VERSION) return this.#fail(Errno.EPROTONOSUPPORT, `protocol version ${version}, this host speaks ${TSI_VERSION}`);
    if (len < HDR_SIZE || len > this.maxLen) return this.#fail(Errno.EMSGSIZE, `message length ${len} outside ${HDR_SIZE}..${this.maxLen}`);
    if (this.#bytes < len) return null;
    const bytes = this.#take(len);
    return { op, version, bytes, view: new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength) };
  }

  /** Bytes after the last frame taken (a stream switching to raw data). */
  rest(): Buffer {
    const b = this.#take(this.#bytes);
    return b;
  }

  #fail(errno: number, reason: string): GuestErrno {
    this.#error = new GuestErrno(errno, reason);
    this.#chunks = [];
    this.#bytes = 0;
    return this.#error;
  }

  #peek(n: number): Buffer {
    const first = this.#chunks[0]!;
    if (first.length >= n) return first.subarray(0, n);
    return Buffer.concat(this.#chunks).subarray(0, n);
  }

  #take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.#chunks[0]!;
    if (first.length === n) {
      this.#chunks.shift();
      this.#bytes -= n;
      return first;
    }
    if (first.length > n) {
      this.#chunks[0] = first.subarray(n);
      this.#bytes -= n;
      return first.subarray(0, n);
    }
    const all = Buffer.concat(this.#chunks);
    const out = all.subarray(0, n);
    this.#chunks = all.length > n ? [all.subarray(n)] : [];
    this.#bytes -= n;
    return out;
  }
}

/** Checks a frame's length against its op's fixed size (exact, or a minimum with a tail). */
export function checkSize(f: TsiMessage): GuestErrno | null {
  const size = MessageSize[f.op];
  if (size === undefined) return new GuestErrno(Errno.EOPNOTSUPP, `unknown op ${f.op}`);
  const variable = f.op === TsiOp.CONNECT || f.op === TsiOp.DGRAM;
  if (variable ? f.bytes.length < size : f.bytes.length !== size) {
    return new GuestErrno(Errno.EINVAL, `op ${f.op} is ${f.bytes.length} bytes, expected ${variable ? 'at least ' : ''}${size}`);
  }
  return null;
}

// ---- addresses ----

export function encodeSockAddr(a: SockAddr, out: Buffer, at: number): void {
  out.fill(0, at, at + SOCKADDR_SIZE);
  if (a.family === 'none' || a.family === 'unix') {
    out.writeUInt16LE(a.family === 'unix' ? AF.UNIX : AF.UNSPEC, at);
    return;
  }
  out.writeUInt16LE(a.family === 'ipv4' ? AF.INET : AF.INET6, at);
  out.writeUInt16LE(a.port, at + 2);
  out.writeUInt32LE(a.scopeId ?? 0, at + 4);
  const bytes = a.family === 'ipv4' ? ipv4Bytes(a.address) : ipv6Bytes(a.address);
  for (let i = 0; i < bytes.length; i++) out[at + 8 + i] = bytes[i]!;
}

/** Decodes an inet sockaddr (AF_INET/AF_INET6; AF_UNSPEC as 'none'). */
export function decodeSockAddr(b: Buffer, at: number): SockAddr | GuestErrno {
  const family = b.readUInt16LE(at);
  const port = b.readUInt16LE(at + 2);
  const scopeId = b.readUInt32LE(at + 4);
  if (family === AF.UNSPEC) return { family: 'none' };
  if (family === AF.INET) {
    for (let i = 12; i < 24; i++) if (b[at + i] !== 0) return new GuestErrno(Errno.EINVAL, 'AF_INET address with nonzero padding');
    if (scopeId !== 0) return new GuestErrno(Errno.EINVAL, 'AF_INET address with a scope id');
    return { family: 'ipv4', address: `${b[at + 8]}.${b[at + 9]}.${b[at + 10]}.${b[at + 11]}`, port };
  }
  if (family === AF.INET6) {
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) groups.push(b.readUInt16BE(at + 8 + 2 * i).toString(16));
    const a: SockAddr = { family: 'ipv6', address: groups.join(':'), port };
    if (scopeId !== 0) a.scopeId = scopeId;
    return a;
  }
  if (family === AF.UNIX) {
    // Paths travel only in the CONNECT tail; a fixed sockaddr says "unix" and nothing else.
    for (let i = 2; i < 24; i++) if (b[at + i] !== 0) return new GuestErrno(Errno.EINVAL, 'AF_UNIX sockaddr with nonzero fields');
    return { family: 'unix', path: '' };
  }
  return new GuestErrno(Errno.EAFNOSUPPORT, `address family ${family}`);
}

/** A node address info ({address, family, port}) as a SockAddr. */
export function sockAddrOf(info: { address?: string | undefined; family?: string | number | undefined; port?: number | undefined } | null | undefined): SockAddr {
  if (info?.address === undefined || info.port === undefined) return { family: 'none' };
  const c = canonicalAddress(info.address);
  if (c === null) return { family: 'none' };
  return { family: c.family, address: c.address, port: info.port };
}

export function formatAddr(a: SockAddr): string {
  if (a.family === 'none') return '-';
  if (a.family === 'unix') return `unix:${a.path}`;
  return a.family === 'ipv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

// ---- messages ----

export interface ConnectRequest {
  sockType: number;
  target: SockAddr;
}

export function encodeConnect(target: SockAddr, sockType = SOCK_STREAM): Buffer {
  const path = target.family === 'unix' ? Buffer.from(target.path) : Buffer.alloc(0);
  const b = header(TsiOp.CONNECT, 40 + path.length);
  b.writeUInt16LE(sockType, 8);
  b.writeUInt16LE(path.length, 10);
  encodeSockAddr(target, b, 16);
  path.copy(b, 40);
  return b;
}

export function decodeConnect(f: TsiMessage): ConnectRequest | GuestErrno {
  if (f.op !== TsiOp.CONNECT) return new GuestErrno(Errno.EPROTO, `expected CONNECT, got op ${f.op}`);
  const bad = checkSize(f);
  if (bad) return bad;
  const b = f.bytes;
  const sockType = b.readUInt16LE(8);
  const pathLen = b.readUInt16LE(10);
  if (b.readUInt32LE(12) !== 0) return new GuestErrno(Errno.EINVAL, 'reserved field is not zero');
  if (sockType !== SOCK_STREAM) return new GuestErrno(Errno.EPROTOTYPE, `socket type ${sockType} over the stream service`);
  if (40 + pathLen !== b.length) return new GuestErrno(Errno.EINVAL, `path_len ${pathLen} disagrees with message length ${b.length}`);
  const family = b.readUInt16LE(16);
  if (family === AF.UNIX) {
    if (pathLen === 0) return new GuestErrno(Errno.EINVAL, 'AF_UNIX without a path');
    if (pathLen > MAX_UNIX_PATH) return new GuestErrno(Errno.ENAMETOOLONG, `unix path of ${pathLen} bytes`);
    const raw = b.subarray(40, 40 + pathLen);
    if (raw.includes(0)) return new GuestErrno(Errno.EINVAL, 'unix path contains NUL (abstract sockets are not proxied)');
    return { sockType, target: { family: 'unix', path: raw.toString('utf8') } };
  }
  if (pathLen !== 0) return new GuestErrno(Errno.EINVAL, 'path given for an inet address');
  const target = decodeSockAddr(b, 16);
  if (target instanceof GuestErrno) return target;
  if (target.family === 'none') return new GuestErrno(Errno.EAFNOSUPPORT, 'AF_UNSPEC target');
  return { sockType, target };
}

export function encodeResult2(op: number, result: number, w: number, local: SockAddr, peer: SockAddr): Buffer {
  const b = header(op, 64);
  b.writeInt32LE(result, 8);
  b.writeUInt32LE(w >>> 0, 12);
  encodeSockAddr(local, b, 16);
  encodeSockAddr(peer, b, 40);
  return b;
}

export function encodeConnectResult(result: number, local: SockAddr, peer: SockAddr): Buffer {
  return encodeResult2(TsiOp.CONNECT_RESULT, result, 0, local, peer);
}

export function encodeAccept(listenerId: number, local: SockAddr, peer: SockAddr): Buffer {
  const b = encodeResult2(TsiOp.ACCEPT, 0, 0, local, peer);
  b.writeUInt32LE(listenerId >>> 0, 8);
  return b;
}

export interface ConnectResult { result: number; local: SockAddr; peer: SockAddr }
export function decodeConnectResult(f: TsiMessage): ConnectResult | GuestErrno {
  const bad = f.op === TsiOp.CONNECT_RESULT ? checkSize(f) : new GuestErrno(Errno.EPROTO, `expected CONNECT_RESULT, got ${f.op}`);
  if (bad) return bad;
  const local = decodeSockAddr(f.bytes, 16);
  const peer = decodeSockAddr(f.bytes, 40);
  if (local instanceof GuestErrno) return local;
  if (peer instanceof GuestErrno) return peer;
  return { result: f.bytes.readInt32LE(8), local, peer };
}

export interface Accept { listenerId: number; local: SockAddr; peer: SockAddr }
export function decodeAccept(f: TsiMessage): Accept | GuestErrno {
  const bad = f.op === TsiOp.ACCEPT ? checkSize(f) : new GuestErrno(Errno.EPROTO, `expected ACCEPT, got ${f.op}`);
  if (bad) return bad;
  const local = decodeSockAddr(f.bytes, 16);
  const peer = decodeSockAddr(f.bytes, 40);
  if (local instanceof GuestErrno) return local;
  if (peer instanceof GuestErrno) return peer;
  return { listenerId: f.bytes.readUInt32LE(8), local, peer };
}

// control channel

export function encodeHello(seq: number, minVersion = TSI_VERSION, maxVersion = TSI_VERSION): Buffer {
  const b = header(TsiOp.HELLO, 16);
  b.writeUInt32LE(seq >>> 0, 8);
  b[12] = minVersion;
  b[13] = maxVersion;
  return b;
}

export function encodeHelloResult(seq: number, result: number, version: number, features: number): Buffer {
  const b = header(TsiOp.HELLO_RESULT, 24);
  b.writeUInt32LE(seq >>> 0, 8);
  b.writeInt32LE(result, 12);
  b[16] = version;
  b.writeUInt32LE(features >>> 0, 20);
  return b;
}

export interface ListenRequest { seq: number; sockType: number; backlog: number; vsockPort: number; bind: SockAddr }
export function encodeListen(r: ListenRequest): Buffer {
  const b = header(TsiOp.LISTEN, 48);
  b.writeUInt32LE(r.seq >>> 0, 8);
  b.writeUInt16LE(r.sockType, 12);
  b.writeUInt16LE(r.backlog, 14);
  b.writeUInt32LE(r.vsockPort >>> 0, 16);
  encodeSockAddr(r.bind, b, 24);
  return b;
}

export function decodeListen(f: TsiMessage): ListenRequest | GuestErrno {
  const bad = checkSize(f);
  if (bad) return bad;
  const b = f.bytes;
  if (b.readUInt32LE(20) !== 0) return new GuestErrno(Errno.EINVAL, 'reserved field is not zero');
  const bind = decodeSockAddr(b, 24);
  if (bind instanceof GuestErrno) return bind;
  if (bind.family !== 'ipv4' && bind.family !== 'ipv6') return new GuestErrno(Errno.EAFNOSUPPORT, 'LISTEN needs AF_INET or AF_INET6');
  const sockType = b.readUInt16LE(12);
  if (sockType !== SOCK_STREAM) return new GuestErrno(Errno.EOPNOTSUPP, `LISTEN on socket type ${sockType}`);
  if (bind.port === 0) return new GuestErrno(Errno.EINVAL, 'LISTEN with port 0: bind the guest socket first and send its real port');
  return { seq: b.readUInt32LE(8), sockType, backlog: b.readUInt16LE(14), vsockPort: b.readUInt32LE(16), bind };
}

export function encodeListenResult(seq: number, result: number, listenerId: number, host: SockAddr): Buffer {
  const b = header(TsiOp.LISTEN_RESULT, 48);
  b.writeUInt32LE(seq >>> 0, 8);
  b.writeInt32LE(result, 12);
  b.writeUInt32LE(listenerId >>> 0, 16);
  encodeSockAddr(host, b, 24);
  return b;
}

export function encodeSeqResult(op: number, seq: number, result: number, extra = 0): Buffer {
  const b = header(op, 16);
  b.writeUInt32LE(seq >>> 0, 8);
  if (op === TsiOp.UNLISTEN) b.writeUInt32LE(extra >>> 0, 12);
  else b.writeInt32LE(result, 12);
  return b;
}

// datagrams

export function encodeDgramOpen(bind: SockAddr, flags = 0): Buffer {
  const b = header(TsiOp.DGRAM_OPEN, 40);
  b.writeUInt32LE(flags >>> 0, 8);
  encodeSockAddr(bind, b, 16);
  return b;
}

export function decodeDgramOpen(f: TsiMessage): SockAddr | GuestErrno {
  if (f.op !== TsiOp.DGRAM_OPEN) return new GuestErrno(Errno.EPROTO, `expected DGRAM_OPEN, got op ${f.op}`);
  const bad = checkSize(f);
  if (bad) return bad;
  if (f.bytes.readUInt32LE(8) !== 0 || f.bytes.readUInt32LE(12) !== 0) return new GuestErrno(Errno.EINVAL, 'unknown flags or reserved bits');
  const bind = decodeSockAddr(f.bytes, 16);
  if (bind instanceof GuestErrno) return bind;
  if (bind.family !== 'ipv4' && bind.family !== 'ipv6') return new GuestErrno(Errno.EAFNOSUPPORT, 'DGRAM_OPEN needs AF_INET or AF_INET6');
  return bind;
}

export const DgramFlag = { EXPOSED: 1 } as const;

export function encodeDgramOpenResult(result: number, flags: number, local: SockAddr): Buffer {
  const b = header(TsiOp.DGRAM_OPEN_RESULT, 40);
  b.writeInt32LE(result, 8);
  b.writeUInt32LE(flags >>> 0, 12);
  encodeSockAddr(local, b, 16);
  return b;
}

export function encodeDgram(addr: SockAddr, payload: Uint8Array): Buffer {
  const b = header(TsiOp.DGRAM, 32 + payload.length);
  encodeSockAddr(addr, b, 8);
  b.set(payload, 32);
  return b;
}

export interface Dgram { addr: SockAddr & { family: 'ipv4' | 'ipv6' }; payload: Buffer }
export function decodeDgram(f: TsiMessage): Dgram | GuestErrno {
  if (f.op !== TsiOp.DGRAM) return new GuestErrno(Errno.EPROTO, `expected DGRAM, got op ${f.op}`);
  const bad = checkSize(f);
  if (bad) return bad;
  const addr = decodeSockAddr(f.bytes, 8);
  if (addr instanceof GuestErrno) return addr;
  if (addr.family !== 'ipv4' && addr.family !== 'ipv6') return new GuestErrno(Errno.EDESTADDRREQ, 'DGRAM without an address');
  return { addr, payload: f.bytes.subarray(32) };
}

export function encodeDgramError(result: number, addr: SockAddr): Buffer {
  const b = header(TsiOp.DGRAM_ERROR, 40);
  b.writeInt32LE(result, 8);
  encodeSockAddr(addr, b, 16);
  return b;
}
