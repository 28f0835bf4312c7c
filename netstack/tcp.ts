// TCP headers (RFC 9293): ports, sequence numbers, flags, data offset within bounds.
import { checksum, pseudoHeaderSum } from './checksum.js';
import { IpProto } from './ipv4.js';
import { fail, ok, type ParseResult } from './result.js';

export const TCP_MIN_HLEN = 20;
export const TcpFlag = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10, URG: 0x20, ECE: 0x40, CWR: 0x80 } as const;

export interface TcpSegment {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  headerLength: number;
  flags: number;
  window: number;
  checksum: number;
  urgent: number;
  payloadOffset: number;
  end: number;
}

/** The segment in b[off, end). */
export function parseTcp(b: Uint8Array, off: number, end: number): ParseResult<TcpSegment> {
  if (end > b.length || end - off < TCP_MIN_HLEN) return fail('tcp: truncated header');
  const hl = (b[off + 12]! >> 4) * 4;
  if (hl < TCP_MIN_HLEN || hl > end - off) return fail(`tcp: data offset ${hl} out of bounds`);
  const u32 = (i: number): number => ((b[i]! << 24) | (b[i + 1]! << 16) | (b[i + 2]! << 8) | b[i + 3]!) >>> 0;
  return ok({
    srcPort: (b[off]! << 8) | b[off + 1]!, dstPort: (b[off + 2]! << 8) | b[off + 3]!,
    seq: u32(off + 4), ack: u32(off + 8), headerLength: hl, flags: b[off + 13]!,
    window: (b[off + 14]! << 8) | b[off + 15]!, checksum: (b[off + 16]! << 8) | b[off + 17]!,
    urgent: (b[off + 18]! << 8) | b[off + 19]!, payloadOffset: off + hl, end,
  });
}

export interface TcpFields {
  srcPort: number;
  dstPort: number;
  seq: number;
  ack: number;
  flags: number;
  window?: number;
  /** Raw option bytes (padded to 4 bytes). */
  options?: Uint8Array;
}

/** A segment with its checksum over the pseudo-header of src/dst (4 or 16 bytes each). */
export function encodeTcp(f: TcpFields, payload: Uint8Array, src: Uint8Array, dst: Uint8Array): Buffer {
  const optLen = f.options ? (f.options.length + 3) & ~3 : 0;
  const hl = TCP_MIN_HLEN + optLen;
  if (hl > 60) throw new RangeError('tcp: options longer than 40 bytes');
  const out = Buffer.alloc(hl + payload.length);
  out.writeUInt16BE(f.srcPort, 0);
  out.writeUInt16BE(f.dstPort, 2);
  out.writeUInt32BE(f.seq >>> 0, 4);
  out.writeUInt32BE(f.ack >>> 0, 8);
  out[12] = (hl / 4) << 4;
  out[13] = f.flags;
  out.writeUInt16BE(f.window ?? 0, 14);
  if (f.options) out.set(f.options, 20);
  out.set(payload, hl);
  out.writeUInt16BE(checksum(out, 0, out.length, pseudoHeaderSum(src, dst, IpProto.TCP, out.length)), 16);
  return out;
}
