// Splitting an IP packet into fragments that fit a link's MTU (RFC 791 §3.2, RFC 8200
// §4.5): for frames toward a guest whose eth0 takes less than the backend sends (passt
// writes a whole UDP datagram, up to 64 KiB, as one frame; the guest takes 1500 bytes).
import { checksum } from './checksum.js';
import { Ipv6Ext } from './ipv6.js';
import type { IpFrame } from './packet.js';

/** Smallest MTU each family allows (RFC 791: 68; RFC 8200: 1280). */
export const MIN_MTU = { 4: 68, 6: 1280 } as const;

/**
 * The IP packet in `frame` as frames of at most `mtu` bytes of IP each, the Ethernet
 * header copied onto each. IPv4: the first fragment keeps the options, later ones have
 * a 20-byte header; DF is cleared (this is the link that cannot carry it whole). IPv6:
 * a fragment header follows the fixed header (and hop-by-hop options, which must stay
 * first). `id` names the datagram. null: the packet is already a fragment, or the MTU
 * is below the family's minimum.
 */
export function fragmentFrame(frame: Uint8Array, f: IpFrame, mtu: number, id: number): Buffer[] | null {
  const ip = f.ip;
  if (ip.fragment !== null || mtu < MIN_MTU[ip.family]) return null;
  return ip.family === 4 ? split4(frame, f, mtu, id) : split6(frame, f, mtu, id);
}

function split4(frame: Uint8Array, f: IpFrame, mtu: number, id: number): Buffer[] {
  const ip = f.ip;
  const eth = frame.subarray(0, ip.offset);
  const data = frame.subarray(ip.payloadOffset, ip.end);
  const firstHl = ip.payloadOffset - ip.offset;
  const out: Buffer[] = [];
  let off = 0;
  do {
    const hl = off === 0 ? firstHl : 20;
    const n = Math.min(Math.floor((mtu - hl) / 8) * 8, data.length - off);
    const more = off + n < data.length;
    const pkt = Buffer.allocUnsafe(eth.length + hl + n);
    const p = eth.length;
    pkt.set(eth, 0);
    pkt.set(frame.subarray(ip.offset, ip.offset + hl), p);
    pkt[p] = 0x40 | (hl / 4);
    pkt.writeUInt16BE(hl + n, p + 2);
    pkt.writeUInt16BE(id & 0xffff, p + 4);
    pkt.writeUInt16BE((more ? 0x2000 : 0) | (off / 8), p + 6);
    pkt.writeUInt16BE(0, p + 10);
    pkt.writeUInt16BE(checksum(pkt, p, p + hl), p + 10);
    pkt.set(data.subarray(off, off + n), p + hl);
    out.push(pkt);
    off += n;
  } while (off < data.length);
  return out;
}

function split6(frame: Uint8Array, f: IpFrame, mtu: number, id: number): Buffer[] | null {
  const ip = f.ip;
  const eth = frame.subarray(0, ip.offset);
  // The unfragmentable part: the fixed header, and hop-by-hop options if present.
  let unfragEnd = ip.offset + 40;
  let nextAt = ip.offset + 6;
  if (frame[nextAt] === Ipv6Ext.HopByHop) {
    if (ip.end - unfragEnd < 8) return null;
    nextAt = unfragEnd;
    unfragEnd += (frame[unfragEnd + 1]! + 1) * 8;
    if (unfragEnd > ip.end) return null;
  }
  const unfrag = frame.subarray(ip.offset, unfragEnd);
  const data = frame.subarray(unfragEnd, ip.end);
  const proto = frame[nextAt]!;
  const room = Math.floor((mtu - unfrag.length - 8) / 8) * 8;
  if (room <= 0) return null;
  const out: Buffer[] = [];
  let off = 0;
  do {
    const n = Math.min(room, data.length - off);
    const more = off + n < data.length;
    const pkt = Buffer.allocUnsafe(eth.length + unfrag.length + 8 + n);
    const p = eth.length;
    pkt.set(eth, 0);
    pkt.set(unfrag, p);
    pkt.writeUInt16BE(unfrag.length - 40 + 8 + n, p + 4);
    pkt[p + (nextAt - ip.offset)] = Ipv6Ext.Fragment;
    const fh = p + unfrag.length;
    pkt[fh] = proto;
    pkt[fh + 1] = 0;
    pkt.writeUInt16BE(off | (more ? 1 : 0), fh + 2);
    pkt.writeUInt32BE(id >>> 0, fh + 4);
    pkt.set(data.subarray(off, off + n), fh + 8);
    out.push(pkt);
    off += n;
  } while (off < data.length);
  return out;
}
