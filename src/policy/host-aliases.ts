// Host aliases: guest-visible addresses that stand for host addresses (the host's
// loopback, which a guest cannot name). Both network paths apply them before the policy,
// so the policy judges the real destination: TSI's proxies (text addresses) and the
// frame filter (addresses from frames).
import { TsiboxError } from '../errors.js';
import { canonicalAddress } from '../../netstack/address.js';

/**
 * The host-alias table (docs/tsi-protocol.md §4.1, docs/netstack.md). A guest cannot
 * name host loopback (127.0.0.1 in the guest is its own loopback), so a connection to an alias address is
 * made to the mapped host address instead; the policy sees the real destination, and
 * the guest's getpeername() keeps showing the alias.
 */
export class HostAliases {
  readonly #map = new Map<string, string>();

  /** `from` and `to` must be addresses of the same family. */
  constructor(entries: Iterable<readonly [from: string, to: string]>) {
    for (const [from, to] of entries) {
      const f = canonicalAddress(from);
      const t = canonicalAddress(to);
      if (f === null || t === null) throw new TsiboxError('INVALID_ARGUMENT', `host alias ${from} → ${to}: not an IP address`);
      if (f.family !== t.family) throw new TsiboxError('INVALID_ARGUMENT', `host alias ${from} → ${to}: address families differ`);
      this.#map.set(f.address, t.address);
    }
  }

  get size(): number {
    return this.#map.size;
  }

  /** The host address a guest target address stands for, or undefined when it is no alias. */
  resolve(address: string): string | undefined {
    const c = canonicalAddress(address);
    return c === null ? undefined : this.#map.get(c.address);
  }

  /** The host endpoint a guest target stands for (same port, the mapped address), or undefined when it is no alias. */
  resolveEndpoint(target: { address: string; port: number }): { family: 'ipv4' | 'ipv6'; address: string; port: number } | undefined {
    const real = this.resolve(target.address);
    return real === undefined ? undefined : { family: real.includes(':') ? 'ipv6' : 'ipv4', address: real, port: target.port };
  }
}
