// gvproxy's HTTP API on its `-listen unix://` socket (gvisor-tap-vsock 0.8.1, checked
// here): POST /services/forwarder/expose {"local","remote","protocol"},
// POST /services/forwarder/unexpose {"local","protocol"}, GET /services/forwarder/all,
// GET /stats. Errors come back as HTTP 500 with a plain-text reason, e.g.
// "listen tcp 127.0.0.1:8080: bind: address already in use" or "proxy not found".
import { Client } from 'undici';
import { TsiboxError } from '../src/errors.js';

export type ForwardProtocol = 'tcp' | 'udp';

/** One port forward as gvproxy lists it. */
export interface GvproxyForward {
  /** Host side, 'ADDR:PORT' (gvproxy listens there). */
  local: string;
  /** Guest side, 'ADDR:PORT'. */
  remote: string;
  protocol: ForwardProtocol;
}

/** Client of one gvproxy's API socket (one undici Client, one close()). */
export class GvproxyApi {
  readonly socketPath: string;
  readonly #client: Client;
  readonly #timeoutMs: number;
  #closed = false;

  /** `timeoutMs`: per request (default 5000 ms). */
  constructor(socketPath: string, timeoutMs = 5000) {
    this.socketPath = socketPath;
    this.#timeoutMs = timeoutMs;
    this.#client = new Client('http://gvproxy', { socketPath, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, pipelining: 1 });
  }

  /**
   * Forwards host `local` to guest `remote`. Throws PORT_MAP_BIND_FAILED when the host
   * address is taken (by gvproxy or anyone; errno EADDRINUSE) or not permitted
   * (EACCES), NETWORK_ERROR for other API failures.
   */
  async expose(f: GvproxyForward): Promise<void> {
    await this.#request('POST', '/services/forwarder/expose', f, (status, text) => {
      const errno = /address already in use|already running|already exposed/i.test(text) ? 98 : /permission denied/i.test(text) ? 13 : 0;
      return errno !== 0
        ? new TsiboxError('PORT_MAP_BIND_FAILED', `gvproxy cannot listen on ${f.protocol} ${f.local}: ${text}`, { errno })
        : apiError('expose', status, text);
    });
  }

  /** Stops forwarding host `local`. Throws NETWORK_ERROR (also when it was not exposed). */
  async unexpose(local: string, protocol: ForwardProtocol): Promise<void> {
    await this.#request('POST', '/services/forwarder/unexpose', { local, protocol }, (status, text) => apiError('unexpose', status, text));
  }

  /** Every forward gvproxy holds now. */
  async list(): Promise<GvproxyForward[]> {
    const text = await this.#request('GET', '/services/forwarder/all', undefined, (status, t) => apiError('list', status, t));
    const v = JSON.parse(text) as unknown;
    if (!Array.isArray(v)) throw new TsiboxError('NETWORK_ERROR', `gvproxy API: /services/forwarder/all returned ${text.slice(0, 200)}`);
    return v as GvproxyForward[];
  }

  /** gvproxy's network-stack counters (the JSON of GET /stats). */
  async stats(): Promise<Record<string, unknown>> {
    return JSON.parse(await this.#request('GET', '/stats', undefined, (status, t) => apiError('stats', status, t))) as Record<string, unknown>;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#client.destroy();
  }

  async #request(method: 'GET' | 'POST', path: string, body: unknown, onError: (status: number, text: string) => TsiboxError): Promise<string> {
    if (this.#closed) throw new TsiboxError('INVALID_STATE', 'gvproxy API client is closed');
    let status: number;
    let text: string;
    try {
      const r = await this.#client.request({
        method, path,
        ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
      status = r.statusCode;
      text = (await r.body.text()).trim();
    } catch (err) {
      throw new TsiboxError('NETWORK_ERROR', `gvproxy API ${method} ${path} failed: ${(err as Error).message}`, { cause: err });
    }
    if (status < 200 || status > 299) throw onError(status, text);
    return text;
  }
}

function apiError(what: string, status: number, text: string): TsiboxError {
  return new TsiboxError('NETWORK_ERROR', `gvproxy API ${what}: HTTP ${status}${text ? `: ${text.slice(0, 500)}` : ''}`);
}
