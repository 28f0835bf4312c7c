// virtio-vsock packet header (virtio 1.2 §5.10.6): 44 bytes, little-endian. The codec
// reads and writes through DataViews; decoding never throws on guest bytes (the
// caller checks lengths first).

export const HEADER_SIZE = 44;

/** Well-known CIDs. */
export const HOST_CID = 2;
/** CIDs 0, 1 and 2 are reserved; U32_MAX is VMADDR_CID_ANY. */
export const MIN_GUEST_CID = 3;

export const VsockType = {
  STREAM: 1,
  SEQPACKET: 2,
} as const;
export type VsockType = (typeof VsockType)[keyof typeof VsockType];

export const Op = {
  INVALID: 0,
  REQUEST: 1,
  RESPONSE: 2,
  RST: 3,
  SHUTDOWN: 4,
  RW: 5,
  CREDIT_UPDATE: 6,
  CREDIT_REQUEST: 7,
} as const;

/** SHUTDOWN flags. */
export const Shutdown = {
  /** The sender will receive no more data. */
  RCV: 1,
  /** The sender will send no more data. */
  SEND: 2,
  BOTH: 3,
} as const;

/** RW flags on SEQPACKET connections. */
export const SeqFlag = {
  /** Last packet of a message. */
  EOM: 1,
  /** Last packet of a record (MSG_EOR). */
  EOR: 2,
} as const;

/** Device feature bits. */
export const VsockFeature = {
  /** bit 1: VIRTIO_VSOCK_F_SEQPACKET */
  SEQPACKET: 1n << 1n,
} as const;

/** Event queue event ids. */
export const VSOCK_EVENT_TRANSPORT_RESET = 0;

/** Largest payload one packet may carry (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). */
export const MAX_PACKET_PAYLOAD = 64 * 1024;

export interface PacketHeader {
  srcCid: bigint;
  dstCid: bigint;
  srcPort: number;
  dstPort: number;
  len: number;
  type: number;
  op: number;
  flags: number;
  bufAlloc: number;
  fwdCnt: number;
}

/** BigInts for the CIDs seen on every packet (host 2, guests 3..): no allocation per decode. */
const SMALL_CIDS = Array.from({ length: 256 }, (_, i) => BigInt(i));

function readCid(v: DataView, at: number): bigint {
  const lo = v.getUint32(at, true);
  return lo < 256 && v.getUint32(at + 4, true) === 0 ? SMALL_CIDS[lo]! : v.getBigUint64(at, true);
}

/** Decodes a header from the first 44 bytes of `bytes` (the caller checked the length). */
export function decodeHeader(bytes: Uint8Array | DataView): PacketHeader {
  const v = bytes instanceof DataView ? bytes : new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  return {
    srcCid: readCid(v, 0),
    dstCid: readCid(v, 8),
    srcPort: v.getUint32(16, true),
    dstPort: v.getUint32(20, true),
    len: v.getUint32(24, true),
    type: v.getUint16(28, true),
    op: v.getUint16(30, true),
    flags: v.getUint32(32, true),
    bufAlloc: v.getUint32(36, true),
    fwdCnt: v.getUint32(40, true),
  };
}

/** Writes `h` into the first 44 bytes of `out`. */
export function encodeHeader(h: PacketHeader, out: Uint8Array): void {
  const v = new DataView(out.buffer, out.byteOffset, HEADER_SIZE);
  v.setBigUint64(0, h.srcCid, true);
  v.setBigUint64(8, h.dstCid, true);
  v.setUint32(16, h.srcPort >>> 0, true);
  v.setUint32(20, h.dstPort >>> 0, true);
  v.setUint32(24, h.len >>> 0, true);
  v.setUint16(28, h.type, true);
  v.setUint16(30, h.op, true);
  v.setUint32(32, h.flags >>> 0, true);
  v.setUint32(36, h.bufAlloc >>> 0, true);
  v.setUint32(40, h.fwdCnt >>> 0, true);
}

export function opName(op: number): string {
  for (const [k, v] of Object.entries(Op)) if (v === op) return k;
  return `op${op}`;
}
