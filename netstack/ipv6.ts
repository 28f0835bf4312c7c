// IPv6 (RFC 8200): the fixed header, then a bounded walk over extension headers to the
// upper-layer protocol. A fragment header is reported (offset, more, id, where it sits)
// and ends the walk; ESP ends it too (nothing past it can be read).
import { fail, ok, type ParseResult } from './result.js';

export const IPV6_HLEN = 40;
/** At most this many extension headers are walked; more is refused. */
export const MAX_EXTENSION_HEADERS = 8;
export const Ipv6Ext = { HopByHop: 0, Routing: 43, Fragment: 44, ESP: 50, AH: 51, NoNext: 59, DestOpts: 60 } as const;

export interface IPv6Fragment {
  offset: number;
  more: boolean;
  id: number;
  headerOffset: number;
  nextHeader: number;
  nextHeaderAt: number;
}

export interface IPv6Packet {
  trafficClass: number;
  flowLabel: number;
  payloadLength: number;
  hopLimit: number;
  src: Uint8Array;
  dst: Uint8Array;
  /** The upper-layer protocol after the extension headers (or ESP / No Next Header). */
  protocol: number;
  extensionHeaders: number;
  /**
   * The fragment header, if any: its fields, where it sits (`headerOffset`), the
   * protocol after it (`nextHeader`) and the byte that names it as the next header
   * (`nextHeaderAt`: the fixed header's or the previous extension header's), which
   * reassembly rewrites when it removes the fragment header.
   */
  fragment: IPv6Fragment | null;
  offset: number;
  /** Where the upper-layer header starts, and the packet's end. */
  payloadOffset: number;
  end: number;
}

export function parseIPv6(b: Uint8Array, off: number): ParseResult<IPv6Packet> {
  const avail = b.length - off;
  if (avail < IPV6_HLEN) return fail('ipv6: truncated header');
  if (b[off]! >> 4 !== 6) return fail(`ipv6: version ${b[off]! >> 4}`);
  const payloadLength = (b[off + 4]! << 8) | b[off + 5]!;
  if (IPV6_HLEN + payloadLength > avail) return fail(`ipv6: payload length ${payloadLength} past the frame`);
  const end = off + IPV6_HLEN + payloadLength;
  let next = b[off + 6]!;
  let nextAt = off + 6;
  let p = off + IPV6_HLEN;
  let count = 0;
  let fragment: IPv6Packet['fragment'] = null;
  for (;;) {
    if (next !== Ipv6Ext.HopByHop && next !== Ipv6Ext.Routing && next !== Ipv6Ext.Fragment && next !== Ipv6Ext.AH && next !== Ipv6Ext.DestOpts) break;
    if (++count > MAX_EXTENSION_HEADERS) return fail('ipv6: too many extension headers');
    if (next === Ipv6Ext.HopByHop && count !== 1) return fail('ipv6: hop-by-hop options not first');
    if (end - p < 8) return fail('ipv6: truncated extension header');
    let len: number;
    if (next === Ipv6Ext.Fragment) {
      const fo = (b[p + 2]! << 8) | b[p + 3]!;
      fragment = {
        offset: fo & 0xfff8, more: (fo & 1) !== 0, id: ((b[p + 4]! << 24) | (b[p + 5]! << 16) | (b[p + 6]! << 8) | b[p + 7]!) >>> 0,
        headerOffset: p, nextHeader: b[p]!, nextHeaderAt: nextAt,
      };
      len = 8;
    } else if (next === Ipv6Ext.AH) {
      len = (b[p + 1]! + 2) * 4;
    } else {
      len = (b[p + 1]! + 1) * 8;
    }
    if (len > end - p) return fail('ipv6: extension header past the packet');
    next = b[p]!;
    nextAt = p;
    p += len;
    // What follows a fragment header is read after reassembly (a fragment's headers
    // are not judged on their own): stop there.
    if (fragment !== null) break;
  }
  return ok({
    trafficClass: ((b[off]! & 0x0f) << 4) | (b[off + 1]! >> 4),
    flowLabel: ((b[off + 1]! & 0x0f) << 16) | (b[off + 2]! << 8) | b[off + 3]!,
    payloadLength, hopLimit: b[off + 7]!,
    src: b.subarray(off + 8, off + 24), dst: b.subarray(off + 24, off + 40),
    protocol: next, extensionHeaders: count, fragment, offset: off, payloadOffset: p, end,
  });
}

export interface IPv6Fields {
  src: Uint8Array;
  dst: Uint8Array;
  /** Next header of the fixed header (the upper-layer protocol when there are no extensions). */
  nextHeader: number;
  hopLimit?: number;
  trafficClass?: number;
  flowLabel?: number;
}

/** The fixed header plus payload (which may begin with extension headers the caller built). */
export function encodeIPv6(f: IPv6Fields, payload: Uint8Array): Buffer {
  if (payload.length > 0xffff) throw new RangeError('ipv6: payload longer than 65535 bytes (no jumbograms)');
  const out = Buffer.alloc(IPV6_HLEN + payload.length);
  const tc = f.trafficClass ?? 0;
  const fl = f.flowLabel ?? 0;
  out.writeUInt32BE(((6 << 28) | (tc << 20) | (fl & 0xfffff)) >>> 0, 0);
  out.writeUInt16BE(payload.length, 4);
  out[6] = f.nextHeader;
  out[7] = f.hopLimit ?? 64;
  out.set(f.src.subarray(0, 16), 8);
  out.set(f.dst.subarray(0, 16), 24);
  out.set(payload, IPV6_HLEN);
  return out;
}
