// IP address text ↔ bytes, and one canonical form for comparing addresses (the policy
// layer and the proxies both need it).
import { isIPv4, isIPv6 } from 'node:net';

export function ipv4Bytes(address: string): number[] {
  const parts = address.split('.');
  const out = new Array<number>(parts.length);
  for (let i = 0; i < parts.length; i++) out[i] = Number(parts[i]) & 0xff;
  return out;
}

/** 16 bytes of an IPv6 text address (with :: compression and a dotted IPv4 tail). */
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

/** Normalizes an address for comparison (IPv4-mapped IPv6 → IPv4, IPv6 in full form). */
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

