// The Internet checksum (RFC 1071) and the IPv4/IPv6 pseudo-headers TCP, UDP and
// ICMPv6 sum over. Sums are kept in plain numbers (no 32-bit overflow for any frame
// up to 64 KiB) and folded at the end.

/** One's-complement sum of the 16-bit big-endian words of b[start, end) (odd tail padded with zero), added to acc. */
export function sum16(b: Uint8Array, start: number, end: number, acc = 0): number {
  let s = acc;
  let i = start;
  for (; i + 1 < end; i += 2) s += (b[i]! << 8) | b[i + 1]!;
  if (i < end) s += b[i]! << 8;
  return s;
}

export function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

/** The checksum field value for b[start, end) plus acc (a valid region including its checksum sums to 0). */
export function checksum(b: Uint8Array, start: number, end: number, acc = 0): number {
  return ~fold(sum16(b, start, end, acc)) & 0xffff;
}

/** The pseudo-header sum: IPv4 (4-byte addresses) or IPv6 (16-byte addresses). */
export function pseudoHeaderSum(src: Uint8Array, dst: Uint8Array, protocol: number, length: number): number {
  let s = sum16(src, 0, src.length) + sum16(dst, 0, dst.length);
  if (src.length === 4) return s + protocol + length;
  s += Math.floor(length / 0x10000) + (length & 0xffff);
  return s + protocol;
}
