// One Ethernet frame decoded down to what a filter needs: ARP, or IPv4/IPv6 with the
// transport ports (TCP, UDP), ICMP type/code/id, and fragment facts. A fragment (first
// or later) has no transport: its headers mean something only after reassembly
// (netstack/reassembly.ts). Never throws: anything malformed is a { ok: false } result.
import { parseArp, type ArpPacket } from './arp.js';
import { EtherType, parseEthernet, type EthernetFrame } from './ethernet.js';
import { parseIcmp, type IcmpMessage } from './icmp.js';
import { IpProto, parseIPv4 } from './ipv4.js';
import { parseIPv6 } from './ipv6.js';
import { fail, ok, type ParseResult } from './result.js';
import { parseTcp, type TcpSegment } from './tcp.js';
import { parseUdp, type UdpDatagram } from './udp.js';

export interface IpInfo {
  family: 4 | 6;
  src: Uint8Array;
  dst: Uint8Array;
  /** Upper-layer protocol number. */
  protocol: number;
  /** [offset, end) of the IP packet in the frame, and where its upper-layer data starts. */
  offset: number;
  payloadOffset: number;
  end: number;
  /** null: not a fragment. */
  fragment: IpFragment | null;
}

/** Where a fragment's pieces lie in its frame (offsets are into the frame). */
export interface IpFragment {
  id: number;
  /** Offset 0. */
  first: boolean;
  more: boolean;
  /** Byte offset of this fragment's data in the datagram. */
  offset: number;
  /** The fragment's data is [dataOffset, ip.end). */
  dataOffset: number;
  /** The header a reassembled packet keeps: IPv4's header, IPv6's header up to the fragment header. */
  headerEnd: number;
  /** The protocol of the reassembled data, and (IPv6) the byte naming the fragment header, or -1. */
  nextHeader: number;
  nextHeaderAt: number;
}

export type Transport =
  | { kind: 'tcp'; tcp: TcpSegment }
  | { kind: 'udp'; udp: UdpDatagram }
  | { kind: 'icmp'; icmp: IcmpMessage }
  /** Another protocol, or a fragment (its headers are read after reassembly). */
  | { kind: 'none' };

export type DecodedFrame =
  | { kind: 'arp'; eth: EthernetFrame; arp: ArpPacket }
  | { kind: 'ip'; eth: EthernetFrame; ip: IpInfo; l4: Transport }
  | { kind: 'other'; eth: EthernetFrame };

export type IpFrame = Extract<DecodedFrame, { kind: 'ip' }>;

export function decodeFrame(frame: Uint8Array): ParseResult<DecodedFrame> {
  const e = parseEthernet(frame);
  if (!e.ok) return e;
  const eth = e.value;
  if (eth.etherType === EtherType.ARP) {
    const a = parseArp(frame, eth.payloadOffset);
    return a.ok ? ok({ kind: 'arp', eth, arp: a.value }) : a;
  }
  let ip: IpInfo;
  if (eth.etherType === EtherType.IPv4) {
    const r = parseIPv4(frame, eth.payloadOffset);
    if (!r.ok) return r;
    const v = r.value;
    const isFrag = v.moreFragments || v.fragmentOffset !== 0;
    ip = {
      family: 4, src: v.src, dst: v.dst, protocol: v.protocol, offset: v.offset, payloadOffset: v.payloadOffset, end: v.end,
      fragment: isFrag
        ? { id: v.id, first: v.fragmentOffset === 0, more: v.moreFragments, offset: v.fragmentOffset, dataOffset: v.payloadOffset, headerEnd: v.payloadOffset, nextHeader: v.protocol, nextHeaderAt: -1 }
        : null,
    };
  } else if (eth.etherType === EtherType.IPv6) {
    const r = parseIPv6(frame, eth.payloadOffset);
    if (!r.ok) return r;
    const v = r.value;
    const fr = v.fragment;
    ip = {
      family: 6, src: v.src, dst: v.dst, protocol: v.protocol, offset: v.offset, payloadOffset: v.payloadOffset, end: v.end,
      fragment: fr === null
        ? null
        : { id: fr.id, first: fr.offset === 0, more: fr.more, offset: fr.offset, dataOffset: fr.headerOffset + 8, headerEnd: fr.headerOffset, nextHeader: fr.nextHeader, nextHeaderAt: fr.nextHeaderAt },
    };
  } else {
    return ok({ kind: 'other', eth });
  }
  if (ip.fragment !== null) return ok({ kind: 'ip', eth, ip, l4: { kind: 'none' } });
  const l4 = decodeTransport(frame, ip);
  if (!l4.ok) return l4;
  return ok({ kind: 'ip', eth, ip, l4: l4.value });
}

function decodeTransport(b: Uint8Array, ip: IpInfo): ParseResult<Transport> {
  const { payloadOffset: off, end } = ip;
  switch (ip.protocol) {
    case IpProto.TCP: {
      const r = parseTcp(b, off, end);
      return r.ok ? ok({ kind: 'tcp', tcp: r.value }) : r;
    }
    case IpProto.UDP: {
      const r = parseUdp(b, off, end);
      return r.ok ? ok({ kind: 'udp', udp: r.value }) : r;
    }
    case IpProto.ICMP:
    case IpProto.ICMPv6: {
      if ((ip.protocol === IpProto.ICMP) !== (ip.family === 4)) return fail(`ip: ICMP protocol ${ip.protocol} in IPv${ip.family}`);
      const r = parseIcmp(b, off, end);
      return r.ok ? ok({ kind: 'icmp', icmp: r.value }) : r;
    }
    default:
      return ok({ kind: 'none' });
  }
}
