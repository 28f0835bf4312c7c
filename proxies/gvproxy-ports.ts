// A PortMap (src/portmap) carried out by gvproxy's forwarder API: every entry is
// exposed as `hostAddress:hostPort` → `guest:guestPort`, and the map's 'add' / 'remove'
// events while the sandbox runs expose / unexpose at once. API calls run one at a time,
// in event order. `boundPort` is set once gvproxy listens (the OS's choice for host
// port 0: tsibox picks a free port first, as gvproxy's API needs a number) and cleared
// once it stopped listening. A run-time entry gvproxy refuses is taken out of the map
// again (PortMap.fail: a 'failed' event) and logged (`gvproxy.publish.failed`), as the
// TSI proxies do for a host listen that fails.
import { createServer, isIPv6 } from 'node:net';
import type { Logger } from 'pino';
import { TsiboxError } from '../src/errors.js';
import type { PortMap, PortMapping } from '../src/portmap/index.js';
import type { GvproxyApi } from './gvproxy-api.js';
import { errnoName } from './protocol.js';

export interface GvproxyPortsOptions {
  api: GvproxyApi;
  portMap: PortMap;
  /** The guest's address (gvproxy's lease, 192.168.127.2). */
  guestAddress: string;
  logger: Logger;
}

export class GvproxyPorts {
  readonly #o: GvproxyPortsOptions;
  /** Exposed mappings and the 'ADDR:PORT' gvproxy listens on for each. */
  readonly #exposed = new Map<PortMapping, string>();
  #queue: Promise<void> = Promise.resolve();
  #started = false;
  #closed = false;
  readonly #onAdd = (m: PortMapping): void => { this.#enqueue(() => this.#runtimeExpose(m)); };
  readonly #onRemove = (m: PortMapping): void => { this.#enqueue(() => this.#unexpose(m)); };

  constructor(o: GvproxyPortsOptions) {
    this.#o = o;
  }

  /**
   * Exposes the entries the map holds now, then follows it. Throws the first refusal
   * (PORT_MAP_BIND_FAILED when the host port is taken; NETWORK_ERROR) after undoing the rest.
   */
  async start(): Promise<void> {
    if (this.#started) throw new TsiboxError('INVALID_STATE', 'gvproxy port forwarding already started');
    this.#started = true;
    try {
      for (const m of this.#o.portMap.entries) await this.#expose(m);
    } catch (err) {
      await this.close();
      throw err;
    }
    this.#o.portMap.on('add', this.#onAdd);
    this.#o.portMap.on('remove', this.#onRemove);
  }

  /** Resolves when every change seen so far has reached gvproxy. */
  async settled(): Promise<void> {
    await this.#queue;
  }

  /** Stops following the map and unexposes everything (gvproxy may already be gone). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#o.portMap.off('add', this.#onAdd);
    this.#o.portMap.off('remove', this.#onRemove);
    await this.#queue;
    for (const m of [...this.#exposed.keys()]) {
      try {
        await this.#unexpose(m);
      } catch {
        // gvproxy is gone or going: its listeners go with it
      }
    }
  }

  #enqueue(op: () => Promise<void>): void {
    this.#queue = this.#queue.then(op).catch((err: unknown) => {
      this.#o.logger.debug({ err }, 'gvproxy port-map operation failed');
    });
  }

  async #runtimeExpose(m: PortMapping): Promise<void> {
    if (this.#closed || !this.#o.portMap.entries.includes(m)) return;
    try {
      await this.#expose(m);
    } catch (err) {
      const e = err instanceof TsiboxError ? err : new TsiboxError('NETWORK_ERROR', String(err));
      this.#o.logger.warn({
        event: 'gvproxy.publish.failed', code: e.code, ...(e.errno !== undefined ? { errno: errnoName(e.errno) } : {}), protocol: m.protocol,
        hostAddress: m.hostAddress, hostPort: m.hostPort, guestPort: m.guestPort, err: e.message,
      }, `gvproxy: ${e.message}`);
      this.#o.portMap.fail(m, e);
    }
  }

  async #expose(m: PortMapping): Promise<void> {
    const port = m.hostPort !== 0 ? m.hostPort : await freePort(m.hostAddress, m.protocol);
    const local = endpoint(m.hostAddress, port);
    await this.#o.api.expose({ local, remote: endpoint(this.#o.guestAddress, m.guestPort), protocol: m.protocol });
    this.#exposed.set(m, local);
    m.boundPort = port;
    this.#o.logger.debug({ local, guestPort: m.guestPort, protocol: m.protocol }, 'gvproxy: port exposed');
  }

  async #unexpose(m: PortMapping): Promise<void> {
    const local = this.#exposed.get(m);
    if (local === undefined) return;
    this.#exposed.delete(m);
    try {
      await this.#o.api.unexpose(local, m.protocol);
    } finally {
      m.boundPort = null;
    }
    this.#o.logger.debug({ local, guestPort: m.guestPort, protocol: m.protocol }, 'gvproxy: port unexposed');
  }
}

/** 'ADDR:PORT' as gvproxy's API wants it ('[::1]:80' for IPv6). */
export function endpoint(address: string, port: number): string {
  return isIPv6(address) ? `[${address}]:${port}` : `${address}:${port}`;
}

/** A port the OS calls free on `address` now (TCP; for UDP the same number is used). */
async function freePort(address: string, _protocol: 'tcp' | 'udp'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', (err) => { reject(new TsiboxError('PORT_MAP_BIND_FAILED', `no free port on ${address}: ${err.message}`, { cause: err })); });
    s.listen({ host: address, port: 0, exclusive: true }, () => {
      const a = s.address();
      const port = typeof a === 'object' && a !== null ? a.port : 0;
      s.close(() => { resolve(port); });
    });
  });
}
