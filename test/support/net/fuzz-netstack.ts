// Fuzz target `netstack`: random valid frames (Ethernet ± 802.1Q, ARP, IPv4 with options
// and fragments, IPv6 with extension headers, TCP, UDP, ICMP/ICMPv6) must decode to what
// was encoded, with valid checksums; mutated and random frames must decode to a typed
// result (never throw) whose offsets stay inside the frame; and the frame policy filter
// must take all of them, both ways, without throwing, answering only with frames that
// decode, and keep its invariant (fuzz-frame-filter.ts: only whole datagrams to allowed
// destinations reach the backend) on them and on structured fragment scenarios.
// Nothing touches a network.
import {
  decodeFrame, encodeArp, encodeEthernet, encodeIcmp, encodeIPv4, encodeIPv6, encodeTcp, encodeUdp, EtherType,
  IpProto, pseudoHeaderSum, sum16, fold, type DecodedFrame,
} from '../../../netstack/index.js';
import type { FuzzTarget } from '../fuzz-target.js';
import type { Prng } from '../prng.js';
import { frameFilterInvariant } from './fuzz-frame-filter.js';

export interface BuiltFrame {
  frame: Buffer;
  /** What decodeFrame must report. */
  expect: { kind: 'arp' | 'ip' | 'other'; family?: 4 | 6; protocol?: number; l4?: 'tcp' | 'udp' | 'icmp' | 'none'; srcPort?: number; dstPort?: number; payload?: number; vlan: number | null };
}

const bytes = (rng: Prng, n: number): Buffer => {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = rng.below(256);
  return b;
};

/** A random valid frame and what it must decode to. */
export function randomFrame(rng: Prng): BuiltFrame {
  const mac1 = bytes(rng, 6);
  const mac2 = bytes(rng, 6);
  const vlan = rng.chance(0.1) ? rng.below(4096) : null;
  const wrap = (etherType: number, payload: Uint8Array): Buffer => {
    if (vlan === null) return encodeEthernet(mac1, mac2, etherType, payload);
    const tag = Buffer.alloc(4 + payload.length);
    tag.writeUInt16BE(vlan, 0);
    tag.writeUInt16BE(etherType, 2);
    tag.set(payload, 4);
    return encodeEthernet(mac1, mac2, EtherType.VLAN, tag);
  };
  const kind = rng.below(10);
  if (kind === 0) {
    const arp = encodeArp({ op: 1 + rng.below(2), senderMac: mac2, senderIp: bytes(rng, 4), targetMac: mac1, targetIp: bytes(rng, 4) });
    return { frame: wrap(EtherType.ARP, arp), expect: { kind: 'arp', vlan } };
  }
  if (kind === 1) return { frame: wrap(0x0600 + rng.below(0x100), bytes(rng, rng.below(64))), expect: { kind: 'other', vlan } };
  const v6 = rng.chance(0.4);
  const src = bytes(rng, v6 ? 16 : 4);
  const dst = bytes(rng, v6 ? 16 : 4);
  const payload = bytes(rng, rng.below(300));
  const which = rng.pick(['tcp', 'udp', 'icmp', 'none'] as const);
  const sp = rng.below(65536);
  const dp = rng.below(65536);
  let l4: Buffer;
  let protocol: number;
  if (which === 'tcp') {
    protocol = IpProto.TCP;
    l4 = encodeTcp({ srcPort: sp, dstPort: dp, seq: rng.u32(), ack: rng.u32(), flags: rng.below(256), window: rng.below(65536), ...(rng.chance(0.3) ? { options: bytes(rng, 1 + rng.below(40)) } : {}) }, payload, src, dst);
  } else if (which === 'udp') {
    protocol = IpProto.UDP;
    l4 = encodeUdp(sp, dp, payload, src, dst);
  } else if (which === 'icmp') {
    protocol = v6 ? IpProto.ICMPv6 : IpProto.ICMP;
    l4 = encodeIcmp(rng.below(256), rng.below(256), rng.u32(), payload, v6 ? { src, dst } : undefined);
  } else {
    protocol = rng.pick([47, 132, 253]);
    l4 = payload;
  }
  let packet: Buffer;
  if (!v6) {
    packet = encodeIPv4({ src, dst, protocol, ttl: rng.below(256), id: rng.below(65536), dontFragment: rng.chance(0.5), ...(rng.chance(0.2) ? { options: bytes(rng, 1 + rng.below(40)) } : {}) }, l4);
  } else {
    // 0-3 extension headers (hop-by-hop first, then destination options / routing).
    const exts: Array<{ type: number; body: Buffer }> = [];
    const n = rng.below(4);
    for (let i = 0; i < n; i++) {
      const type = i === 0 && rng.chance(0.5) ? 0 : rng.pick([43, 60]);
      const len = 8 * (1 + rng.below(3));
      exts.push({ type, body: bytes(rng, len) });
    }
    let next = protocol;
    let chain: Buffer = l4;
    for (let i = exts.length - 1; i >= 0; i--) {
      const e = exts[i]!;
      e.body[0] = next;
      e.body[1] = e.body.length / 8 - 1;
      chain = Buffer.concat([e.body, chain]);
      next = e.type;
    }
    packet = encodeIPv6({ src, dst, nextHeader: next, hopLimit: rng.below(256) }, chain);
  }
  const frame = wrap(v6 ? EtherType.IPv6 : EtherType.IPv4, packet);
  const pad = rng.chance(0.2) ? Buffer.alloc(rng.below(40)) : null; // Ethernet padding
  return {
    frame: pad ? Buffer.concat([frame, pad]) : frame,
    expect: { kind: 'ip', family: v6 ? 6 : 4, protocol, l4: which, srcPort: sp, dstPort: dp, payload: payload.length, vlan },
  };
}

/** Why a decoded frame does not match what was built, or null. */
export function checkRoundTrip(b: BuiltFrame, d: DecodedFrame): string | null {
  const e = b.expect;
  if (d.kind !== e.kind) return `kind ${d.kind}, built ${e.kind}`;
  if (d.eth.vlan !== e.vlan) return `vlan ${d.eth.vlan}, built ${e.vlan}`;
  if (d.kind !== 'ip') return null;
  if (d.ip.family !== e.family || d.ip.protocol !== e.protocol) return `ip ${d.ip.family}/${d.ip.protocol}, built ${e.family}/${e.protocol}`;
  if (d.l4.kind !== e.l4) return `l4 ${d.l4.kind}, built ${e.l4}`;
  const f = b.frame;
  const pseudo = (len: number): number => pseudoHeaderSum(d.ip.src, d.ip.dst, d.ip.protocol, len);
  if (d.l4.kind === 'tcp' || d.l4.kind === 'udp') {
    const s = d.l4.kind === 'tcp' ? d.l4.tcp : d.l4.udp;
    if (s.srcPort !== e.srcPort || s.dstPort !== e.dstPort) return 'ports differ';
    if (s.end - s.payloadOffset !== e.payload) return `payload ${s.end - s.payloadOffset}, built ${e.payload}`;
    const start = d.ip.payloadOffset;
    if (fold(sum16(f, start, s.end, pseudo(s.end - start))) !== 0xffff) return `${d.l4.kind} checksum does not verify`;
  }
  if (d.l4.kind === 'icmp') {
    const m = d.l4.icmp;
    if (m.end - m.payloadOffset !== e.payload) return 'icmp payload differs';
    const acc = d.ip.family === 6 ? pseudo(m.end - d.ip.payloadOffset) : 0;
    if (fold(sum16(f, d.ip.payloadOffset, m.end, acc)) !== 0xffff) return 'icmp checksum does not verify';
  }
  return null;
}

/** Why a decoded (possibly hostile) frame's offsets leave the frame, or null. */
export function checkBounds(len: number, d: DecodedFrame): string | null {
  if (d.eth.payloadOffset > len) return 'ethernet payload past the frame';
  if (d.kind !== 'ip') return null;
  const ip = d.ip;
  if (!(ip.offset <= ip.payloadOffset && ip.payloadOffset <= ip.end && ip.end <= len)) return `ip offsets ${ip.offset}/${ip.payloadOffset}/${ip.end} of ${len}`;
  const l = d.l4;
  const s = l.kind === 'tcp' ? l.tcp : l.kind === 'udp' ? l.udp : l.kind === 'icmp' ? l.icmp : null;
  if (s !== null && !(ip.payloadOffset <= s.payloadOffset && s.payloadOffset <= s.end && s.end <= ip.end)) return `${l.kind} offsets out of the packet`;
  return null;
}

export function mutate(rng: Prng, src: Buffer): Buffer {
  let b = Buffer.from(src);
  const n = 1 + rng.below(4);
  for (let i = 0; i < n; i++) {
    switch (rng.below(6)) {
      case 0: if (b.length > 0) b[rng.below(b.length)]! ^= 1 << rng.below(8); break;
      case 1: b = b.subarray(0, rng.below(b.length + 1)); break;
      case 2: b = Buffer.concat([b, bytes(rng, rng.below(64))]); break;
      case 3: if (b.length > 2) b.writeUInt16BE(rng.pick([0, 1, 0xffff, rng.below(65536), b.length, b.length - 14]) & 0xffff, rng.below(b.length - 1)); break;
      case 4: if (b.length > 0) b[rng.below(b.length)] = rng.pick([0, 0xff, 0x45, 0x4f, 0x60, 0x06, 0x11, 0x2c, 0x3a]); break;
      default: if (b.length > 0) b[rng.below(b.length)] = rng.below(256);
    }
  }
  return b;
}

/** Flows the invariant's filter tracks at most. */
const MAX_FLOWS = 256;

export function netstackTarget(): FuzzTarget & { iterate(rng: Prng): string | null } {
  const inv = frameFilterInvariant();
  return {
    iterate(rng: Prng): string | null {
      const built = randomFrame(rng);
      const d = decodeFrame(built.frame);
      if (!d.ok) return `valid frame refused: ${d.error}`;
      const rt = checkRoundTrip(built, d.value);
      if (rt !== null) return `round trip: ${rt}`;
      const inputs = [built.frame, mutate(rng, built.frame), mutate(rng, built.frame), bytes(rng, rng.below(120))];
      for (const f of inputs) {
        let r;
        try {
          r = decodeFrame(f);
        } catch (err) {
          return `decodeFrame threw ${String(err)} on ${f.toString('hex')}`;
        }
        if (r.ok) {
          const bad = checkBounds(f.length, r.value);
          if (bad !== null) return `${bad} on ${f.toString('hex')}`;
        } else if (typeof r.error !== 'string') return 'error is not a string';
        try {
          inv.fromGuest(f);
          inv.fromHost(f);
        } catch (err) {
          return `filter threw ${String(err)} on ${f.toString('hex')}`;
        }
        const broken = inv.take();
        if (broken !== null) return `${broken} (input ${f.toString('hex').slice(0, 400)})`;
      }
      try {
        inv.run(rng, rng.below(5000));
      } catch (err) {
        return `filter threw ${String(err)} in a fragment scenario`;
      }
      const broken = inv.take();
      if (broken !== null) return `${broken} (fragment scenario)`;
      if (inv.filter.stats().flows > MAX_FLOWS) return `flow table over its bound: ${inv.filter.stats().flows}`;
      return null;
    },
    close(): void { inv.close(); },
  };
}
