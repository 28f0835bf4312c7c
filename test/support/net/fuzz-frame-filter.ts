// The frame filter's invariant, for the `netstack` fuzz target: under a policy that
// allows some destinations and denies others, every frame the inner backend (passt's
// place) receives is a whole datagram (never a fragment), decodes, and is ARP, DHCP to
// passt, IPv6 neighbour discovery, or goes where the policy allows: judged here
// independently of the filter, after passt's mappings (the gateway is 127.0.0.1, the DNS
// forwarder's port 53 is the host's resolver). Unspecified destinations never pass.
// Frames toward the guest never carry more IP than its MTU.
//
// Structured scenarios feed it: whole datagrams and fragmented ones (in order, shuffled,
// with a piece missing, an exact duplicate, an overlap, or a later fragment whose data is
// a transport header for a denied port), IPv4/IPv6, TCP/UDP/ICMP, to the gateway, the
// forwarder, unspecified addresses, allowed and denied networks; and replies from the
// host up to 9000 bytes (cut to the guest's MTU when their flow is allowed).
import {
  decodeFrame, encodeEthernet, encodeIcmp, encodeIPv4, encodeIPv6, encodeTcp, encodeUdp, equalBytes, EtherType,
  formatIP, Icmp4, Icmp6, IpProto, ipv4FromString, TcpFlag,
} from '../../../netstack/index.js';
import { Policy, type Protocol } from '../../../src/policy/index.js';
import type { FrameBackend, FramePort } from '../../../netstack/frame-port.js';
import type { Prng } from '../prng.js';
import { isUnspecified } from '../../../src/frame-filter/frame-destination.js';
import { FramePolicyFilter } from '../../../src/frame-filter/frame-policy.js';

const GUEST = ipv4FromString('10.0.2.15')!;
const GW = ipv4FromString('10.0.2.2')!;
const FORWARDER = ipv4FromString('10.0.2.3')!;
const RESOLVER = '192.0.2.53';
const GUEST6 = Buffer.from('fd000001000000000000000000000015', 'hex');
const GMAC = Buffer.from('02000000000f', 'hex');
const PMAC = Buffer.from('9a55aa55aa55', 'hex');
const GUEST_MTU = 1500;
const MAX_FRAME = 65535;

/** Outbound only (inbound falls to the deny default), with a deny before a broad allow. */
export const INVARIANT_POLICY = new Policy({
  default: 'deny',
  rules: [
    { action: 'deny', cidr: '127.0.0.0/8', ports: 8001, name: 'loopback 8001' },
    { action: 'allow', direction: 'outbound', protocol: ['tcp', 'udp'], cidr: '127.0.0.1', ports: [8000, 8009], name: 'loopback 8000-8009' },
    { action: 'allow', direction: 'outbound', protocol: 'icmp', cidr: '127.0.0.1', name: 'ping host' },
    { action: 'allow', direction: 'outbound', protocol: 'udp', cidr: RESOLVER, ports: 53, name: 'resolver' },
    { action: 'allow', direction: 'outbound', cidr: ['203.0.113.0/24', 'fd00:1::/32'], name: 'allowed nets' },
    { action: 'deny', cidr: '127.0.0.0/8', name: 'no other loopback' },
    // Would allow 0.0.0.0:7 and [::]:7 if unspecified destinations were judged as text.
    { action: 'allow', direction: 'outbound', protocol: 'udp', cidr: ['0.0.0.0/0', '::/0'], ports: 7, name: 'echo anywhere' },
  ],
});

/** Why a frame the backend received breaks the invariant, or null. */
export function checkForwarded(frame: Buffer, policy: Policy): string | null {
  const d = decodeFrame(frame);
  if (!d.ok) return `forwarded a frame that does not decode: ${d.error}`;
  const v = d.value;
  if (v.eth.vlan !== null) return 'forwarded a VLAN-tagged frame';
  if (v.kind === 'arp') return null;
  if (v.kind === 'other') return 'forwarded a frame that is neither IP nor ARP';
  const { ip, l4 } = v;
  if (ip.fragment !== null) return 'forwarded a fragment';
  if (frame.length > MAX_FRAME) return `forwarded a ${frame.length}-byte frame`;
  if (isUnspecified(ip.dst)) return `forwarded to the unspecified address ${formatIP(ip.dst)}`;
  let protocol: Protocol;
  let port: number | undefined;
  if (l4.kind === 'tcp') {
    protocol = 'tcp';
    port = l4.tcp.dstPort;
  } else if (l4.kind === 'udp') {
    if (ip.family === 4 && l4.udp.srcPort === 68 && l4.udp.dstPort === 67 && (equalBytes(ip.dst, GW) || ip.dst.every((b) => b === 255))) return null;
    protocol = 'udp';
    port = l4.udp.dstPort;
  } else if (l4.kind === 'icmp') {
    const t = l4.icmp.type;
    const linkScope = (ip.dst[0] === 0xfe && (ip.dst[1]! & 0xc0) === 0x80) || (ip.dst[0] === 0xff && (ip.dst[1]! & 0x0f) === 0x02);
    if (ip.family === 6 && t >= Icmp6.RouterSolicit && t <= Icmp6.Redirect) return linkScope ? null : `forwarded neighbour discovery to ${formatIP(ip.dst)}`;
    if (t !== (ip.family === 4 ? Icmp4.Echo : Icmp6.Echo)) return `forwarded ICMP type ${t}`;
    protocol = 'icmp';
  } else {
    return `forwarded IP protocol ${ip.protocol}`;
  }
  let address = formatIP(ip.dst);
  if (equalBytes(ip.dst, GW)) address = '127.0.0.1';
  else if (equalBytes(ip.dst, FORWARDER) && port === 53) address = RESOLVER;
  const decision = policy.evaluate({ direction: 'outbound', protocol, address, ...(port !== undefined ? { port } : {}) });
  if (decision.action !== 'allow') return `forwarded ${protocol} to ${formatIP(ip.dst)}${port !== undefined ? `:${port}` : ''} (judged ${address}), which the policy denies (${decision.by})`;
  return null;
}

/** Why a frame for the guest breaks the invariant, or null. */
export function checkToGuest(frame: Buffer): string | null {
  const d = decodeFrame(frame);
  if (!d.ok) return `sent the guest a frame that does not decode: ${d.error}`;
  if (d.value.kind === 'ip' && d.value.ip.end - d.value.ip.offset > GUEST_MTU) return `sent the guest ${d.value.ip.end - d.value.ip.offset} bytes of IP (MTU ${GUEST_MTU})`;
  return null;
}

class CheckingBackend implements FrameBackend {
  port: FramePort | null = null;
  failure: string | null = null;
  forwarded = 0;
  attach(port: FramePort): void { this.port = port; }
  send(frame: Uint8Array): boolean {
    this.forwarded++;
    this.failure ??= checkForwarded(Buffer.from(frame), INVARIANT_POLICY);
    return true;
  }
  pause(): void {}
  resume(): void {}
  close(): void {}
}

function bytes(rng: Prng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let i = 0;
  for (; i + 4 <= n; i += 4) b.writeUInt32LE(rng.u32(), i);
  for (; i < n; i++) b[i] = rng.below(256);
  return b;
}

function destination(rng: Prng, v6: boolean): Uint8Array {
  if (v6) {
    const a = Buffer.alloc(16);
    switch (rng.below(7)) {
      case 6: a[12] = rng.below(256); a[15] = rng.below(3); return a; // ::a.b.c.d (IPv4-compatible), ::1
      case 4: a.writeUInt16BE(0xff02, 0); a[15] = 1; return a; // all nodes (neighbour discovery)
      case 5: a.writeUInt16BE(0xfe80, 0); a[15] = 2; return a; // link-local
      case 0: return a; // ::
      case 1: a.writeUInt16BE(0xffff, 10); a[13] = rng.below(256); return a; // ::ffff:0.x.y.z
      case 2: a.writeUInt32BE(0xfd000001, 0); a[15] = rng.below(256); return a; // allowed
      default: a.writeUInt32BE(0x20010db8, 0); a[15] = rng.below(256); return a; // denied
    }
  }
  switch (rng.below(7)) {
    case 0: return GW;
    case 1: return FORWARDER;
    case 2: return Uint8Array.of(0, rng.chance(0.5) ? 0 : rng.below(256), 0, rng.below(2)); // 0.0.0.0/8
    case 3: return Uint8Array.of(127, 0, 0, 1);
    case 4: return Uint8Array.of(203, 0, 113, rng.below(256));
    case 5: return Uint8Array.of(198, 51, 100, rng.below(256));
    default: return Uint8Array.of(255, 255, 255, 255);
  }
}

const PORTS = [7, 53, 67, 8000, 8001, 8005, 8010, 443] as const;

/** A transport message (header + data) from the guest to `dst`. */
function message(rng: Prng, v6: boolean, dst: Uint8Array, protocol: number, size: number, dstPort?: number): Buffer {
  const src = v6 ? GUEST6 : GUEST;
  const dp = dstPort ?? (rng.chance(0.8) ? rng.pick(PORTS) : rng.below(65536));
  const sp = rng.chance(0.1) ? 68 : 1024 + rng.below(64);
  const data = bytes(rng, size);
  if (protocol === IpProto.TCP) {
    const flags = rng.pick([TcpFlag.SYN, TcpFlag.SYN, TcpFlag.ACK, TcpFlag.SYN | TcpFlag.ACK, TcpFlag.FIN | TcpFlag.ACK, TcpFlag.RST, rng.below(256)]);
    return encodeTcp({ srcPort: sp, dstPort: dp, seq: rng.u32(), ack: rng.u32(), flags }, data, src, dst);
  }
  if (protocol === IpProto.UDP) return encodeUdp(sp, dp, data, src, dst);
  const type = rng.chance(0.8) ? (v6 ? Icmp6.Echo : Icmp4.Echo) : rng.below(256);
  return encodeIcmp(type, 0, rng.u32(), data, v6 ? { src, dst } : undefined);
}

function wrap(v6: boolean, packet: Buffer, toGuest = false): Buffer {
  return toGuest
    ? encodeEthernet(GMAC, PMAC, v6 ? EtherType.IPv6 : EtherType.IPv4, packet)
    : encodeEthernet(PMAC, GMAC, v6 ? EtherType.IPv6 : EtherType.IPv4, packet);
}

/**
 * What passt might answer a guest's TCP/UDP message with: one unfragmented packet from
 * its destination, up to 9000 bytes of data (above the guest's MTU half the time).
 */
function reply(rng: Prng, v6: boolean, peer: Uint8Array, msg: Buffer, protocol: number): Buffer | null {
  if ((protocol !== IpProto.TCP && protocol !== IpProto.UDP) || msg.length < 8) return null;
  const guest = v6 ? GUEST6 : GUEST;
  const sp = msg.readUInt16BE(2);
  const dp = msg.readUInt16BE(0);
  const data = bytes(rng, rng.below(9000));
  const l4 = protocol === IpProto.TCP
    ? encodeTcp({ srcPort: sp, dstPort: dp, seq: rng.u32(), ack: rng.u32(), flags: rng.chance(0.2) ? TcpFlag.SYN : TcpFlag.ACK }, data, peer, guest)
    : encodeUdp(sp, dp, data, peer, guest);
  const packet = v6 ? encodeIPv6({ src: peer, dst: guest, nextHeader: protocol }, l4) : encodeIPv4({ src: peer, dst: guest, protocol }, l4);
  return wrap(v6, packet, true);
}

/** The frames of one scenario: a datagram, whole or fragmented (maybe hostile), and a reply from the host. */
function scenario(rng: Prng): { frames: Buffer[]; reply: Buffer | null } {
  const v6 = rng.chance(0.3);
  const dst = destination(rng, v6);
  const protocol = rng.pick([IpProto.TCP, IpProto.UDP, IpProto.UDP, v6 ? IpProto.ICMPv6 : IpProto.ICMP, 47]);
  const size = rng.chance(0.02) ? rng.below(65_400) : rng.below(3000);
  const src = v6 ? GUEST6 : GUEST;
  const msg = protocol === 47 ? bytes(rng, size) : message(rng, v6, dst, protocol, size);
  const ip6 = (next: number, payload: Buffer): Buffer => encodeIPv6({ src, dst, nextHeader: next }, payload);
  if (!v6 && msg.length + 20 > 65535) return { frames: [], reply: null };
  const answer = rng.chance(0.5) ? reply(rng, v6, dst, msg, protocol) : null;
  if (!rng.chance(0.6)) return { frames: [wrap(v6, v6 ? ip6(protocol, msg.subarray(0, 65535)) : encodeIPv4({ src, dst, protocol }, msg))], reply: answer };
  // Fragments: pieces of a multiple of 8 bytes.
  const id = rng.below(4) === 0 ? 1 : rng.u32();
  const piece = 8 * (1 + rng.below(rng.chance(0.3) ? 8 : 185));
  const parts: Array<{ off: number; more: boolean; data: Buffer }> = [];
  for (let off = 0; off < msg.length || off === 0; off += piece) {
    parts.push({ off, more: off + piece < msg.length, data: msg.subarray(off, Math.min(msg.length, off + piece)) });
    if (parts.length > 300) break;
  }
  const hostile = rng.below(8);
  if (hostile === 0 && parts.length > 1) parts.splice(1 + rng.below(parts.length - 1), 1); // a piece missing
  if (hostile === 1) parts.push({ ...parts[rng.below(parts.length)]! }); // exact duplicate
  if (hostile === 2) {
    // An overlap rewriting part of the first piece (e.g. its ports).
    const off = 8 * rng.below(Math.max(1, Math.ceil(parts[0]!.data.length / 8)));
    parts.push({ off, more: true, data: bytes(rng, 8 * (1 + rng.below(4))) });
  }
  if (hostile === 3 || hostile === 4) {
    // A later fragment whose data is a header for a denied port (passt would read it as one).
    const evil = message(rng, v6, dst, protocol === 47 ? IpProto.UDP : protocol, rng.below(32), rng.pick([8001, 9999, 22]));
    const last = parts[parts.length - 1]!;
    const end = last.off + last.data.length;
    const off = hostile === 3 ? Math.ceil(end / 8) * 8 : 8 * (1 + rng.below(8));
    parts.push({ off, more: false, data: evil });
  }
  if (rng.chance(0.3)) for (let i = parts.length - 1; i > 0; i--) { const j = rng.below(i + 1); [parts[i], parts[j]] = [parts[j]!, parts[i]!]; }
  const out: Buffer[] = [];
  for (const p of parts) {
    if (!v6) {
      if (p.off + p.data.length > 65515) continue;
      out.push(wrap(false, encodeIPv4({ src, dst, protocol, id: id & 0xffff, fragmentOffset: p.off, moreFragments: p.more }, p.data)));
    } else {
      if (p.off > 0xfff8) continue;
      const fh = Buffer.alloc(8);
      fh[0] = protocol;
      fh.writeUInt16BE(p.off | (p.more ? 1 : 0), 2);
      fh.writeUInt32BE(id >>> 0, 4);
      out.push(wrap(true, ip6(44, Buffer.concat([fh, p.data]))));
    }
  }
  return { frames: out, reply: answer };
}

/** A filter under INVARIANT_POLICY whose inner backend checks every frame it gets. */
export function frameFilterInvariant(): {
  filter: FramePolicyFilter;
  /** Runs one structured scenario (and sweeps now and then). */
  run(rng: Prng, advance: number): void;
  /** The first violation since the last call, or null. */
  take(): string | null;
  /** Feeds any frame from the guest / from the host. */
  fromGuest(f: Buffer): void;
  fromHost(f: Buffer): void;
  stats(): { forwarded: number; toGuest: number };
  close(): void;
} {
  const inner = new CheckingBackend();
  let clock = 0;
  let toGuest = 0;
  let guestFailure: string | null = null;
  const filter = new FramePolicyFilter({
    inner, policy: INVARIANT_POLICY, gateway: '10.0.2.2', guestAddress: '10.0.2.15', guestAddress6: 'fd00:1::15', mapGatewayToHost: true, maxFlows: 256, deferReplies: false,
    dnsForward: { match: '10.0.2.3', upstream: RESOLVER }, guestMtu: GUEST_MTU, now: () => clock,
  });
  filter.attach({ deliver: (f) => { toGuest++; guestFailure ??= checkToGuest(f); }, writable: () => {}, closed: () => {} });
  return {
    filter,
    run(rng, advance) {
      clock += advance;
      const sc = scenario(rng);
      for (const f of sc.frames) filter.send(f);
      if (sc.reply !== null) inner.port!.deliver(sc.reply);
      if (rng.chance(0.01)) filter.sweep();
    },
    take() {
      const f = inner.failure ?? guestFailure;
      inner.failure = null;
      guestFailure = null;
      return f;
    },
    fromGuest(f) { filter.send(f); },
    fromHost(f) { inner.port!.deliver(f); },
    stats: () => ({ forwarded: inner.forwarded, toGuest }),
    close() { filter.close(); },
  };
}
