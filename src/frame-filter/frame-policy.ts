// The egress Policy on the virtio-net path: a FrameBackend that sits between the
// NetDevice and the real backend (passt) and decides every frame (docs/netstack.md).
//
//  - Only whole datagrams are judged and forwarded: fragments (IPv4, IPv6) are
//    reassembled here (netstack/reassembly.ts, bounded) and the whole datagram goes on
//    as ONE frame, or not at all; passt does not reassemble and would read a later
//    fragment's data as a transport header. Toward the guest, packets larger than its
//    MTU are fragmented (passt sends whole datagrams up to 64 KiB).
//  - Guest frames must come from the guest's own address (see #sourceOk).
//  - ARP passes. DHCP (udp 68→67 to the gateway or broadcast) passes. IPv6 neighbour
//    discovery passes to link-scope destinations.
//  - A new flow is evaluated once: TCP on a SYN without ACK, UDP per 5-tuple, ICMP echo
//    per identifier. The policy sees the address the HOST will reach (frame-destination.ts):
//    the gateway as 127.0.0.1, passt's DNS forwarder on port 53 as the host's resolver;
//    unspecified destinations (0.0.0.0/8, ::) are denied without asking.
//  - Allowed flows go into a bounded table (frame-flows.ts: LRU, idle timeouts); their later frames,
//    both ways, pass without re-evaluation. TCP flows end on RST or FIN both ways (a
//    short linger lets the last ACKs through), UDP/ICMP flows on idle.
//  - Denied TCP: dropped, and the guest gets a RST (connect() fails with ECONNREFUSED).
//    Denied UDP: dropped, the guest gets ICMP port unreachable. Denied ICMP echo: ICMP
//    administratively prohibited. TCP segments of no known flow (not a SYN) get a RST.
//  - 802.1Q-tagged frames, malformed frames and other IP protocols are dropped.
//  - host→guest: frames of known flows pass; a new TCP SYN or UDP flow from the host
//    side (passt / gvproxy port forwards) is evaluated as 'inbound' with the source
//    address (gvproxy's gateway: as 127.0.0.1) and the guest port being reached;
//    ICMP errors and ARP pass; the rest is dropped.
//
// Every decision is taken on the bytes that are forwarded: the device hands us a copy
// of the guest's frame (netstack/frame-port.ts), never a view of guest memory.
//
// One `net.flow` line per flow when it ends, through the sandbox's rate-limited log:
// { event: 'net.flow', kind: 'frame', protocol, direction, decision, rule, src, dst,
//   hostDst, bytesFromGuest, bytesToGuest, durationMs, closeReason } (bytes are
// transport payload bytes: TCP/UDP data, whole ICMP messages).
import type { Logger } from 'pino';
import { isIPv6 } from 'node:net';
import {
  decodeFrame, equalBytes, fragmentFrame, formatIP, ipv4FromString, Reassembler, tcpReset, TcpFlag, unreachable, Icmp4, Icmp6,
  type DecodedFrame, type IpFrame, type ReassemblyLimits,
} from '../../netstack/index.js';
import { TsiboxError } from '../errors.js';
import { ipv6Bytes } from '../../netstack/address.js';
import { RateLimitedLog } from '../log-rate.js';
import type { FrameBackend, FramePort } from '../../netstack/frame-port.js';
import type { Decision, Direction, Policy, Protocol } from '../policy/index.js';
import { FrameDestinations } from './frame-destination.js';
import { FlowTable, type Flow, type FlowRecord } from './frame-flows.js';

export type { FlowRecord } from './frame-flows.js';

export interface FramePolicyOptions {
  /** Where allowed frames go. */
  inner: FrameBackend;
  policy: Policy;
  /** The guest's gateway (IPv4). */
  gateway: string;
  /**
   * The guest's own IPv4 address (passt's `-a`). Guest frames from any other source are
   * dropped: passt remembers the source of guest frames (`addr_seen`) and may send later
   * "gateway" traffic there, so a forged source would redirect allowed flows.
   */
  guestAddress: string;
  /** The guest's own global IPv6 address, if it has one (link-local sources always pass). */
  guestAddress6?: string;
  /** Whether the backend maps the gateway to the host's loopback (passt's default: true). */
  mapGatewayToHost: boolean;
  /**
   * passt's DNS forwarder: queries to `match` port 53 are judged as what passt makes of
   * them, udp/tcp to `upstream` port 53 (the host's resolver). Absent: no forwarder.
   */
  dnsForward?: { match: string; upstream: string };
  /** Addresses the backend NATs to host addresses (gvproxy: 192.168.127.254 → 127.0.0.1). */
  hostAliases?: ReadonlyArray<readonly [alias: string, host: string]>;
  /**
   * 'explicit' (gvproxy): the gateway's own services other than DNS (gvproxy's HTTP API
   * on port 80, which can open host listeners) are allowed only by a rule naming the
   * gateway's address exactly (`cidr: '192.168.127.1'` or '/32'), never by a wider one;
   * inbound flows from the gateway (published ports) are judged as from 127.0.0.1.
   */
  gatewayServices?: 'none' | 'explicit';
  /** The sandbox's rate-limited log for net.flow lines (default: one made from `logger`). */
  log?: RateLimitedLog;
  /** Sees every finished flow record (never rate-limited; Sandbox 'connection' events). */
  onFlow?: (rec: FlowRecord) => void;
  logger?: Logger;
  /** Flows tracked at most (default 4096); the least recently used is evicted. */
  maxFlows?: number;
  /** Idle time after which a flow is forgotten: TCP (default 600 s), UDP/ICMP (default 60 s). */
  tcpIdleMs?: number;
  udpIdleMs?: number;
  /** How long a closed TCP flow still passes trailing segments (default 5 s). */
  lingerMs?: number;
  /** The guest's MTU: larger packets toward it are fragmented (default 1500, eth0's). */
  guestMtu?: number;
  /** Largest frame the backend takes (default 65535, passt's); larger datagrams are dropped. */
  maxFrame?: number;
  /** Limits of each direction's reassembly (netstack/reassembly.ts defaults). */
  reassembly?: ReassemblyLimits;
  /** A clock (tests). */
  now?: () => number;
  /** Deliver RST/ICMP replies in a microtask (default true); false: at once (fuzzing). */
  deferReplies?: boolean;
}

export interface FramePolicyStats {
  passedFromGuest: number;
  droppedFromGuest: number;
  passedToGuest: number;
  droppedToGuest: number;
  repliesToGuest: number;
  malformed: number;
  flows: number;
  evicted: number;
  /** Datagrams reassembled from fragments (both ways). */
  reassembled: number;
  /** Fragments held or dropped by reassembly (both ways); see reassembly stats for why. */
  fragmentsIn: number;
  /** Reassembled datagrams larger than `maxFrame`, dropped. */
  tooBig: number;
  /** Packets for the guest split to its MTU, and the frames that made. */
  fragmentedToGuest: number;
  fragmentFramesToGuest: number;
  /** Guest frames whose source address (IP, or ARP sender) was not the guest's: dropped. */
  spoofed: number;
}

export class FramePolicyFilter implements FrameBackend {
  readonly #inner: FrameBackend;
  readonly #policy: Policy;
  readonly #dest: FrameDestinations;
  readonly #log: RateLimitedLog | undefined;
  readonly #flows: FlowTable;
  /** How often the timer sweeps (ms). */
  readonly #sweepEvery: number;
  readonly #guestMtu: number;
  readonly #maxFrame: number;
  readonly #now: () => number;
  readonly #defer: boolean;
  /** One per direction: a guest must not be able to complete a datagram with host fragments. */
  readonly #fromGuestFrags: Reassembler;
  readonly #toGuestFrags: Reassembler;
  #fragId = 0;
  #port: FramePort | null = null;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;
  readonly #stats: Omit<FramePolicyStats, 'flows' | 'evicted'> = {
    passedFromGuest: 0, droppedFromGuest: 0, passedToGuest: 0, droppedToGuest: 0, repliesToGuest: 0, malformed: 0,
    reassembled: 0, fragmentsIn: 0, tooBig: 0, fragmentedToGuest: 0, fragmentFramesToGuest: 0, spoofed: 0,
  };
  readonly #guest4: Uint8Array;
  readonly #guest6: Uint8Array | null;
  static readonly RECENT_MAX = FlowTable.RECENT_MAX;

  constructor(o: FramePolicyOptions) {
    const g4 = ipv4FromString(o.guestAddress);
    if (g4 === null) throw new TsiboxError('INVALID_ARGUMENT', `frame filter: guestAddress ${JSON.stringify(o.guestAddress)} is not an IPv4 address`);
    this.#guest4 = g4;
    this.#guest6 = null;
    if (o.guestAddress6 !== undefined) {
      if (!isIPv6(o.guestAddress6)) throw new TsiboxError('INVALID_ARGUMENT', `frame filter: guestAddress6 ${JSON.stringify(o.guestAddress6)} is not an IPv6 address`);
      this.#guest6 = Uint8Array.from(ipv6Bytes(o.guestAddress6));
    }
    this.#inner = o.inner;
    this.#policy = o.policy;
    this.#dest = new FrameDestinations({
      gateway: o.gateway, mapGatewayToHost: o.mapGatewayToHost, ...(o.dnsForward ? { dnsForward: o.dnsForward } : {}),
      ...(o.hostAliases ? { hostAliases: o.hostAliases } : {}), ...(o.gatewayServices ? { gatewayServices: o.gatewayServices } : {}),
    });
    this.#log = o.log ?? (o.logger ? new RateLimitedLog(o.logger) : undefined);
    const udpIdleMs = o.udpIdleMs ?? 60_000;
    const lingerMs = o.lingerMs ?? 5_000;
    this.#flows = new FlowTable({ maxFlows: Math.max(1, o.maxFlows ?? 4096), tcpIdleMs: o.tcpIdleMs ?? 600_000, udpIdleMs, lingerMs, log: this.#log, ...(o.onFlow ? { onRecord: o.onFlow } : {}) });
    this.#sweepEvery = Math.max(1000, Math.min(udpIdleMs, lingerMs) / 2);
    this.#guestMtu = o.guestMtu ?? 1500;
    this.#maxFrame = o.maxFrame ?? 65535;
    this.#now = o.now ?? (() => performance.now());
    this.#defer = o.deferReplies ?? true;
    this.#fromGuestFrags = new Reassembler(o.reassembly);
    this.#toGuestFrags = new Reassembler(o.reassembly);
  }

  stats(): FramePolicyStats {
    return { ...this.#stats, flows: this.#flows.size, evicted: this.#flows.evicted };
  }

  /** Finished flow records (tests inspect them; capped; never rate-limited). */
  get recent(): readonly FlowRecord[] {
    return this.#flows.recent;
  }

  /** Reassembly counters, per direction. */
  reassemblyStats(): { fromGuest: ReturnType<Reassembler['stats']>; toGuest: ReturnType<Reassembler['stats']> } {
    return { fromGuest: this.#fromGuestFrags.stats(), toGuest: this.#toGuestFrags.stats() };
  }

  // ---- FrameBackend (the device's side) ----

  attach(port: FramePort): void {
    this.#port = port;
    this.#inner.attach({
      deliver: (frame) => { this.#fromHost(frame, port); },
      writable: () => { port.writable(); },
      closed: (reason) => { port.closed(reason); },
    });
    this.#timer = setInterval(() => { this.sweep(); }, this.#sweepEvery);
    this.#timer.unref();
  }

  send(frame: Uint8Array): boolean {
    if (this.#closed) return true;
    const out = this.#fromGuest(frame);
    if (out === null) {
      this.#stats.droppedFromGuest++;
      return true;
    }
    this.#stats.passedFromGuest++;
    return this.#inner.send(out);
  }

  pause(): void { this.#inner.pause(); }
  resume(): void { this.#inner.resume(); }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#flows.closeAll();
    this.#fromGuestFrags.clear();
    this.#toGuestFrags.clear();
    this.#log?.flush();
    this.#inner.close();
  }

  /** Forgets idle flows and stale fragments (runs on a timer; tests call it with their clock). */
  sweep(): void {
    const now = this.#now();
    this.#flows.sweep(now);
    this.#fromGuestFrags.sweep(now);
    this.#toGuestFrags.sweep(now);
  }

  // ---- guest → host ----

  /**
   * The frame's source is the guest's: IPv4 from guestAddress (0.0.0.0 only for DHCP
   * to passt), ARP sender guestAddress or 0.0.0.0 (a probe), IPv6 from a link-local
   * address, guestAddress6, or :: for neighbour discovery (duplicate address detection).
   */
  #sourceOk(f: Exclude<DecodedFrame, { kind: 'other' }>): boolean {
    if (f.kind === 'arp') {
      const ip = f.arp.senderIp;
      return equalBytes(ip, this.#guest4) || ip.every((b) => b === 0);
    }
    const { ip } = f;
    if (ip.family === 4) {
      if (equalBytes(ip.src, this.#guest4)) return true;
      const dhcp = f.l4.kind === 'udp' && f.l4.udp.srcPort === 68 && f.l4.udp.dstPort === 67;
      return dhcp && ip.fragment === null && ip.src.every((b) => b === 0);
    }
    if (isLinkLocal(ip.src) || (this.#guest6 !== null && equalBytes(ip.src, this.#guest6))) return true;
    return ip.src.every((b) => b === 0) && f.l4.kind === 'icmp' && f.l4.icmp.type >= Icmp6.RouterSolicit && f.l4.icmp.type <= Icmp6.Redirect;
  }

  /** The frame to forward (the whole datagram), or null. */
  #fromGuest(frame: Uint8Array): Uint8Array | null {
    const w = this.#whole(frame, this.#fromGuestFrags, true);
    if (w === null) return null;
    if (w.f === null) return w.frame; // ARP
    return this.#decideFromGuest(w.frame, w.f) ? w.frame : null;
  }

  /**
   * The frame decoded, with fragments replaced by the whole datagram once it is here.
   * null: dropped (malformed, VLAN, other EtherType, a fragment held or refused, too big).
   * f null: ARP (passes as it is).
   */
  #whole(frame: Uint8Array, frags: Reassembler, fromGuest = false): { frame: Uint8Array; f: IpFrame | null } | null {
    const d = decodeFrame(frame);
    if (!d.ok) {
      this.#stats.malformed++;
      return null;
    }
    const f = d.value;
    if (f.eth.vlan !== null || f.kind === 'other') return null;
    // Before anything is held or judged: a guest speaks only from its own addresses.
    if (fromGuest && !this.#sourceOk(f)) {
      this.#stats.spoofed++;
      return null;
    }
    if (f.kind === 'arp') return { frame, f: null };
    if (f.ip.fragment === null) return { frame, f };
    this.#stats.fragmentsIn++;
    const r = frags.add(frame, f, this.#now());
    if (r.status !== 'complete') return null;
    this.#stats.reassembled++;
    if (r.frame.length > this.#maxFrame) {
      this.#stats.tooBig++;
      return null;
    }
    const whole = decodeFrame(r.frame);
    // A datagram whose data starts with another fragment header stays a fragment: dropped.
    if (!whole.ok || whole.value.kind !== 'ip' || whole.value.ip.fragment !== null) {
      this.#stats.malformed++;
      return null;
    }
    return { frame: r.frame, f: whole.value };
  }

  #decideFromGuest(frame: Uint8Array, f: IpFrame): boolean {
    const { ip, l4 } = f;
    const now = this.#now();
    if (l4.kind === 'tcp') {
      const s = l4.tcp;
      const key = flowKey('tcp', ip.src, s.srcPort, ip.dst, s.dstPort);
      const payload = s.end - s.payloadOffset;
      const isSyn = (s.flags & (TcpFlag.SYN | TcpFlag.ACK)) === TcpFlag.SYN;
      let flow = this.#flows.get(key);
      if (flow !== undefined && flow.closed && isSyn) {
        this.#flows.delete(key);
        flow = undefined;
      }
      if (flow === undefined) {
        if (!isSyn) {
          this.#reply(tcpReset(f, s));
          return false;
        }
        flow = this.#newFlow(key, 'tcp', 'outbound', ip.src, s.srcPort, ip.dst, s.dstPort, now);
        if (!flow.allowed) {
          this.#flows.delete(key);
          this.#flows.finish(flow, 'denied');
          this.#reply(tcpReset(f, s));
          return false;
        }
      }
      this.#flows.touch(flow, now);
      flow.rec.bytesFromGuest += payload;
      this.#flows.tcpFlags(flow, s.flags, true);
      return true;
    }
    if (l4.kind === 'udp') {
      const u = l4.udp;
      if (ip.family === 4 && u.srcPort === 68 && u.dstPort === 67 && this.#isDhcpServer(ip.dst)) return true; // DHCP to passt
      const key = flowKey('udp', ip.src, u.srcPort, ip.dst, u.dstPort);
      let flow = this.#flows.get(key);
      flow ??= this.#newFlow(key, 'udp', 'outbound', ip.src, u.srcPort, ip.dst, u.dstPort, now);
      this.#flows.touch(flow, now);
      flow.rec.bytesFromGuest += u.end - u.payloadOffset;
      if (!flow.allowed) {
        this.#reply(unreachable(frame, f, 'port'));
        return false;
      }
      return true;
    }
    if (l4.kind === 'icmp') {
      const m = l4.icmp;
      const echo = ip.family === 4 ? Icmp4.Echo : Icmp6.Echo;
      // Neighbour discovery (IPv6's ARP) passes like ARP, on the link only (passt answers it).
      if (ip.family === 6 && m.type >= Icmp6.RouterSolicit && m.type <= Icmp6.Redirect) return isLinkScope(ip.dst);
      if (m.type !== echo) return false;
      const key = flowKey('icmp', ip.src, m.id, ip.dst, 0);
      let flow = this.#flows.get(key);
      flow ??= this.#newFlow(key, 'icmp', 'outbound', ip.src, m.id, ip.dst, null, now);
      this.#flows.touch(flow, now);
      flow.rec.bytesFromGuest += m.end - m.payloadOffset + 8;
      if (!flow.allowed) {
        this.#reply(unreachable(frame, f, 'prohibited'));
        return false;
      }
      return true;
    }
    return false;
  }

  /** DHCP goes to the broadcast address or to passt's server (the gateway). */
  #isDhcpServer(dst: Uint8Array): boolean {
    return (dst[0] === 255 && dst[1] === 255 && dst[2] === 255 && dst[3] === 255) || this.#dest.isGateway(dst);
  }

  // ---- host → guest ----

  #fromHost(frame: Buffer, port: FramePort): void {
    const w = this.#whole(frame, this.#toGuestFrags);
    if (w === null || (w.f !== null && !this.#decideFromHost(w.f))) {
      this.#stats.droppedToGuest++;
      return;
    }
    const ip = w.f?.ip;
    if (ip === undefined || ip.end - ip.offset <= this.#guestMtu) {
      this.#stats.passedToGuest++;
      port.deliver(w.frame instanceof Buffer ? w.frame : Buffer.from(w.frame));
      return;
    }
    // Larger than the guest's MTU (passt writes whole datagrams): its eth0 has no
    // buffer for it, so cut it to the MTU; the guest reassembles.
    this.#fragId = (this.#fragId + 1) >>> 0;
    const parts = fragmentFrame(w.frame, w.f!, this.#guestMtu, this.#fragId);
    if (parts === null) {
      this.#stats.droppedToGuest++;
      return;
    }
    this.#stats.passedToGuest++;
    this.#stats.fragmentedToGuest++;
    this.#stats.fragmentFramesToGuest += parts.length;
    for (const p of parts) port.deliver(p);
  }

  #decideFromHost(f: IpFrame): boolean {
    const { ip, l4 } = f;
    const now = this.#now();
    if (l4.kind === 'tcp') {
      const s = l4.tcp;
      const key = flowKey('tcp', ip.dst, s.dstPort, ip.src, s.srcPort);
      let flow = this.#flows.get(key);
      if (flow === undefined && (s.flags & (TcpFlag.SYN | TcpFlag.ACK)) === TcpFlag.SYN) {
        flow = this.#newFlow(key, 'tcp', 'inbound', ip.dst, s.dstPort, ip.src, s.srcPort, now);
        if (!flow.allowed) {
          this.#flows.delete(key);
          this.#flows.finish(flow, 'denied');
          return false;
        }
      }
      if (flow === undefined || !flow.allowed) return false;
      this.#flows.touch(flow, now);
      flow.rec.bytesToGuest += s.end - s.payloadOffset;
      this.#flows.tcpFlags(flow, s.flags, false);
      return true;
    }
    if (l4.kind === 'udp') {
      const u = l4.udp;
      if (ip.family === 4 && u.srcPort === 67 && u.dstPort === 68) return true; // DHCP from passt
      const key = flowKey('udp', ip.dst, u.dstPort, ip.src, u.srcPort);
      let flow = this.#flows.get(key);
      flow ??= this.#newFlow(key, 'udp', 'inbound', ip.dst, u.dstPort, ip.src, u.srcPort, now);
      this.#flows.touch(flow, now);
      if (!flow.allowed) return false;
      flow.rec.bytesToGuest += u.end - u.payloadOffset;
      return true;
    }
    if (l4.kind === 'icmp') {
      const m = l4.icmp;
      if (ip.family === 4) {
        if (m.type === Icmp4.Unreachable || m.type === Icmp4.TimeExceeded || m.type === Icmp4.ParamProblem) return true;
        if (m.type !== Icmp4.EchoReply) return false;
      } else {
        if (m.type <= Icmp6.ParamProblem || (m.type >= Icmp6.RouterSolicit && m.type <= Icmp6.Redirect)) return true;
        if (m.type !== Icmp6.EchoReply) return false;
      }
      const flow = this.#flows.get(flowKey('icmp', ip.dst, m.id, ip.src, 0));
      if (flow === undefined || !flow.allowed) return false;
      this.#flows.touch(flow, now);
      flow.rec.bytesToGuest += m.end - m.payloadOffset + 8;
      return true;
    }
    return false;
  }

  // ---- judging a new flow ----

  #newFlow(key: string, protocol: Protocol, direction: Direction, guestIp: Uint8Array, guestPort: number, peerIp: Uint8Array, peerPort: number | null, now: number): Flow {
    const l4 = protocol === 'tcp' || protocol === 'udp';
    const peer = direction === 'inbound' ? this.#dest.inboundPeer(peerIp, l4, peerPort) : this.#dest.hostPeer(peerIp, l4, peerPort);
    let decision: Decision;
    let hostDst: string;
    if ('refused' in peer) {
      decision = { action: 'deny', rule: -2, by: peer.refused };
      hostDst = formatIP(peerIp);
    } else {
      hostDst = peer.address;
      // The policy's port: outbound the destination's, inbound the guest port being reached (as for TSI).
      const port = direction === 'inbound' ? (protocol === 'icmp' ? null : guestPort) : peerPort;
      decision = this.#policy.evaluate({ direction, protocol, address: hostDst, ...(port !== null ? { port } : {}) });
      if (peer.explicitOnly === true && decision.action === 'allow' && !ruleNamesExactly(this.#policy, decision.rule, hostDst)) {
        decision = { action: 'deny', rule: -4, by: `${hostDst} is the network process itself: allowed only by a rule naming ${hostDst} exactly` };
      }
    }
    const ep = (a: Uint8Array, p: number | null): string => {
      const s = formatIP(a);
      if (p === null) return s;
      return a.length === 16 ? `[${s}]:${p}` : `${s}:${p}`;
    };
    const guest = ep(guestIp, protocol === 'icmp' ? null : guestPort);
    const peerText = ep(peerIp, peerPort);
    return this.#flows.add(key, {
      kind: 'frame', protocol, direction, decision: decision.action, rule: decision.by,
      src: direction === 'outbound' ? guest : peerText, dst: direction === 'outbound' ? peerText : guest, hostDst,
      bytesFromGuest: 0, bytesToGuest: 0,
    }, now);
  }

  #reply(frame: Buffer | null): void {
    if (frame === null || this.#port === null) return;
    const port = this.#port;
    this.#stats.repliesToGuest++;
    if (!this.#defer) {
      port.deliver(frame);
      return;
    }
    // Not from inside the device's tx processing.
    queueMicrotask(() => { if (!this.#closed) port.deliver(frame); });
  }
}

/** Whether rule `index` of `policy` lists `address` itself (a bare address or /32) as a CIDR. */
function ruleNamesExactly(policy: Policy, index: number, address: string): boolean {
  const rule = index >= 0 ? policy.rules[index] : undefined;
  if (rule?.cidr === undefined) return false;
  const cidrs = typeof rule.cidr === 'string' ? [rule.cidr] : rule.cidr;
  return cidrs.some((c) => c === address || c === `${address}/32`);
}

/** fe80::/10: a guest's link-local source is always its own. */
function isLinkLocal(a: Uint8Array): boolean {
  return a[0] === 0xfe && (a[1]! & 0xc0) === 0x80;
}

/** fe80::/10 or link-scope multicast (ffx2::/16): where neighbour discovery goes. */
function isLinkScope(a: Uint8Array): boolean {
  return (a[0] === 0xfe && (a[1]! & 0xc0) === 0x80) || (a[0] === 0xff && (a[1]! & 0x0f) === 0x02);
}

/** A flow's key from the address bytes: one address has one key, whatever its text form. */
function flowKey(proto: string, guestIp: Uint8Array, guestPort: number, peerIp: Uint8Array, peerPort: number): string {
  return `${proto} ${hex(guestIp)} ${guestPort} ${hex(peerIp)} ${peerPort}`;
}

function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
}
