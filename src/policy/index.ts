// Network policy for proxied connections. Evaluation order (docs/tsi-protocol.md):
// rules are checked in the order given and the FIRST rule whose every condition
// matches decides; when none matches, the caller's explicit `default` decides. There
// is no implicit default: constructing a Policy without one is an error.
import { BlockList, isIPv4 } from 'node:net';
import { TsiboxError } from '../errors.js';
import { canonicalAddress } from '../net/address.js';

export type Action = 'allow' | 'deny';
/** icmp: ICMP/ICMPv6 echo through the virtio-net frame filter (src/net/frame-policy.ts); TSI never asks for it. */
export type Protocol = 'tcp' | 'udp' | 'unix' | 'icmp';
/** outbound: the guest connects out / sends; inbound: a host client reaches a guest listener. */
export type Direction = 'outbound' | 'inbound';

export interface PolicyRule {
  action: Action;
  /** Matches any protocol when absent. */
  protocol?: Protocol | readonly Protocol[];
  /** Matches both directions when absent. */
  direction?: Direction;
  /** CIDRs ('127.0.0.0/8', '::1/128', or a bare address). Absent: any address. IPv4-mapped IPv6 matches IPv4 rules. */
  cidr?: string | readonly string[];
  /** A port or an inclusive [low, high] range. Absent: any port. */
  ports?: number | readonly [number, number];
  /** unix only: the path equals this or lies under it (prefix ending in '/'). */
  path?: string;
  /** Shown in logs. */
  name?: string;
}

export interface PolicyOptions {
  /** What happens when no rule matches. Required: there is no silent default. */
  default: Action;
  rules?: readonly PolicyRule[];
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

interface CompiledRule {
  rule: PolicyRule;
  protocols: ReadonlySet<Protocol> | null;
  blocks: BlockList | null;
  ports: readonly [number, number] | null;
}

const PROTOCOLS: readonly Protocol[] = ['tcp', 'udp', 'unix', 'icmp'];

export class Policy {
  readonly defaultAction: Action;
  readonly #rules: CompiledRule[];

  constructor(opts: PolicyOptions) {
    if (opts === null || typeof opts !== 'object' || (opts.default !== 'allow' && opts.default !== 'deny')) {
      throw new TsiboxError('POLICY_INVALID', "policy needs an explicit default: { default: 'allow' | 'deny' }");
    }
    this.defaultAction = opts.default;
    this.#rules = (opts.rules ?? []).map((r, i) => compile(r, i));
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

  evaluate(q: PolicyQuery): Decision {
    let canon: { family: 'ipv4' | 'ipv6'; address: string } | null | undefined;
    for (let i = 0; i < this.#rules.length; i++) {
      const c = this.#rules[i]!;
      const r = c.rule;
      if (r.direction !== undefined && r.direction !== q.direction) continue;
      if (c.protocols !== null && !c.protocols.has(q.protocol)) continue;
      if (c.blocks !== null) {
        if (q.address === undefined) continue;
        canon ??= canonicalAddress(q.address);
        if (canon === null || !c.blocks.check(canon.address, canon.family)) continue;
      }
      if (c.ports !== null && (q.port === undefined || q.port < c.ports[0] || q.port > c.ports[1])) continue;
      if (r.path !== undefined) {
        if (q.path === undefined) continue;
        const ok = r.path.endsWith('/') ? q.path.startsWith(r.path) : q.path === r.path;
        if (!ok) continue;
      }
      return { action: r.action, rule: i, by: r.name ?? `rule ${i}` };
    }
    return { action: this.defaultAction, rule: -1, by: 'default' };
  }
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
  let blocks: BlockList | null = null;
  if (r.cidr !== undefined) {
    blocks = new BlockList();
    for (const cidr of typeof r.cidr === 'string' ? [r.cidr] : r.cidr) {
      const [addr, lenText, extra] = cidr.split('/');
      const c = addr === undefined ? null : canonicalAddress(addr);
      if (c === null || extra !== undefined || !(addr !== undefined && (isIPv4(addr) || c.family === 'ipv6' || addr.includes(':')))) throw bad(`bad CIDR ${JSON.stringify(cidr)}`);
      const max = c.family === 'ipv4' ? 32 : 128;
      let len = lenText === undefined ? max : Number(lenText);
      if (lenText !== undefined && (!/^\d+$/.test(lenText) || len > max)) throw bad(`bad prefix length in ${JSON.stringify(cidr)}`);
      // ::ffff:a.b.c.d/n → the IPv4 network a.b.c.d/(n-96)
      if (c.family === 'ipv4' && addr.includes(':')) len = lenText === undefined ? 32 : Math.max(0, len - 96);
      blocks.addSubnet(c.address, len, c.family);
    }
  }
  let ports: [number, number] | null = null;
  if (r.ports !== undefined) {
    const [lo, hi] = typeof r.ports === 'number' ? [r.ports, r.ports] : r.ports;
    if (!isPort(lo) || !isPort(hi) || lo > hi) throw bad(`bad port range ${JSON.stringify(r.ports)}`);
    ports = [lo, hi];
  }
  if (r.path !== undefined && (typeof r.path !== 'string' || r.path === '')) throw bad('path must be a non-empty string');
  return { rule: r, protocols, blocks, ports };
}

function isPort(p: unknown): p is number {
  return typeof p === 'number' && Number.isInteger(p) && p >= 0 && p <= 65535;
}
