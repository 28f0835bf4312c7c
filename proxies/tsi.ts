// The host side of TSI in one object: the vsock services on the host CID (control,
// stream and datagram ports, docs/tsi-protocol.md) wired to the proxies, the policy and
// the port map.
import type { Logger } from 'pino';
import { silentLogger } from '../src/log.js';
import { RateLimitedLog } from '../src/log-rate.js';
import type { Policy } from '../src/policy/index.js';
import { PortMap } from '../src/portmap/index.js';
import type { GuestStreamPorts } from '../src/guest-stream.js';
import type { TsiContext } from './context.js';
import { HostAliases } from '../src/policy/host-aliases.js';
import { DatagramProxy } from './datagram.js';
import { TsiLimits, type TsiLimitOptions } from './limits.js';
import { ListenerProxy } from './listener.js';
import type { FinishedConnection } from './connection-log.js';
import { ConnectionLog } from './connection-log.js';
import { TsiPort } from './protocol.js';
import { StreamProxy } from './stream.js';

export interface TsiHostOptions {
  device: GuestStreamPorts;
  /** Required: the caller decides what the guest may reach. */
  policy: Policy;
  portMap?: PortMap;
  logger?: Logger;
  /** Host connect timeout and guest handshake deadline (default 10 s). */
  timeoutMs?: number;
  /**
   * Guest address → host address, applied to outbound TCP targets before the policy
   * (e.g. `{ '10.0.2.2': '127.0.0.1', 'fd00::2': '::1' }`: the guest reaches host
   * loopback services through 10.0.2.2 / fd00::2).
   */
  hostAliases?: Record<string, string>;
  /**
   * Whether guest connects to host unix sockets are proxied at all (default false:
   * CONNECT to AF_UNIX fails with EACCES and HELLO does not offer it). When true the
   * policy still decides, on the canonical path (docs/security.md).
   */
  unixSockets?: boolean;
  /** Sees every finished connection record (never rate-limited; Sandbox 'connection' events). */
  onConnection?: (rec: FinishedConnection) => void;
  /** Connection, listener, UDP socket and connect-rate limits (defaults in proxies/limits.ts). */
  limits?: TsiLimitOptions;
  /**
   * Where guest-triggered log lines go (rate-limited; default: one built on `logger`,
   * 200 lines at once, 50 a second). Share one per sandbox with the frame filter.
   */
  guestLog?: RateLimitedLog;
}

export class TsiHost {
  readonly device: GuestStreamPorts;
  readonly portMap: PortMap;
  readonly connections: ConnectionLog;
  readonly stream: StreamProxy;
  readonly listener: ListenerProxy;
  readonly datagram: DatagramProxy;
  readonly limits: TsiLimits;
  readonly guestLog: RateLimitedLog;
  readonly #stops: Array<() => void>;

  constructor(opts: TsiHostOptions) {
    const log = opts.logger ?? silentLogger;
    this.device = opts.device;
    this.portMap = opts.portMap ?? new PortMap();
    this.guestLog = opts.guestLog ?? new RateLimitedLog(log);
    this.connections = new ConnectionLog(this.guestLog, opts.onConnection);
    this.limits = new TsiLimits(opts.limits);
    const ctx: TsiContext = {
      device: opts.device, policy: opts.policy, portMap: this.portMap, connections: this.connections, log, timeoutMs: opts.timeoutMs ?? 10_000,
      guestLog: this.guestLog, limits: this.limits, unixSockets: opts.unixSockets === true,
      ...(opts.hostAliases ? { aliases: new HostAliases(Object.entries(opts.hostAliases)) } : {}),
    };
    this.stream = new StreamProxy(ctx);
    this.listener = new ListenerProxy(ctx);
    this.datagram = new DatagramProxy(ctx);
    this.#stops = [
      opts.device.listen(TsiPort.CONTROL, (c) => { this.listener.handle(c); }),
      opts.device.listen(TsiPort.STREAM, (c) => { this.stream.handle(c); }, { type: 'stream' }),
      opts.device.listen(TsiPort.DGRAM, (c) => { this.datagram.handle(c); }),
    ];
  }

  close(): void {
    for (const s of this.#stops) s();
    this.stream.close();
    this.listener.close();
    this.datagram.close();
    this.guestLog.flush();
  }
}
