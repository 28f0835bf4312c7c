// The egress Policy on the virtio-net path: a FrameBackend that sits between the
// NetDevice and the real backend (passt) and decides every guest→host frame
// (docs/netstack.md).
//
//  - ARP passes. DHCP (udp 68→67) passes. DNS (tcp/udp port 53) to a configured
//    forwarder address (passt's --dns-forward, default 10.0.2.3) is allowed as rule 'dns'.
//  - A new flow is evaluated once: TCP on a SYN without ACK, UDP per 5-tuple, ICMP echo
//    per identifier. The policy sees the address the HOST will connect to: the gateway
//    alias (passt maps 10.0.2.2 → the host's 127.0.0.1) is evaluated as 127.0.0.1.
//  - Allowed flows go into a bounded table (LRU, idle timeouts); their later frames,
//    both ways, pass without re-evaluation. TCP flows end on RST or FIN both ways (a
//    short linger lets the last ACKs through), UDP/ICMP flows on idle.
//  - Denied TCP: dropped, and the guest gets a RST (connect() fails with ECONNREFUSED).
//    Denied UDP: dropped, the guest gets ICMP port unreachable (a connected socket's
//    next recv/send fails with ECONNREFUSED). Denied ICMP echo: ICMP administratively
//    prohibited. TCP segments of no known flow (not a SYN) get a RST.
//  - Fragments: a first fragment (it carries the ports) is decided like any packet and
//    its decision remembered by (addresses, protocol, id) in a small bounded table;
//    later fragments follow that decision, and are dropped when it is unknown.
//  - 802.1Q-tagged frames, malformed frames and other IP protocols are dropped.
//  - host→guest: frames of known flows pass (and are counted); a new TCP SYN or UDP
//    flow from the host side (passt port forwards) is evaluated as 'inbound' with the
//    source address (gateway → 127.0.0.1); ICMP errors and ARP pass; the rest is dropped.
//
// One pino event per flow when it ends, shaped like `tsi.connection`:
// { event: 'net.flow', kind: 'frame', protocol, direction, decision, rule, src, dst,
//   hostDst, bytesFromGuest, bytesToGuest, durationMs, closeReason } (bytes are
// transport payload bytes: TCP/UDP data, whole ICMP messages).
import type { Logger } from 'pino';
import {
  decodeFrame, equalBytes, formatIP, ipv4FromString, tcpReset, TcpFlag, unreachable, Icmp4, Icmp6,
  type DecodedFrame,
} from '../../netstack/index.js';
import type { FrameBackend, FramePort } from '../virtio/net/backend.js';
import type { Decision, Direction, Policy, Protocol } from '../policy/index.js';

type IpFrame = Extract<DecodedFrame, { kind: 'ip' }>;

export interface FramePolicyOptions {
  /** Where allowed frames go. */
  inner: FrameBackend;
  policy: Policy;
  /** The guest's gateway (IPv4). */
  gateway: string;
  /** Whether the backend maps the gateway to the host's loopback (passt's default: true). */
  mapGatewayToHost: boolean;
  /** DNS forwarder addresses whose port 53 is allowed without asking the policy. */
  dnsForwarders?: readonly string[];
  logger?: Logger;
  /** Flows tracked at most (default 4096); the least recently used is evicted. */
  maxFlows?: number;
  /** Idle time after which a flow is forgotten: TCP (default 600 s), UDP/ICMP (default 60 s). */
  tcpIdleMs?: number;
  udpIdleMs?: number;
  /** How long a closed TCP flow still passes trailing segments (default 5 s). */
  lingerMs?: number;
  /** A clock (tests). */
  now?: () => number;
  /** Deliver RST/ICMP replies in a microtask (default true); false: at once (fuzzing). */
  deferReplies?: boolean;
}

export interface FlowRecord {
  kind: 'frame';
  protocol: Protocol;
  direction: Direction;
  decision: 'allow' | 'deny';
  rule: string;
  /** Guest-visible endpoints. */
  src: string;
  dst: string;
  /** The address the policy judged (the gateway alias mapped to 127.0.0.1). */
  hostDst: string;
  bytesFromGuest: number;
  bytesToGuest: number;
  durationMs: number;
  closeReason: string;
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
}

interface Flow {
  key: string;
  rec: Omit<FlowRecord, 'durationMs' | 'closeReason'>;
  allowed: boolean;
  started: number;
  lastSeen: number;
  lastMoved: number;
  tcp: boolean;
  finFromGuest: boolean;
  finToGuest: boolean;
  /** Logged and lingering (TCP after FIN/FIN or RST). */
  closed: boolean;
}

const FRAG_MAX = 256;
const FRAG_TTL_MS = 30_000;

export class FramePolicyFilter implements FrameBackend {
  readonly #inner: FrameBackend;
  readonly #policy: Policy;
  readonly #gateway: Uint8Array | null;
  readonly #mapGateway: boolean;
  readonly #dns: Uint8Array[];
  readonly #log: Logger | undefined;
  readonly #maxFlows: number;
  readonly #tcpIdle: number;
  readonly #udpIdle: number;
  readonly #linger: number;
  readonly #now: () => number;
  readonly #defer: boolean;
  readonly #flows = new Map<string, Flow>();
  readonly #frags = new Map<string, { allowed: boolean; at: number }>();
  #port: FramePort | null = null;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;
  readonly #stats: FramePolicyStats = { passedFromGuest: 0, droppedFromGuest: 0, passedToGuest: 0, droppedToGuest: 0, repliesToGuest: 0, malformed: 0, flows: 0, evicted: 0 };
  /** Finished flow records (tests inspect them; capped). */
  readonly recent: FlowRecord[] = [];
  static readonly RECENT_MAX = 2000;

  constructor(o: FramePolicyOptions) {
    this.#inner = o.inner;
    this.#policy = o.policy;
    this.#gateway = ipv4FromString(o.gateway);
    this.#mapGateway = o.mapGatewayToHost;
    this.#dns = (o.dnsForwarders ?? []).map((d) => ipv4FromString(d)).filter((d): d is Uint8Array => d !== null);
    this.#log = o.logger;
    this.#maxFlows = Math.max(1, o.maxFlows ?? 4096);
    this.#tcpIdle = o.tcpIdleMs ?? 600_000;
    this.#udpIdle = o.udpIdleMs ?? 60_000;
    this.#linger = o.lingerMs ?? 5_000;
    this.#now = o.now ?? (() => performance.now());
    this.#defer = o.deferReplies ?? true;
  }

  stats(): FramePolicyStats {
    return { ...this.#stats, flows: this.#flows.size };
  }

  // ---- FrameBackend (the device's side) ----

  attach(port: FramePort): void {
    this.#port = port;
    this.#inner.attach({
      deliver: (frame) => { if (this.#fromHost(frame)) port.deliver(frame); },
      writable: () => { port.writable(); },
      closed: (reason) => { port.closed(reason); },
    });
    const every = Math.max(1000, Math.min(this.#udpIdle, this.#linger) / 2);
    this.#timer = setInterval(() => { this.sweep(); }, every);
    this.#timer.unref();
  }

  send(frame: Uint8Array): boolean {
    if (this.#closed) return true;
    if (!this.#fromGuest(frame)) {
      this.#stats.droppedFromGuest++;
      return true;
    }
    this.#stats.passedFromGuest++;
    return this.#inner.send(frame);
  }

  pause(): void { this.#inner.pause(); }
  resume(): void { this.#inner.resume(); }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    for (const f of this.#flows.values()) this.#finish(f, 'closed');
    this.#flows.clear();
    this.#inner.close();
  }

  /** Forgets idle flows (runs on a timer; tests call it with their clock). */
  sweep(): void {
    const now = this.#now();
    for (const f of this.#flows.values()) {
      const idle = f.closed ? this.#linger : f.tcp ? this.#tcpIdle : this.#udpIdle;
      if (now - f.lastSeen >= idle) {
        this.#finish(f, 'idle');
        this.#flows.delete(f.key);
      }
    }
    for (const [k, v] of this.#frags) if (now - v.at >= FRAG_TTL_MS) this.#frags.delete(k);
  }

  // ---- guest → host ----

  /** true: pass the frame on. */
  #fromGuest(frame: Uint8Array): boolean {
    const d = decodeFrame(frame);
    if (!d.ok) {
      this.#stats.malformed++;
      return false;
    }
    const f = d.value;
    if (f.eth.vlan !== null) return false;
    if (f.kind === 'arp') return true;
    if (f.kind === 'other') return false;
    const ip = f.ip;
    // Later fragments follow their first fragment's decision.
    if (ip.fragment !== null && !ip.fragment.first) {
      const k = fragKey(f, ip.src, ip.dst);
      const known = this.#frags.get(k);
      return known !== undefined && known.allowed;
    }
    const allowed = this.#decideFromGuest(frame, f);
    if (ip.fragment !== null) {
      if (this.#frags.size >= FRAG_MAX) this.#frags.delete(this.#frags.keys().next().value as string);
      this.#frags.set(fragKey(f, ip.src, ip.dst), { allowed, at: this.#now() });
    }
    return allowed;
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
        const dns = s.dstPort === 53 && this.#isDns(ip.dst);
        flow = this.#newFlow(key, 'tcp', 'outbound', ip.src, s.srcPort, ip.dst, s.dstPort, dns, now);
        if (!flow.allowed) {
          this.#flows.delete(key);
          this.#finish(flow, 'denied');
          this.#reply(tcpReset(f, s));
          return false;
        }
      }
      this.#touch(flow, now);
      flow.rec.bytesFromGuest += payload;
      this.#tcpFlags(flow, s.flags, true);
      return true;
    }
    if (l4.kind === 'udp') {
      const u = l4.udp;
      if (ip.family === 4 && u.srcPort === 68 && u.dstPort === 67) return true; // DHCP to passt
      const key = flowKey('udp', ip.src, u.srcPort, ip.dst, u.dstPort);
      let flow = this.#flows.get(key);
      if (flow === undefined) {
        const dns = u.dstPort === 53 && this.#isDns(ip.dst);
        flow = this.#newFlow(key, 'udp', 'outbound', ip.src, u.srcPort, ip.dst, u.dstPort, dns, now);
      }
      this.#touch(flow, now);
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
      // Neighbour discovery (IPv6's ARP) passes like ARP.
      if (ip.family === 6 && m.type >= Icmp6.RouterSolicit && m.type <= Icmp6.Redirect) return true;
      if (m.type !== echo) return false;
      const key = flowKey('icmp', ip.src, m.id, ip.dst, 0);
      let flow = this.#flows.get(key);
      flow ??= this.#newFlow(key, 'icmp', 'outbound', ip.src, m.id, ip.dst, null, false, now);
      this.#touch(flow, now);
      flow.rec.bytesFromGuest += m.end - m.payloadOffset + 8;
      if (!flow.allowed) {
        this.#reply(unreachable(frame, f, 'prohibited'));
        return false;
      }
      return true;
    }
    return false;
  }

  // ---- host → guest ----

  #fromHost(frame: Buffer): boolean {
    const pass = this.#decideFromHost(frame);
    if (pass) this.#stats.passedToGuest++;
    else this.#stats.droppedToGuest++;
    return pass;
  }

  #decideFromHost(frame: Uint8Array): boolean {
    const d = decodeFrame(frame);
    if (!d.ok) return false;
    const f = d.value;
    if (f.eth.vlan !== null) return false;
    if (f.kind === 'arp') return true;
    if (f.kind === 'other') return false;
    const { ip, l4 } = f;
    if (ip.fragment !== null && !ip.fragment.first) return this.#frags.get(fragKey(f, ip.dst, ip.src))?.allowed === true;
    const now = this.#now();
    let pass = false;
    if (l4.kind === 'tcp') {
      const s = l4.tcp;
      const key = flowKey('tcp', ip.dst, s.dstPort, ip.src, s.srcPort);
      let flow = this.#flows.get(key);
      if (flow === undefined && (s.flags & (TcpFlag.SYN | TcpFlag.ACK)) === TcpFlag.SYN) {
        flow = this.#newFlow(key, 'tcp', 'inbound', ip.dst, s.dstPort, ip.src, s.srcPort, false, now);
        if (!flow.allowed) {
          this.#flows.delete(key);
          this.#finish(flow, 'denied');
          return false;
        }
      }
      if (flow === undefined || !flow.allowed) return false;
      this.#touch(flow, now);
      flow.rec.bytesToGuest += s.end - s.payloadOffset;
      this.#tcpFlags(flow, s.flags, false);
      pass = true;
    } else if (l4.kind === 'udp') {
      const u = l4.udp;
      if (ip.family === 4 && u.srcPort === 67 && u.dstPort === 68) return true; // DHCP from passt
      const key = flowKey('udp', ip.dst, u.dstPort, ip.src, u.srcPort);
      let flow = this.#flows.get(key);
      flow ??= this.#newFlow(key, 'udp', 'inbound', ip.dst, u.dstPort, ip.src, u.srcPort, false, now);
      this.#touch(flow, now);
      if (!flow.allowed) return false;
      flow.rec.bytesToGuest += u.end - u.payloadOffset;
      pass = true;
    } else if (l4.kind === 'icmp') {
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
      this.#touch(flow, now);
      flow.rec.bytesToGuest += m.end - m.payloadOffset + 8;
      pass = true;
    }
    return pass;
  }

  // ---- flows ----

  #isDns(dst: Uint8Array): boolean {
    return this.#dns.some((d) => equalBytes(d, dst));
  }

  /** The address the host side will really talk to (the gateway alias → 127.0.0.1). */
  #hostAddress(a: Uint8Array): string {
    if (this.#mapGateway && this.#gateway !== null && equalBytes(a, this.#gateway)) return '127.0.0.1';
    return formatIP(a);
  }

  #newFlow(key: string, protocol: Protocol, direction: Direction, guestIp: Uint8Array, guestPort: number, peerIp: Uint8Array, peerPort: number | null, dns: boolean, now: number): Flow {
    const hostDst = this.#hostAddress(peerIp);
    const decision: Decision = dns
      ? { action: 'allow', rule: -2, by: 'dns' }
      : this.#policy.evaluate({ direction, protocol, address: hostDst, ...(peerPort !== null ? { port: peerPort } : {}) });
    const ep = (a: Uint8Array, p: number | null): string => {
      const s = formatIP(a);
      if (p === null) return s;
      return a.length === 16 ? `[${s}]:${p}` : `${s}:${p}`;
    };
    const guest = ep(guestIp, protocol === 'icmp' ? null : guestPort);
    const peer = ep(peerIp, peerPort);
    const flow: Flow = {
      key,
      rec: {
        kind: 'frame', protocol, direction, decision: decision.action, rule: decision.by,
        src: direction === 'outbound' ? guest : peer, dst: direction === 'outbound' ? peer : guest, hostDst,
        bytesFromGuest: 0, bytesToGuest: 0,
      },
      allowed: decision.action === 'allow', started: now, lastSeen: now, lastMoved: now, tcp: protocol === 'tcp',
      finFromGuest: false, finToGuest: false, closed: false,
    };
    if (this.#flows.size >= this.#maxFlows) {
      const oldest = this.#flows.values().next().value as Flow;
      this.#flows.delete(oldest.key);
      this.#stats.evicted++;
      this.#finish(oldest, 'evicted');
    }
    this.#flows.set(key, flow);
    return flow;
  }

  #touch(f: Flow, now: number): void {
    f.lastSeen = now;
    // Keep the Map in LRU order without re-inserting on every frame.
    if (now - f.lastMoved > 1000) {
      f.lastMoved = now;
      this.#flows.delete(f.key);
      this.#flows.set(f.key, f);
    }
  }

  #tcpFlags(f: Flow, flags: number, fromGuest: boolean): void {
    if (f.closed) return;
    if (flags & TcpFlag.RST) {
      this.#finish(f, fromGuest ? 'rst from guest' : 'rst from host');
      f.closed = true;
      return;
    }
    if (flags & TcpFlag.FIN) {
      if (fromGuest) f.finFromGuest = true;
      else f.finToGuest = true;
      if (f.finFromGuest && f.finToGuest) {
        this.#finish(f, 'fin');
        f.closed = true;
      }
    }
  }

  #finish(f: Flow, reason: string): void {
    if (f.closed) return;
    f.closed = true;
    const rec: FlowRecord = { ...f.rec, durationMs: Math.round((f.lastSeen - f.started) * 1000) / 1000, closeReason: reason };
    if (this.recent.length >= FramePolicyFilter.RECENT_MAX) this.recent.shift();
    this.recent.push(rec);
    this.#log?.info({ event: 'net.flow', ...rec }, `net ${rec.protocol} ${rec.decision} ${rec.src} -> ${rec.dst}: ${reason}`);
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

function flowKey(proto: string, guestIp: Uint8Array, guestPort: number, peerIp: Uint8Array, peerPort: number): string {
  return `${proto} ${formatIP(guestIp)} ${guestPort} ${formatIP(peerIp)} ${peerPort}`;
}

function fragKey(f: IpFrame, guestIp: Uint8Array, peerIp: Uint8Array): string {
  return `${f.ip.family} ${f.ip.protocol} ${formatIP(guestIp)} ${formatIP(peerIp)} ${f.ip.fragment?.id ?? 0}`;
}
