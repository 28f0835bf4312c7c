// What every TSI proxy shares.
import type { Logger } from 'pino';
import type { Policy } from '../src/policy/index.js';
import type { PortMap } from '../src/portmap/index.js';
import type { GuestStreamPorts } from '../src/guest-stream.js';
import type { ConnectionLog } from './connection-log.js';
import type { RateLimitedLog } from '../src/log-rate.js';
import type { TsiLimits } from './limits.js';
import type { HostAliases } from '../src/policy/host-aliases.js';

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
