// Network policy for proxied connections. Evaluation order (docs/tsi-protocol.md):
// rules are checked in the order given and the FIRST rule whose every condition
// matches decides; when none matches, the caller's explicit `default` decides. There
// is no implicit default: constructing a Policy without one is an error.
//
// Address semantics (docs/security.md §policy):
//  - An IPv4 CIDR matches IPv4 destinations, an IPv6 CIDR IPv6 destinations; `::/0` is
//    "any IPv6" and never matches IPv4. IPv4-mapped addresses (::ffff:a.b.c.d) are
//    IPv4 in both places: as a query they are judged as a.b.c.d, as a CIDR
//    (::ffff:a.b.c.d/n, n >= 96) they are the IPv4 network a.b.c.d/(n-96).
//  - Outbound, the policy judges where the host's packets really go: an unspecified
//    destination (0.0.0.0/8, ::, IPv4-compatible ::a.b.c.d) is denied outright (the host would deliver it to its
//    own loopback), and a destination that is one of the host's own interface
//    addresses must be allowed both as itself and as the loopback address of its
//    family (reaching the host by its LAN address reaches the same services); so must
//    a multicast destination (the host loops multicast back to its own sockets).
//  - unix paths must be absolute; rule paths are normalised, and a rule path ending
//    in '/' matches that directory and everything under it.
import { realpathSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { posix } from 'node:path';
import { TsiboxError } from '../errors.js';
import { canonicalAddress, ipv4Bytes, ipv6Bytes } from '../../netstack/address.js';

export type Action = 'allow' | 'deny';
/** icmp: ICMP/ICMPv6 echo through the virtio-net frame filter (src/frame-filter/frame-policy.ts); TSI never asks for it. */
export type Protocol = 'tcp' | 'udp' | 'unix' | 'icmp';
/** outbound: the guest connects out / sends; inbound: a host client reaches a guest listener. */
export type Direction = 'outbound' | 'inbound';

export interface PolicyRule {
  action: Action;
  /** Matches any protocol when absent. */
  protocol?: Protocol | readonly Protocol[];
  /** Matches both directions when absent. */
  direction?: Direction;
  /**
   * CIDRs ('127.0.0.0/8', '::1/128', or a bare address). Absent: any address. An IPv6
   * CIDR never matches an IPv4 address ('::/0' is any IPv6); '::ffff:a.b.c.d/n' is IPv4.
   */
  cidr?: string | readonly string[];
  /** A port or an inclusive [low, high] range. Absent: any port. */
  ports?: number | readonly [number, number];
  /** unix only: an absolute path; the target equals it, or lies under it when it ends in '/'. Compared after normalising both. */
  path?: string;
  /** Shown in logs. */
  name?: string;
}

export interface PolicyOptions {
  /** What happens when no rule matches. Required: there is no silent default. */
  default: Action;
  rules?: readonly PolicyRule[];
  /**
   * The host's own interface addresses (default: os.networkInterfaces(), re-read at
   * most once a second). Outbound destinations among them are judged as loopback too.
   */
  hostAddresses?: () => Iterable<string>;
}

export interface PolicyQuery {
  direction: Direction;
  protocol: Protocol;
  /** Remote address for tcp/udp (the destination outbound, the client inbound). */
  address?: string;
  /** outbound: destination port; inbound: the guest port being reached. */
  port?: number;
  path?: string;
}

export interface Decision {
  action: Action;
  /** Index of the deciding rule, or -1 for the default. */
  rule: number;
  /** The rule's name, `rule N`, or `default`. */
  by: string;
}

interface Prefix {
  bytes: readonly number[];
  len: number;
}

interface CompiledRule {
  rule: PolicyRule;
  protocols: ReadonlySet<Protocol> | null;
  /** null: any address; else per-family prefixes (an empty list never matches). */
  cidrs: { v4: Prefix[]; v6: Prefix[] } | null;
  ports: readonly [number, number] | null;
  /** Normalised rule path and whether it names a directory (trailing '/'). */
  path: { path: string; dir: boolean } | null;
}

/** The decision for destinations the host would deliver to itself by another name. */
const UNSPECIFIED: Decision = { action: 'deny', rule: -3, by: 'unspecified destination' };

const PROTOCOLS: readonly Protocol[] = ['tcp', 'udp', 'unix', 'icmp'];

export class Policy {
  #default: Action;
  #rules: CompiledRule[];
  readonly #hostAddresses: () => Iterable<string>;
  #hostCanon: { list: Iterable<string>; set: ReadonlySet<string> } | null = null;

  constructor(opts: PolicyOptions) {
    if (opts === null || typeof opts !== 'object' || (opts.default !== 'allow' && opts.default !== 'deny')) {
      throw new TsiboxError('POLICY_INVALID', "policy needs an explicit default: { default: 'allow' | 'deny' }");
    }
    if (opts.rules !== undefined && !Array.isArray(opts.rules)) throw new TsiboxError('POLICY_INVALID', 'policy rules must be an array');
    this.#default = opts.default;
    this.#rules = (opts.rules ?? []).map((r, i) => compile(r, i));
    this.#hostAddresses = opts.hostAddresses ?? cachedInterfaceAddresses;
  }

  /** What a query no rule matches gets. */
  get defaultAction(): Action {
    return this.#default;
  }

  /**
   * A copy with the same default, rules and host-address source. A sandbox decides by
   * its own copy, so that `Sandbox.setPolicy` never changes the caller's object (or
   * another sandbox that was given the same one).
   */
  clone(): Policy {
    const c = new Policy({ default: this.#default, hostAddresses: this.#hostAddresses });
    c.#rules = this.#rules;
    return c;
  }

  /**
   * Takes `other`'s default and rules at once: every later evaluate() decides by them
   * (compiled rules are immutable, so the swap is one assignment each). The host-address
   * source stays this policy's.
   */
  replace(other: Policy): void {
    this.#default = other.#default;
    this.#rules = other.#rules;
  }

  /** Allows everything (tests, trusted workloads). Still explicit at the call site. */
  static allowAll(): Policy {
    return new Policy({ default: 'allow' });
  }

  static denyAll(): Policy {
    return new Policy({ default: 'deny' });
  }

  get rules(): readonly PolicyRule[] {
    return this.#rules.map((r) => r.rule);
  }

  /**
   * Decides one connection or flow. Outbound destinations the host delivers to itself
   * are judged as such (see the file comment); everything else by the rules in order.
   */
  evaluate(q: PolicyQuery): Decision {
    if (q.address === undefined || q.direction === 'inbound') return this.#match(q, undefined);
    const canon = canonicalAddress(q.address);
    if (canon === null) return this.#match(q, null);
    if (isUnspecified(canon)) return UNSPECIFIED;
    const first = this.#match(q, canon);
    if (first.action === 'deny' || isLoopback(canon)) return first;
    // The host's own address, and multicast (the host loops it back to its own sockets),
    // reach what its loopback does: both must be allowed.
    const why = isMulticast(canon) ? 'multicast' : this.#isHostAddress(canon) ? 'host address' : null;
    if (why === null) return first;
    const loop = this.#match(q, canon.family === 'ipv4' ? { family: 'ipv4', address: '127.0.0.1' } : { family: 'ipv6', address: '0:0:0:0:0:0:0:1' });
    return loop.action === 'deny' ? { ...loop, by: `${loop.by} (${why} ${canon.address} judged as loopback)` } : first;
  }

  #isHostAddress(c: Canonical): boolean {
    const list = this.#hostAddresses();
    // Canonical forms once per address list (the default list changes at most once a second).
    if (this.#hostCanon === null || this.#hostCanon.list !== list) {
      const set = new Set<string>();
      for (const a of list) {
        const h = canonicalAddress(a);
        if (h !== null) set.add(h.address);
      }
      this.#hostCanon = { list, set };
    }
    return this.#hostCanon.set.has(c.address);
  }

  /** canon: undefined = not computed yet, null = not an address. */
  #match(q: PolicyQuery, canonIn: Canonical | null | undefined): Decision {
    let canon = canonIn;
    for (let i = 0; i < this.#rules.length; i++) {
      const c = this.#rules[i]!;
      const r = c.rule;
      if (r.direction !== undefined && r.direction !== q.direction) continue;
      if (c.protocols !== null && !c.protocols.has(q.protocol)) continue;
      if (c.cidrs !== null) {
        if (q.address === undefined) continue;
        if (canon === undefined) canon = canonicalAddress(q.address);
        if (canon === null || !matchCidrs(c.cidrs, canon)) continue;
      }
      if (c.ports !== null && (q.port === undefined || q.port < c.ports[0] || q.port > c.ports[1])) continue;
      if (c.path !== null) {
        const p = q.path === undefined ? null : normalisePath(q.path);
        if (p === null) continue;
        const ok = c.path.dir ? p === c.path.path || p.startsWith(c.path.path === '/' ? '/' : `${c.path.path}/`) : p === c.path.path;
        if (!ok) continue;
      }
      return { action: r.action, rule: i, by: r.name ?? `rule ${i}` };
    }
    return { action: this.#default, rule: -1, by: 'default' };
  }
}

type Canonical = { family: 'ipv4' | 'ipv6'; address: string };

/**
 * Addresses the host may deliver to itself under another name: 0.0.0.0/8, ::, and the
 * deprecated IPv4-compatible ::a.b.c.d (::/96 but ::1), which a host with a sit
 * tunnel turns into IPv4 to a.b.c.d.
 */
function isUnspecified(c: Canonical): boolean {
  if (c.family === 'ipv4') return c.address.startsWith('0.');
  return c.address.startsWith('0:0:0:0:0:0:') && c.address !== '0:0:0:0:0:0:0:1';
}

/** 224.0.0.0/4 and ff00::/8. */
function isMulticast(c: Canonical): boolean {
  if (c.family === 'ipv4') {
    const first = Number(c.address.slice(0, c.address.indexOf('.')));
    return first >= 224 && first <= 239;
  }
  return c.address.startsWith('ff');
}

function isLoopback(c: Canonical): boolean {
  return c.family === 'ipv4' ? c.address.startsWith('127.') : c.address === '0:0:0:0:0:0:0:1';
}

function matchCidrs(cidrs: { v4: Prefix[]; v6: Prefix[] }, c: Canonical): boolean {
  const bytes = c.family === 'ipv4' ? ipv4Bytes(c.address) : ipv6Bytes(c.address);
  for (const p of c.family === 'ipv4' ? cidrs.v4 : cidrs.v6) if (prefixMatch(p, bytes)) return true;
  return false;
}

function prefixMatch(p: Prefix, bytes: readonly number[]): boolean {
  let bits = p.len;
  for (let i = 0; bits > 0; i++, bits -= 8) {
    const mask = bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff;
    if ((bytes[i]! & mask) !== (p.bytes[i]! & mask)) return false;
  }
  return true;
}

/** An absolute path without '.', '..' or repeated '/' (no trailing '/'), or null when relative. */
export function normalisePath(path: string): string | null {
  if (typeof path !== 'string' || !path.startsWith('/') || path.includes('\0')) return null;
  const n = posix.normalize(path);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

let interfaceCache: { at: number; addresses: string[] } | null = null;

/** os.networkInterfaces() addresses, re-read at most once a second. */
function cachedInterfaceAddresses(): string[] {
  const now = performance.now();
  if (interfaceCache === null || now - interfaceCache.at > 1000) {
    const addresses: string[] = [];
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) addresses.push(a.address);
    interfaceCache = { at: now, addresses };
  }
  return interfaceCache.addresses;
}

function compile(r: PolicyRule, i: number): CompiledRule {
  const bad = (why: string): TsiboxError => new TsiboxError('POLICY_INVALID', `policy rule ${i}: ${why}`);
  if (r.action !== 'allow' && r.action !== 'deny') throw bad(`action must be 'allow' or 'deny'`);
  if (r.direction !== undefined && r.direction !== 'inbound' && r.direction !== 'outbound') throw bad(`direction must be 'inbound' or 'outbound'`);
  let protocols: Set<Protocol> | null = null;
  if (r.protocol !== undefined) {
    const list = typeof r.protocol === 'string' ? [r.protocol] : [...r.protocol];
    for (const p of list) if (!PROTOCOLS.includes(p)) throw bad(`unknown protocol ${JSON.stringify(p)}`);
    protocols = new Set(list);
  }
  let cidrs: { v4: Prefix[]; v6: Prefix[] } | null = null;
  if (r.cidr !== undefined) {
    cidrs = { v4: [], v6: [] };
    const list = typeof r.cidr === 'string' ? [r.cidr] : Array.isArray(r.cidr) ? r.cidr : null;
    if (list === null) throw bad('cidr must be a string or an array of strings');
    for (const cidr of list) {
      if (typeof cidr !== 'string') throw bad(`bad CIDR ${JSON.stringify(cidr)}`);
      const [addr, lenText, extra] = cidr.split('/');
      const c = addr === undefined || addr.includes('%') ? null : canonicalAddress(addr);
      if (c === null || extra !== undefined) throw bad(`bad CIDR ${JSON.stringify(cidr)}`);
      const written = addr!.includes(':') ? 128 : 32;
      let len = lenText === undefined ? written : Number(lenText);
      if (lenText !== undefined && (!/^\d{1,3}$/.test(lenText) || len > written)) throw bad(`bad prefix length in ${JSON.stringify(cidr)}`);
      if (c.family === 'ipv4' && written === 128) {
        // ::ffff:a.b.c.d/n is the IPv4 network a.b.c.d/(n-96); a shorter prefix covers
        // more than the mapped range and says nothing clear about IPv4.
        if (len < 96) throw bad(`${JSON.stringify(cidr)} covers more than ::ffff:0:0/96; write IPv4 and IPv6 networks separately`);
        len -= 96;
      }
      const bytes = c.family === 'ipv4' ? ipv4Bytes(c.address) : ipv6Bytes(c.address);
      (c.family === 'ipv4' ? cidrs.v4 : cidrs.v6).push({ bytes, len });
    }
  }
  let ports: [number, number] | null = null;
  if (r.ports !== undefined) {
    const [lo, hi] = typeof r.ports === 'number' ? [r.ports, r.ports] : r.ports;
    if (!isPort(lo) || !isPort(hi) || lo > hi) throw bad(`bad port range ${JSON.stringify(r.ports)}`);
    ports = [lo, hi];
  }
  let path: { path: string; dir: boolean } | null = null;
  if (r.path !== undefined) {
    const n = typeof r.path === 'string' ? normalisePath(r.path) : null;
    if (n === null) throw bad('path must be an absolute path');
    // Targets are judged after realpath(); so is the rule, where it exists (a rule on
    // /var/run/x.sock must match the /run/x.sock a target resolves to).
    let real = n;
    try {
      real = realpathSync(n);
    } catch {
      // not there (yet): the normalised path
    }
    path = { path: real, dir: r.path.endsWith('/') };
  }
  const protos = protocols === null ? null : [...protocols];
  if (path !== null && protos !== null && !protos.includes('unix')) throw bad('path applies to protocol unix only');
  if (protos !== null && protos.length === 1 && protos[0] === 'unix' && (cidrs !== null || ports !== null)) throw bad('protocol unix takes a path, not cidr or ports');
  return { rule: r, protocols, cidrs, ports, path };
}

function isPort(p: unknown): p is number {
  return typeof p === 'number' && Number.isInteger(p) && p >= 0 && p <= 65535;
}
