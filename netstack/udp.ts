// UDP headers (RFC 768): the length field must fit the IP payload.
import { checksum, pseudoHeaderSum } from './checksum.js';
import { IpProto } from './ipv4.js';
import { fail, ok, type ParseResult } from './result.js';

export const UDP_HLEN = 8;

export interface UdpDatagram {
  srcPort: number;
  dstPort: number;
  length: number;
  checksum: number;
  payloadOffset: number;
  end: number;
}

export function parseUdp(b: Uint8Array, off: number, end: number): ParseResult<UdpDatagram> {
  if (end > b.length || end - off < UDP_HLEN) return fail('udp: truncated header');
  const length = (b[off + 4]! << 8) | b[off + 5]!;
  if (length < UDP_HLEN || length > end - off) return fail(`udp: length ${length} out of bounds`);
  return ok({
    srcPort: (b[off]! << 8) | b[off + 1]!, dstPort: (b[off + 2]! << 8) | b[off + 3]!, length,
    checksum: (b[off + 6]! << 8) | b[off + 7]!, payloadOffset: off + UDP_HLEN, end: off + length,
  });
}

export function encodeUdp(srcPort: number, dstPort: number, payload: Uint8Array, src: Uint8Array, dst: Uint8Array): Buffer {
  const out = Buffer.alloc(UDP_HLEN + payload.length);
  out.writeUInt16BE(srcPort, 0);
  out.writeUInt16BE(dstPort, 2);
  out.writeUInt16BE(out.length, 4);
  out.set(payload, UDP_HLEN);
  const c = checksum(out, 0, out.length, pseudoHeaderSum(src, dst, IpProto.UDP, out.length));
  out.writeUInt16BE(c === 0 ? 0xffff : c, 6);
  return out;
}
