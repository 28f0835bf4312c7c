// What a guest's peer address really is on the host side of passt: the address the
// policy must judge (docs/netstack.md, "What the policy sees"). Measured with Debian
// 12's passt (0.0~git20230309):
//  - the gateway (10.0.2.2) is the host's 127.0.0.1 (passt's gateway mapping);
//  - the DNS forwarder address (10.0.2.3) on port 53 is the host's resolver, which
//    passt forwards to (the first IPv4 nameserver of the host's /etc/resolv.conf);
//  - an unspecified address (0.0.0.0/8, ::, and their IPv4-compatible / IPv4-mapped
//    spellings) reaches the host's loopback when passt writes to it (0.0.0.0 is "this
//    host" to Linux), and no rule a user writes for 0.0.0.0/0 means loopback: it is
//    denied, never judged (the policy denies these too: src/policy/index.ts);
//  - everything else is itself (127.0.0.0/8 reaches loopback and is judged as such).
// gvproxy (0.8.1, checked here) differs: its gateway (192.168.127.1) is gvproxy itself
// (DHCP, DNS on 53, and its HTTP API on 80, which can open host listeners), and
// 192.168.127.254 is NATed to the host's 127.0.0.1. So: `hostAliases` maps such
// addresses, and with `gatewayServices: 'explicit'` any other gateway port is judged
// as the gateway's own address and allowed only by a rule that names exactly that
// address (see FramePolicyFilter): `0.0.0.0/0` never opens gvproxy's API.
import { equalBytes, formatIP, ipv4FromString } from '../../netstack/index.js';
import { HostAliases } from '../policy/host-aliases.js';

export interface DestinationOptions {
  /** The guest's gateway (IPv4). */
  gateway: string;
  /** Whether passt maps the gateway to the host's loopback. */
  mapGatewayToHost: boolean;
  /** passt's DNS forwarder: queries to `match` port 53 go to `upstream` port 53. */
  dnsForward?: { match: string; upstream: string };
  /** Guest-visible addresses the backend NATs to host addresses (gvproxy: 192.168.127.254 → 127.0.0.1). */
  hostAliases?: ReadonlyArray<readonly [alias: string, host: string]>;
  /**
   * 'explicit': the gateway is the backend's own service endpoint (gvproxy): outbound
   * flows to it (but DNS) are allowed only by a rule naming its address exactly, and
   * inbound flows from it (published ports: gvproxy hides the real client) are judged
   * as coming from `inboundFrom`. Default 'none' (passt: the gateway is just an address).
   */
  gatewayServices?: 'none' | 'explicit';
  /** Who inbound flows from the gateway stand for (default '127.0.0.1'). */
  inboundFrom?: string;
}

/**
 * The host address a peer stands for, or why it is refused without asking the policy.
 * `explicitOnly`: only a rule naming exactly this address may allow it.
 */
export type HostPeer = { address: string; explicitOnly?: true } | { refused: 'unspecified' };

export class FrameDestinations {
  readonly #gateway: Uint8Array | null;
  readonly #mapGateway: boolean;
  readonly #dnsMatch: Uint8Array | null;
  readonly #dnsUpstream: string;
  readonly #aliases: HostAliases;
  readonly #gatewayExplicit: boolean;
  readonly #inboundFrom: string;

  constructor(o: DestinationOptions) {
    this.#gateway = ipv4FromString(o.gateway);
    this.#mapGateway = o.mapGatewayToHost;
    this.#dnsMatch = o.dnsForward ? ipv4FromString(o.dnsForward.match) : null;
    this.#dnsUpstream = o.dnsForward?.upstream ?? '';
    this.#aliases = new HostAliases(o.hostAliases ?? []);
    this.#gatewayExplicit = o.gatewayServices === 'explicit';
    this.#inboundFrom = o.inboundFrom ?? '127.0.0.1';
  }

  /** The peer of an inbound flow (a host client reaching the guest) as the policy judges it. */
  inboundPeer(peer: Uint8Array, tcpOrUdp: boolean, port: number | null): HostPeer {
    if (this.#gatewayExplicit && this.isGateway(peer)) return { address: this.#inboundFrom };
    return this.hostPeer(peer, tcpOrUdp, port);
  }

  isGateway(a: Uint8Array): boolean {
    return this.#gateway !== null && equalBytes(a, this.#gateway);
  }

  /** The host peer for `peer` (port null: ICMP). */
  hostPeer(peer: Uint8Array, tcpOrUdp: boolean, port: number | null): HostPeer {
    if (isUnspecified(peer)) return { refused: 'unspecified' };
    if (this.#dnsMatch !== null && tcpOrUdp && port === 53 && equalBytes(peer, this.#dnsMatch)) return { address: this.#dnsUpstream };
    if (this.#mapGateway && this.isGateway(peer)) return { address: '127.0.0.1' };
    const text = formatIP(peer);
    const host = this.#aliases.size === 0 ? undefined : this.#aliases.resolve(text);
    if (host !== undefined) return { address: host };
    if (this.#gatewayExplicit && this.isGateway(peer)) return { address: text, explicitOnly: true };
    return { address: text };
  }
}

/**
 * 0.0.0.0/8; ::/96 but ::1 (:: and the IPv4-compatible ::a.b.c.d, as the policy treats
 * them); ::ffff:0.0.0.0/104 (the IPv4-mapped spelling of 0.0.0.0/8).
 */
export function isUnspecified(a: Uint8Array): boolean {
  if (a.length === 4) return a[0] === 0;
  for (let i = 0; i < 10; i++) if (a[i] !== 0) return false;
  if (a[10] === 0 && a[11] === 0) return !(a[12] === 0 && a[13] === 0 && a[14] === 0 && a[15] === 1);
  return a[10] === 0xff && a[11] === 0xff && a[12] === 0;
}
