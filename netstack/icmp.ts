// ICMP (RFC 792) and ICMPv6 (RFC 4443): type/code/checksum, echo ids, and the
// "destination unreachable" messages the frame filter answers denied packets with.
import { checksum, pseudoHeaderSum } from './checksum.js';
import { IpProto } from './ipv4.js';
import { fail, ok, type ParseResult } from './result.js';

export const ICMP_HLEN = 8;
export const Icmp4 = { EchoReply: 0, Unreachable: 3, Echo: 8, TimeExceeded: 11, ParamProblem: 12 } as const;
export const Icmp4Unreach = { Port: 3, AdminProhibited: 13 } as const;
export const Icmp6 = { Unreachable: 1, TooBig: 2, TimeExceeded: 3, ParamProblem: 4, Echo: 128, EchoReply: 129, RouterSolicit: 133, RouterAdvert: 134, NeighborSolicit: 135, NeighborAdvert: 136, Redirect: 137 } as const;
export const Icmp6Unreach = { AdminProhibited: 1, Port: 4 } as const;
/** An ICMP error quotes at most this much of the packet that caused it (IPv4: 576-byte datagram; IPv6: 1280). */
export const ICMP4_QUOTE_MAX = 576 - 20 - ICMP_HLEN;
export const ICMP6_QUOTE_MAX = 1280 - 40 - ICMP_HLEN;

export interface IcmpMessage {
  type: number;
  code: number;
  checksum: number;
  /** Bytes 4..8 (echo: identifier and sequence). */
  rest: number;
  /** Echo request/reply identifier (rest >> 16). */
  id: number;
  payloadOffset: number;
  end: number;
}

export function parseIcmp(b: Uint8Array, off: number, end: number): ParseResult<IcmpMessage> {
  if (end > b.length || end - off < ICMP_HLEN) return fail('icmp: truncated header');
  const rest = ((b[off + 4]! << 24) | (b[off + 5]! << 16) | (b[off + 6]! << 8) | b[off + 7]!) >>> 0;
  return ok({
    type: b[off]!, code: b[off + 1]!, checksum: (b[off + 2]! << 8) | b[off + 3]!, rest, id: rest >>> 16,
    payloadOffset: off + ICMP_HLEN, end,
  });
}

/**
 * An ICMP message. IPv4 (src/dst omitted or 4 bytes): checksum over the message;
 * IPv6 (16-byte src/dst): checksum over the pseudo-header too.
 */
export function encodeIcmp(type: number, code: number, rest: number, body: Uint8Array, v6?: { src: Uint8Array; dst: Uint8Array }): Buffer {
  const out = Buffer.alloc(ICMP_HLEN + body.length);
  out[0] = type;
  out[1] = code;
  out.writeUInt32BE(rest >>> 0, 4);
  out.set(body, ICMP_HLEN);
  const acc = v6 ? pseudoHeaderSum(v6.src, v6.dst, IpProto.ICMPv6, out.length) : 0;
  out.writeUInt16BE(checksum(out, 0, out.length, acc), 2);
  return out;
}
