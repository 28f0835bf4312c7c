// A running sandbox's published ports: the port map of its network mode, changed at run
// time. TSI and gvproxy carry out a PortMap's 'add' / 'remove' events while the VM
// runs (proxies/listener.ts, proxies/datagram.ts, proxies/gvproxy-ports.ts); passt
// fixes its forwards when it starts, and a sandbox without a network has no ports.
import { TsiboxError } from './errors.js';
import { PortMap, type MapProtocol, type PortMapping } from './portmap/index.js';
import { checkHostPorts } from './portmap/preflight.js';

/** What `ports.publish()` takes: only `guestPort` is required. */
export interface PublishSpec {
  guestPort: number;
  /** Host port; 0 or absent: the OS chooses (the result says which). */
  hostPort?: number;
  /** Host address to listen on (default '127.0.0.1'). */
  hostAddress?: string;
  /** Default 'tcp'. */
  protocol?: MapProtocol;
}

/** A published port as it is now: `hostPort` is the bound one (never 0). */
export interface PublishedPort {
  protocol: MapProtocol;
  guestPort: number;
  hostAddress: string;
  hostPort: number;
}

export interface PublishOptions {
  /**
   * How long to wait for the host to listen, in ms (default 30 000). Under TSI the
   * host listens once a guest socket listens on the guest port (at once when one
   * already does); gvproxy listens at once.
   */
  timeoutMs?: number;
}

/** Ports of one sandbox (`sandbox.ports`). */
export class SandboxPorts {
  readonly #map: PortMap | null;
  readonly #why: string;
  readonly #ended: Promise<unknown>;
  #over = false;

  /** `map` null: no run-time ports, for the reason `why` (errors say it). */
  constructor(map: PortMap | null, why: string, ended: Promise<unknown>) {
    this.#map = map;
    this.#why = why;
    this.#ended = ended;
    void ended.then(() => { this.#over = true; }, () => { this.#over = true; });
  }

  /**
   * Publishes `spec.guestPort` on the host and resolves once the host listens, with the
   * bound port. Errors (TsiboxError codes): NOT_SUPPORTED (passt, no network),
   * INVALID_ARGUMENT / PORT_MAP_CONFLICT (bad or overlapping entry), PORT_MAP_BIND_FAILED
   * (the host port is taken or not permitted), PORT_PUBLISH_TIMEOUT (see
   * PublishOptions.timeoutMs; the entry is removed again), INVALID_STATE (the sandbox ended).
   */
  async publish(spec: PublishSpec, opts: PublishOptions = {}): Promise<PublishedPort> {
    const map = this.#need();
    if (spec === null || typeof spec !== 'object') throw new TsiboxError('INVALID_ARGUMENT', 'publish({ guestPort, hostPort?, hostAddress?, protocol? })');
    const timeoutMs = opts.timeoutMs ?? 30_000;
    if (!Number.isInteger(timeoutMs) || timeoutMs < 0) throw new TsiboxError('INVALID_ARGUMENT', `publish timeoutMs ${String(opts.timeoutMs)} is not a whole number of ms`);
    const entry = {
      protocol: spec.protocol ?? 'tcp', guestPort: spec.guestPort, hostPort: spec.hostPort ?? 0,
      hostAddress: spec.hostAddress ?? '127.0.0.1',
    };
    const clash = map.lookupGuest(entry.protocol, entry.guestPort) !== undefined ||
      map.entries.some((e) => e.protocol === entry.protocol && e.hostPort === entry.hostPort);
    if (Number.isInteger(entry.hostPort) && entry.hostPort > 0 && entry.hostPort <= 65535 && !clash) {
      // Before the entry exists (its carrier may bind at once): under TSI a taken port
      // would otherwise fail only when the guest listens. A clash with the map's own
      // entries is the map's PORT_MAP_CONFLICT (add() below).
      const busy = await checkHostPorts([{ ...entry, boundPort: null }]);
      if (busy !== null) throw busy;
    }
    const m = map.add(entry);
    return await new Promise<PublishedPort>((resolve, reject) => {
      let done = false;
      const finish = (err: TsiboxError | null): void => {
        if (done) return;
        done = true;
        clearInterval(poll);
        clearTimeout(timer);
        map.off('failed', onFailed);
        if (err === null) {
          resolve({ protocol: m.protocol, guestPort: m.guestPort, hostAddress: m.hostAddress, hostPort: m.boundPort! });
          return;
        }
        if (map.entries.includes(m)) map.remove(m.protocol, m.guestPort);
        reject(err);
      };
      const onFailed = (f: PortMapping, e: TsiboxError): void => { if (f === m) finish(e); };
      map.on('failed', onFailed);
      // boundPort is set by whoever carries the map out; it has no event of its own.
      const poll = setInterval(() => { if (m.boundPort !== null) finish(null); }, 20);
      const timer = setTimeout(() => {
        finish(new TsiboxError('PORT_PUBLISH_TIMEOUT', `${m.protocol} guest port ${m.guestPort}: the host did not listen within ${timeoutMs} ms (under TSI it does once a guest socket listens on that port)`));
      }, timeoutMs);
      void this.#ended.then(() => { finish(new TsiboxError('INVALID_STATE', 'the sandbox ended')); }, () => { finish(new TsiboxError('INVALID_STATE', 'the sandbox ended')); });
      if (m.boundPort !== null) finish(null);
    });
  }

  /**
   * Stops publishing a guest port: the host listener closes at once (new connections
   * are refused); connections already made go on. Resolves false when it was not published.
   */
  async unpublish(spec: { guestPort: number; protocol?: MapProtocol }): Promise<boolean> {
    return this.#need().remove(spec.protocol ?? 'tcp', spec.guestPort);
  }

  /** Published ports; `hostPort` is the bound port, or null while the host does not listen. */
  list(): Array<Omit<PublishedPort, 'hostPort'> & { hostPort: number | null }> {
    return (this.#map?.entries ?? []).map((m) => ({
      protocol: m.protocol, guestPort: m.guestPort, hostAddress: m.hostAddress,
      hostPort: m.boundPort,
    }));
  }

  #need(): PortMap {
    if (this.#map === null) throw new TsiboxError('NOT_SUPPORTED', `ports cannot change while this sandbox runs: ${this.#why}`);
    if (this.#over) throw new TsiboxError('INVALID_STATE', 'the sandbox ended');
    return this.#map;
  }
}
