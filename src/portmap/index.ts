// Port map: which host ports reach which guest ports, per protocol. Entries can be added
// and removed while the VM runs; the listener and datagram proxies follow the changes
// ('add' / 'remove' events). A host port (per protocol and host address, wildcards
// overlapping everything) and a guest port (per protocol) can each appear only once;
// a conflicting add throws PORT_MAP_CONFLICT naming the entry it collides with.
// An entry the host cannot listen for (its port is taken, EACCES, ...) is taken out of
// the map by whoever tried (`fail()`: a 'remove' event, then 'failed' with a
// PORT_MAP_BIND_FAILED error): the map always says what is published.
import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { TsiboxError } from '../errors.js';

export type MapProtocol = 'tcp' | 'udp';

export interface PortMappingSpec {
  protocol: MapProtocol;
  /** Host port; 0 lets the OS choose (see `PortMapping.boundPort`). */
  hostPort: number;
  guestPort: number;
  /** Host address to listen on (default '127.0.0.1'). */
  hostAddress?: string;
}

export interface PortMapping {
  readonly protocol: MapProtocol;
  readonly hostPort: number;
  readonly guestPort: number;
  readonly hostAddress: string;
  /** The port the host actually listens on while the guest listener is up (hostPort, or the OS choice for 0). */
  boundPort: number | null;
}

export interface PortMapEvents {
  add: [mapping: PortMapping];
  remove: [mapping: PortMapping];
  /**
   * The host could not listen for `mapping` (PORT_MAP_BIND_FAILED; NETWORK_ERROR when
   * gvproxy's API failed otherwise). The entry was taken out of the map first.
   */
  failed: [mapping: PortMapping, error: TsiboxError];
}

const WILDCARDS = new Set(['0.0.0.0', '::']);

export interface PortMapOptions {
  /**
   * Mirror mode, for a sandbox that owns a network namespace (an OCI container): a guest
   * port with no entry is published on the same host port at this address the first
   * time the guest listens on it or binds a UDP socket to it (`mirror()`), as an ordinary
   * entry ('add' event; removable). A host port another entry holds is not mirrored.
   */
  mirrorAddress?: string;
}

export class PortMap extends EventEmitter<PortMapEvents> {
  #entries: PortMapping[] = [];
  readonly #mirrorAddress: string | null;

  /** Parses 'host:guest', 'host:guest/udp' or 'addr:host:guest[/proto]' (libkrun style plus protocol). */
  static parse(spec: string): PortMappingSpec {
    const m = /^(?:(\[[^\]]+\]|[^:]+):)?(\d+):(\d+)(?:\/(tcp|udp))?$/.exec(spec);
    if (m === null) throw new TsiboxError('INVALID_ARGUMENT', `port map ${JSON.stringify(spec)} is not [addr:]host:guest[/tcp|/udp]`);
    const out: PortMappingSpec = { protocol: (m[4] ?? 'tcp') as MapProtocol, hostPort: Number(m[2]), guestPort: Number(m[3]) };
    if (m[1] !== undefined) out.hostAddress = m[1].replace(/^\[|\]$/g, '');
    return out;
  }

  constructor(specs: ReadonlyArray<PortMappingSpec | string> = [], opts: PortMapOptions = {}) {
    super();
    if (opts.mirrorAddress !== undefined && isIP(opts.mirrorAddress) === 0) {
      throw new TsiboxError('INVALID_ARGUMENT', `mirror address ${JSON.stringify(opts.mirrorAddress)} is not an IP address`);
    }
    this.#mirrorAddress = opts.mirrorAddress ?? null;
    for (const s of specs) this.add(s);
  }

  /** The mirror mode's host address (PortMapOptions.mirrorAddress), or null. */
  get mirrorAddress(): string | null {
    return this.#mirrorAddress;
  }

  /**
   * For the proxies, before they look a guest port up: in mirror mode, adds the entry
   * `mirrorAddress:guestPort → guestPort` when the guest port has none and no entry holds
   * that host port. Returns the entry added, or null (not mirror mode, already mapped, or
   * the host port is another entry's).
   */
  mirror(protocol: MapProtocol, guestPort: number): PortMapping | null {
    if (this.#mirrorAddress === null || this.lookupGuest(protocol, guestPort) !== undefined) return null;
    try {
      return this.add({ protocol, hostPort: guestPort, guestPort, hostAddress: this.#mirrorAddress });
    } catch (err) {
      if (err instanceof TsiboxError && err.code === 'PORT_MAP_CONFLICT') return null;
      throw err;
    }
  }

  get entries(): readonly PortMapping[] {
    return this.#entries;
  }

  add(specOrText: PortMappingSpec | string): PortMapping {
    const spec = typeof specOrText === 'string' ? PortMap.parse(specOrText) : specOrText;
    const { protocol, hostPort, guestPort } = spec;
    const hostAddress = spec.hostAddress ?? '127.0.0.1';
    if (protocol !== 'tcp' && protocol !== 'udp') throw new TsiboxError('INVALID_ARGUMENT', `port map protocol must be tcp or udp, got ${String(protocol)}`);
    if (!isPortNumber(hostPort)) throw new TsiboxError('INVALID_ARGUMENT', `host port ${hostPort} is not in 0..65535`);
    if (!isPortNumber(guestPort) || guestPort === 0) throw new TsiboxError('INVALID_ARGUMENT', `guest port ${guestPort} is not in 1..65535`);
    if (isIP(hostAddress) === 0) throw new TsiboxError('INVALID_ARGUMENT', `host address ${JSON.stringify(hostAddress)} is not an IP address`);
    for (const e of this.#entries) {
      if (e.protocol !== protocol) continue;
      if (e.guestPort === guestPort) {
        throw new TsiboxError('PORT_MAP_CONFLICT', `${protocol} guest port ${guestPort} is already mapped from ${describe(e)}`);
      }
      if (hostPort !== 0 && e.hostPort === hostPort && addressesOverlap(e.hostAddress, hostAddress)) {
        throw new TsiboxError('PORT_MAP_CONFLICT', `${protocol} host port ${hostAddress}:${hostPort} conflicts with ${describe(e)}`);
      }
    }
    const mapping: PortMapping = { protocol, hostPort, guestPort, hostAddress, boundPort: null };
    this.#entries.push(mapping);
    this.emit('add', mapping);
    return mapping;
  }

  /** Removes the mapping for `guestPort` (or the given mapping). Returns whether one existed. */
  remove(protocol: MapProtocol, guestPort: number): boolean {
    const i = this.#entries.findIndex((e) => e.protocol === protocol && e.guestPort === guestPort);
    if (i < 0) return false;
    const [m] = this.#entries.splice(i, 1);
    this.emit('remove', m!);
    return true;
  }

  /**
   * For the proxies that carry the map out: the host could not listen for `mapping`.
   * Takes it out of the map ('remove') and emits 'failed'. Returns false (and emits
   * nothing) when the entry had already left the map.
   */
  fail(mapping: PortMapping, error: TsiboxError): boolean {
    const i = this.#entries.indexOf(mapping);
    if (i < 0) return false;
    this.#entries.splice(i, 1);
    this.emit('remove', mapping);
    this.emit('failed', mapping, error);
    return true;
  }

  lookupGuest(protocol: MapProtocol, guestPort: number): PortMapping | undefined {
    return this.#entries.find((e) => e.protocol === protocol && e.guestPort === guestPort);
  }
}

function isPortNumber(p: unknown): p is number {
  return typeof p === 'number' && Number.isInteger(p) && p >= 0 && p <= 65535;
}

function addressesOverlap(a: string, b: string): boolean {
  return a === b || WILDCARDS.has(a) || WILDCARDS.has(b);
}

function describe(e: PortMapping): string {
  return `${e.hostAddress}:${e.hostPort} → guest ${e.guestPort}/${e.protocol}`;
}

/** 'tcp 127.0.0.1:8080 → guest 80' (IPv6 host addresses in brackets). */
export function describeMapping(m: Pick<PortMapping, 'protocol' | 'hostAddress' | 'hostPort' | 'guestPort'>): string {
  const host = m.hostAddress.includes(':') ? `[${m.hostAddress}]` : m.hostAddress;
  return `${m.protocol} ${host}:${m.hostPort} → guest ${m.guestPort}`;
}

const REASONS: Record<string, string> = {
  EADDRINUSE: 'the host port is already in use',
  EACCES: 'not permitted to listen on that host port',
  EPERM: 'not permitted to listen on that host port',
  EADDRNOTAVAIL: 'the host has no such address',
};

/**
 * The PORT_MAP_BIND_FAILED error for a host bind of `m` that failed with `err` (a Node
 * system error): names the mapping and the reason, carries the errno.
 */
export function bindFailure(m: Pick<PortMapping, 'protocol' | 'hostAddress' | 'hostPort' | 'guestPort'>, err: unknown): TsiboxError {
  const e = err as NodeJS.ErrnoException;
  const code = typeof e?.code === 'string' ? e.code : undefined;
  const reason = code !== undefined && REASONS[code] !== undefined ? `${REASONS[code]} (${code})` : (e?.message ?? String(err));
  return new TsiboxError('PORT_MAP_BIND_FAILED', `cannot publish ${describeMapping(m)}: ${reason}`, {
    cause: err, ...(typeof e?.errno === 'number' ? { errno: Math.abs(e.errno) } : {}),
  });
}
