// What every TSI proxy shares.
import type { Logger } from 'pino';
import type { Policy } from '../src/policy/index.js';
import type { PortMap } from '../src/portmap/index.js';
import type { GuestStreamPorts } from '../src/guest-stream.js';
import type { ConnectionLog } from './connection-log.js';
import type { RateLimitedLog } from '../src/log-rate.js';
import type { TsiLimits } from './limits.js';
import { TsiboxError } from '../src/errors.js';
import { canonicalAddress } from '../netstack/address.js';

export interface TsiContext {
  readonly device: GuestStreamPorts;
  readonly policy: Policy;
  readonly portMap: PortMap;
  readonly connections: ConnectionLog;
  readonly log: Logger;
  /** Guest-triggered log lines (denials, limits, malformed requests) go through this. */
  readonly guestLog: RateLimitedLog;
  readonly limits: TsiLimits;
  /** Whether the guest may connect to host unix sockets at all (opt-in; the policy still decides which). */
  readonly unixSockets: boolean;
  /** Host connect timeout and the handshake deadline for a guest's first message (ms). */
  readonly timeoutMs: number;
  /**
   * Guest-visible aliases for host loopback, applied to outbound TCP targets BEFORE the
   * policy: canonical guest address ('10.0.2.2', 'fd00:0:0:0:0:0:0:2') → host address
   * ('127.0.0.1', '::1'). See HostAliases.
   */
  readonly aliases?: HostAliases;
}

/**
 * The host-alias table (docs/tsi-protocol.md §4.1). A guest cannot name host loopback
 * (127.0.0.1 in the guest is its own loopback), so a connection to an alias address is
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
