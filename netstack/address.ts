// IP and MAC addresses as bytes <-> text: the one place that parses them, for the
// codecs, the policy layer, the TSI proxies and the frame filter alike.
import { isIPv4, isIPv6 } from 'node:net';

export function formatIPv4(b: Uint8Array): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`;
}

/** Groups without leading zeros, the longest run of zero groups (>= 2) as '::' (RFC 5952). */
export function formatIPv6(b: Uint8Array): string {
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push((b[i]! << 8) | b[i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = (xs: number[]): string => xs.map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

export function formatIP(b: Uint8Array): string {
  return b.length === 4 ? formatIPv4(b) : formatIPv6(b);
}

/**
 * 'a.b.c.d' → 4 bytes, or null. Only the canonical dotted quad (0-255, no leading zeros,
 * as node:net's isIPv4 and canonicalAddress accept), so every parser of ours agrees on
 * what an IPv4 address is: '010.0.2.15' is none (some tools read it as octal).
 */
export function ipv4FromString(s: string): Uint8Array | null {
  if (typeof s !== 'string' || !isIPv4(s)) return null;
  return Uint8Array.from(s.split('.'), Number);
}

/** The 4 bytes of an IPv4 text address; TypeError when it is none. */
export function ipv4Bytes(address: string): number[] {
  const b = ipv4FromString(address);
  if (b === null) throw new TypeError(`not an IPv4 address: ${address}`);
  return Array.from(b);
}

/** 16 bytes of an IPv6 text address (with :: compression, a dotted IPv4 tail, a %zone ignored); TypeError when it is none. */
export function ipv6Bytes(address: string): number[] {
  let text = address;
  const pct = text.indexOf('%');
  if (pct >= 0) text = text.slice(0, pct);
  if (!isIPv6(text)) throw new TypeError(`not an IPv6 address: ${address}`);
  let tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  const last = text.slice(lastColon + 1);
  if (isIPv4(last)) {
    tail = ipv4Bytes(last);
    text = text.slice(0, lastColon + 1) + '0:0';
  }
  const [left, right] = text.includes('::') ? text.split('::') as [string, string] : [text, null];
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => parseInt(g, 16)));
  const l = parse(left);
  const r = right === null ? [] : parse(right);
  const groups = right === null ? l : [...l, ...new Array<number>(8 - l.length - r.length).fill(0), ...r];
  const out: number[] = [];
  for (const g of groups) out.push((g >> 8) & 0xff, g & 0xff);
  if (tail.length === 4) out.splice(12, 4, ...tail);
  return out;
}

/** One text form per address, for comparing (IPv4-mapped IPv6 → IPv4, IPv6 as 8 uncompressed groups); null when not an IP address. */
export function canonicalAddress(address: string): { family: 'ipv4' | 'ipv6'; address: string } | null {
  // isIPv4 accepts only canonical dotted quads (0-255, no leading zeros): the text is
  // already its canonical form (this runs several times per proxied connection).
  if (isIPv4(address)) return { family: 'ipv4', address };
  const plain = address.split('%')[0]!;
  if (!isIPv6(plain)) return null;
  const b = ipv6Bytes(plain);
  if (b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return { family: 'ipv4', address: b.slice(12).join('.') };
  const groups: string[] = [];
  for (let i = 0; i < 8; i++) groups.push(((b[2 * i]! << 8) | b[2 * i + 1]!).toString(16));
  return { family: 'ipv6', address: groups.join(':') };
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
