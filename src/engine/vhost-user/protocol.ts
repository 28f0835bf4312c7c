// The vhost-user wire format (QEMU's docs/interop/vhost-user.rst): a 12-byte header
// (request u32, flags u32, payload size u32, little-endian) then the payload; file
// descriptors ride along as SCM_RIGHTS with the message's bytes. This file is pure:
// it frames a byte stream into messages and decodes payloads, rejecting anything
// malformed with a ProtocolError. No I/O here (see backend/connection.ts and frontend/frontend.ts).
import { TsiboxError } from '../../errors.js';

export const HEADER_SIZE = 12;
/** Largest payload we accept (GET/SET_CONFIG carries at most 256 bytes of config). */
export const MAX_PAYLOAD = 4096;
export const VHOST_USER_VERSION = 0x1;
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
/** Vring index bits and "no fd" bit of the u64 payload of SET_VRING_KICK/CALL/ERR. */
export const VRING_IDX_MASK = 0xffn;
export const VRING_NOFD_MASK = 0x100n;
export const MAX_MEM_REGIONS = 8;
export const MAX_CONFIG_SIZE = 256;

export const Req = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_SLAVE_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

const REQ_NAMES = new Map<number, string>(Object.entries(Req).map(([k, v]) => [v, k]));

export function requestName(req: number): string {
  return REQ_NAMES.get(req) ?? `request ${req}`;
}

/** VHOST_USER_F_PROTOCOL_FEATURES: a device feature bit that only vhost-user uses. */
export const F_PROTOCOL_FEATURES = 1n << 30n;

/** Protocol feature bits. */
export const ProtocolFeature = {
  MQ: 1n << 0n,
  REPLY_ACK: 1n << 3n,
  CONFIG: 1n << 9n,
  RESET_DEVICE: 1n << 13n,
} as const;

/**
 * The peer (a front end's request, a back end's reply) broke the vhost-user protocol:
 * a bad header, a payload of the wrong size, a message out of order. Code DEVICE_ERROR
 * (the device on the other end of the socket is unusable); the connection is closed.
 */
export class ProtocolError extends TsiboxError {
  constructor(message: string) {
    super('DEVICE_ERROR', message);
    this.name = 'ProtocolError';
  }
}

export interface Message {
  request: number;
  flags: number;
  payload: Buffer;
  /** Descriptors that arrived with this message's bytes (the receiver owns them). */
  fds: number[];
}

/**
 * Frames a byte stream into messages. Descriptors are attached to the message whose
 * bytes they arrived with: a recvmsg chunk's fds belong to the message containing
 * the chunk's first byte. Throws ProtocolError on a bad header; after an error the
 * reader is unusable (the connection must be closed) and `drainFds()` returns every
 * descriptor it still holds so the caller can close them.
 */
export class MessageReader {
  /** 'requests' (a back end's reader, the default) or 'replies' (a front end's). */
  readonly accepts: 'requests' | 'replies';
  #buf: Buffer = Buffer.alloc(0);
  /** Stream offset of #buf[0]. */
  #base = 0;
  #pending: Array<{ offset: number; fd: number }> = [];
  #failed: string | null = null;

  constructor(opts: { accepts?: 'requests' | 'replies' } = {}) {
    this.accepts = opts.accepts ?? 'requests';
  }

  feed(bytes: Uint8Array, fds: readonly number[] = []): Message[] {
    if (this.#failed !== null) throw new ProtocolError(`reader already failed: ${this.#failed}`);
    const chunkOffset = this.#base + this.#buf.length;
    for (const fd of fds) this.#pending.push({ offset: chunkOffset, fd });
    this.#buf = this.#buf.length === 0 ? Buffer.from(bytes) : Buffer.concat([this.#buf, bytes]);
    const out: Message[] = [];
    try {
      for (;;) {
        if (this.#buf.length < HEADER_SIZE) break;
        const request = this.#buf.readUInt32LE(0);
        const flags = this.#buf.readUInt32LE(4);
        const size = this.#buf.readUInt32LE(8);
        if ((flags & FLAG_VERSION_MASK) !== VHOST_USER_VERSION) {
          throw new ProtocolError(`${requestName(request)}: unsupported version in flags 0x${flags.toString(16)}`);
        }
        if (this.accepts === 'requests' && (flags & FLAG_REPLY) !== 0) throw new ProtocolError(`${requestName(request)}: a reply sent to the backend`);
        if (this.accepts === 'replies' && (flags & FLAG_REPLY) === 0) throw new ProtocolError(`${requestName(request)}: the back end sent a request on the main channel (flags 0x${flags.toString(16)})`);
        if (size > MAX_PAYLOAD) throw new ProtocolError(`${requestName(request)}: payload size ${size} exceeds ${MAX_PAYLOAD}`);
        const total = HEADER_SIZE + size;
        if (this.#buf.length < total) break;
        const end = this.#base + total;
        const mine = this.#pending.filter((p) => p.offset < end).map((p) => p.fd);
        this.#pending = this.#pending.filter((p) => p.offset >= end);
        out.push({ request, flags, payload: Buffer.from(this.#buf.subarray(HEADER_SIZE, total)), fds: mine });
        this.#buf = this.#buf.subarray(total);
        this.#base = end;
      }
    } catch (err) {
      this.#failed = err instanceof Error ? err.message : String(err);
      // Messages already framed in this call are handed back with the error's fds.
      for (const m of out) for (const fd of m.fds) this.#pending.push({ offset: -1, fd });
      throw err;
    }
    return out;
  }

  /**
   * How many bytes complete the current header or message. Reading no more than this
   * keeps every read starting inside one message, so descriptors (which Linux hands
   * out with the first read of the skb they came with) land on the right message.
   */
  get wanted(): number {
    if (this.#buf.length < HEADER_SIZE) return HEADER_SIZE - this.#buf.length;
    const size = this.#buf.readUInt32LE(8);
    return Math.max(1, Math.min(HEADER_SIZE + size, HEADER_SIZE + MAX_PAYLOAD) - this.#buf.length);
  }

  /** Bytes buffered towards an incomplete message. */
  get buffered(): number {
    return this.#buf.length;
  }

  /** Removes and returns every descriptor not handed out with a message. */
  drainFds(): number[] {
    const fds = this.#pending.map((p) => p.fd);
    this.#pending = [];
    return fds;
  }
}

export function encodeReply(request: number, payload: Uint8Array): Buffer {
  const hdr = Buffer.alloc(HEADER_SIZE);
  hdr.writeUInt32LE(request, 0);
  hdr.writeUInt32LE(VHOST_USER_VERSION | FLAG_REPLY, 4);
  hdr.writeUInt32LE(payload.length, 8);
  return Buffer.concat([hdr, payload]);
}

export function u64Payload(v: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, v));
  return b;
}

/** A request, encoded (for tests and the software front end). */
export function encodeRequest(request: number, payload: Uint8Array = new Uint8Array(), flags = VHOST_USER_VERSION): Buffer {
  const hdr = Buffer.alloc(HEADER_SIZE);
  hdr.writeUInt32LE(request, 0);
  hdr.writeUInt32LE(flags, 4);
  hdr.writeUInt32LE(payload.length, 8);
  return Buffer.concat([hdr, payload]);
}

// ---- payload decoders; each checks the exact size it needs ----

function need(m: Message, size: number, what: string): void {
  if (m.payload.length < size) {
    throw new ProtocolError(`${requestName(m.request)}: ${what} payload is ${m.payload.length} bytes, need ${size}`);
  }
}

export function decodeU64(m: Message): bigint {
  need(m, 8, 'u64');
  return m.payload.readBigUInt64LE(0);
}

export interface VringState {
  index: number;
  num: number;
}

export function decodeVringState(m: Message): VringState {
  need(m, 8, 'vring state');
  return { index: m.payload.readUInt32LE(0), num: m.payload.readUInt32LE(4) };
}

export function encodeVringState(s: VringState): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(s.index >>> 0, 0);
  b.writeUInt32LE(s.num >>> 0, 4);
  return b;
}

export interface VringAddr {
  index: number;
  flags: number;
  /** Front-end (QEMU) virtual addresses. */
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

export function decodeVringAddr(m: Message): VringAddr {
  need(m, 40, 'vring address');
  const p = m.payload;
  return {
    index: p.readUInt32LE(0),
    flags: p.readUInt32LE(4),
    desc: p.readBigUInt64LE(8),
    used: p.readBigUInt64LE(16),
    avail: p.readBigUInt64LE(24),
    log: p.readBigUInt64LE(32),
  };
}

export function encodeVringAddr(a: VringAddr): Buffer {
  const b = Buffer.alloc(40);
  b.writeUInt32LE(a.index >>> 0, 0);
  b.writeUInt32LE(a.flags >>> 0, 4);
  b.writeBigUInt64LE(a.desc, 8);
  b.writeBigUInt64LE(a.used, 16);
  b.writeBigUInt64LE(a.avail, 24);
  b.writeBigUInt64LE(a.log, 32);
  return b;
}

export interface MemRegionDesc {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  mmapOffset: bigint;
}

export function decodeMemTable(m: Message): MemRegionDesc[] {
  need(m, 8, 'memory table');
  const n = m.payload.readUInt32LE(0);
  if (n === 0 || n > MAX_MEM_REGIONS) throw new ProtocolError(`SET_MEM_TABLE: ${n} regions (1..${MAX_MEM_REGIONS} allowed)`);
  need(m, 8 + 32 * n, 'memory table');
  const regions: MemRegionDesc[] = [];
  for (let i = 0; i < n; i++) {
    const o = 8 + 32 * i;
    regions.push({
      guestPhysAddr: m.payload.readBigUInt64LE(o),
      memorySize: m.payload.readBigUInt64LE(o + 8),
      userspaceAddr: m.payload.readBigUInt64LE(o + 16),
      mmapOffset: m.payload.readBigUInt64LE(o + 24),
    });
  }
  return regions;
}

export function encodeMemTable(regions: readonly MemRegionDesc[]): Buffer {
  const b = Buffer.alloc(8 + 32 * regions.length);
  b.writeUInt32LE(regions.length, 0);
  regions.forEach((r, i) => {
    const o = 8 + 32 * i;
    b.writeBigUInt64LE(r.guestPhysAddr, o);
    b.writeBigUInt64LE(r.memorySize, o + 8);
    b.writeBigUInt64LE(r.userspaceAddr, o + 16);
    b.writeBigUInt64LE(r.mmapOffset, o + 24);
  });
  return b;
}

export interface ConfigMsg {
  offset: number;
  size: number;
  flags: number;
  data: Buffer;
}

export function decodeConfig(m: Message): ConfigMsg {
  need(m, 12, 'config');
  const offset = m.payload.readUInt32LE(0);
  const size = m.payload.readUInt32LE(4);
  const flags = m.payload.readUInt32LE(8);
  if (size > MAX_CONFIG_SIZE || offset > MAX_CONFIG_SIZE || offset + size > MAX_CONFIG_SIZE) {
    throw new ProtocolError(`${requestName(m.request)}: config range ${offset}+${size} exceeds ${MAX_CONFIG_SIZE} bytes`);
  }
  need(m, 12 + size, 'config');
  return { offset, size, flags, data: Buffer.from(m.payload.subarray(12, 12 + size)) };
}

export function encodeConfig(c: ConfigMsg): Buffer {
  const b = Buffer.alloc(12 + c.data.length);
  b.writeUInt32LE(c.offset, 0);
  b.writeUInt32LE(c.data.length, 4);
  b.writeUInt32LE(c.flags, 8);
  b.set(c.data, 12);
  return b;
}
