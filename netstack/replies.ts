// Frames a filter sends back to the sender of a packet it refused: a TCP RST (the
// sender's connect() fails with ECONNREFUSED) or an ICMP/ICMPv6 destination
// unreachable (port unreachable, administratively prohibited) quoting the packet.
import { encodeEthernet, EtherType } from './ethernet.js';
import { encodeIcmp, ICMP4_QUOTE_MAX, ICMP6_QUOTE_MAX, Icmp4, Icmp6 } from './icmp.js';
import { encodeIPv4, IpProto } from './ipv4.js';
import { encodeIPv6 } from './ipv6.js';
import type { IpFrame, IpInfo } from './packet.js';
import { encodeTcp, TcpFlag, type TcpSegment } from './tcp.js';

/** Wraps an upper-layer message in IP + Ethernet, addressed back to the frame's sender. */
function back(f: IpFrame, protocol: number, msg: Uint8Array): Buffer {
  const ip = f.ip;
  const packet = ip.family === 4
    ? encodeIPv4({ src: ip.dst, dst: ip.src, protocol, ttl: 64 }, msg)
    : encodeIPv6({ src: ip.dst, dst: ip.src, nextHeader: protocol, hopLimit: 64 }, msg);
  return encodeEthernet(f.eth.src, f.eth.dst, ip.family === 4 ? EtherType.IPv4 : EtherType.IPv6, packet);
}

/** The RST answering `seg` (RFC 9293 §3.10.7.1: reset for a segment with no connection). */
export function tcpReset(f: IpFrame, seg: TcpSegment): Buffer | null {
  if (seg.flags & TcpFlag.RST) return null; // never answer a reset
  const len = seg.end - seg.payloadOffset + (seg.flags & TcpFlag.SYN ? 1 : 0) + (seg.flags & TcpFlag.FIN ? 1 : 0);
  const fields = seg.flags & TcpFlag.ACK
    ? { srcPort: seg.dstPort, dstPort: seg.srcPort, seq: seg.ack, ack: 0, flags: TcpFlag.RST }
    : { srcPort: seg.dstPort, dstPort: seg.srcPort, seq: 0, ack: (seg.seq + len) >>> 0, flags: TcpFlag.RST | TcpFlag.ACK };
  return back(f, IpProto.TCP, encodeTcp(fields, new Uint8Array(0), f.ip.dst, f.ip.src));
}

export type UnreachableReason = 'port' | 'prohibited';

/** Destination unreachable for the packet in `frame` (IPv4 type 3 code 3/13; IPv6 type 1 code 4/1). */
export function unreachable(frame: Uint8Array, f: IpFrame, reason: UnreachableReason): Buffer {
  const ip: IpInfo = f.ip;
  if (ip.family === 4) {
    const quote = frame.subarray(ip.offset, Math.min(ip.end, ip.offset + ICMP4_QUOTE_MAX));
    return back(f, IpProto.ICMP, encodeIcmp(Icmp4.Unreachable, reason === 'port' ? 3 : 13, 0, quote));
  }
  const quote = frame.subarray(ip.offset, Math.min(ip.end, ip.offset + ICMP6_QUOTE_MAX));
  return back(f, IpProto.ICMPv6, encodeIcmp(Icmp6.Unreachable, reason === 'port' ? 4 : 1, 0, quote, { src: ip.dst, dst: ip.src }));
}
