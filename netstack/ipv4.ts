// IPv4 headers (RFC 791): version, IHL (options length), total length against the
// bytes present (Ethernet padding beyond it is ignored), header checksum, fragments.
import { checksum } from './checksum.js';
import { fail, ok, type ParseResult } from './result.js';

export const IPV4_MIN_HLEN = 20;
export const IpProto = { ICMP: 1, TCP: 6, UDP: 17, ICMPv6: 58 } as const;

export interface IPv4Packet {
  headerLength: number;
  /** Bytes of options (headerLength - 20). */
  optionsLength: number;
  tos: number;
  totalLength: number;
  id: number;
  dontFragment: boolean;
  moreFragments: boolean;
  /** Fragment offset in bytes. */
  fragmentOffset: number;
  ttl: number;
  protocol: number;
  src: Uint8Array;
  dst: Uint8Array;
  /** Offset of the header in the buffer, and [payloadOffset, end) the payload. */
  offset: number;
  payloadOffset: number;
  end: number;
}

export function parseIPv4(b: Uint8Array, off: number): ParseResult<IPv4Packet> {
  const avail = b.length - off;
  if (avail < IPV4_MIN_HLEN) return fail('ipv4: truncated header');
  const vihl = b[off]!;
  if (vihl >> 4 !== 4) return fail(`ipv4: version ${vihl >> 4}`);
  const hl = (vihl & 0x0f) * 4;
  if (hl < IPV4_MIN_HLEN) return fail(`ipv4: header length ${hl}`);
  if (hl > avail) return fail('ipv4: options past the frame');
  const totalLength = (b[off + 2]! << 8) | b[off + 3]!;
  if (totalLength < hl) return fail(`ipv4: total length ${totalLength} below header length ${hl}`);
  if (totalLength > avail) return fail(`ipv4: total length ${totalLength} past the frame (${avail})`);
  if (checksum(b, off, off + hl) !== 0) return fail('ipv4: bad header checksum');
  const frag = (b[off + 6]! << 8) | b[off + 7]!;
  if (frag & 0x8000) return fail('ipv4: reserved flag set');
  return ok({
    headerLength: hl, optionsLength: hl - IPV4_MIN_HLEN, tos: b[off + 1]!, totalLength,
    id: (b[off + 4]! << 8) | b[off + 5]!,
    dontFragment: (frag & 0x4000) !== 0, moreFragments: (frag & 0x2000) !== 0, fragmentOffset: (frag & 0x1fff) * 8,
    ttl: b[off + 8]!, protocol: b[off + 9]!,
    src: b.subarray(off + 12, off + 16), dst: b.subarray(off + 16, off + 20),
    offset: off, payloadOffset: off + hl, end: off + totalLength,
  });
}

export interface IPv4Fields {
  src: Uint8Array;
  dst: Uint8Array;
  protocol: number;
  ttl?: number;
  id?: number;
  tos?: number;
  dontFragment?: boolean;
  moreFragments?: boolean;
  fragmentOffset?: number;
  /** Raw option bytes (padded to 4 bytes with zeros). */
  options?: Uint8Array;
}

export function encodeIPv4(f: IPv4Fields, payload: Uint8Array): Buffer {
  const optLen = f.options ? (f.options.length + 3) & ~3 : 0;
  const hl = IPV4_MIN_HLEN + optLen;
  if (hl > 60) throw new RangeError('ipv4: options longer than 40 bytes');
  const out = Buffer.alloc(hl + payload.length);
  if (out.length > 0xffff) throw new RangeError('ipv4: packet longer than 65535 bytes');
  out[0] = 0x40 | (hl / 4);
  out[1] = f.tos ?? 0;
  out.writeUInt16BE(out.length, 2);
  out.writeUInt16BE(f.id ?? 0, 4);
  out.writeUInt16BE((f.dontFragment ? 0x4000 : 0) | (f.moreFragments ? 0x2000 : 0) | (((f.fragmentOffset ?? 0) / 8) & 0x1fff), 6);
  out[8] = f.ttl ?? 64;
  out[9] = f.protocol;
  out.set(f.src.subarray(0, 4), 12);
  out.set(f.dst.subarray(0, 4), 16);
  if (f.options) out.set(f.options, 20);
  out.writeUInt16BE(checksum(out, 0, hl), 10);
  out.set(payload, hl);
  return out;
}
