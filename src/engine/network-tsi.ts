// TSI networking as a network mode: the TSI host (proxies, policy, port map, limits)
// on the sandbox's vsock device. The vsock device itself belongs to every sandbox
// (both engines attach it), so this mode adds no device and no guest configuration.
import { isIPv4, isIPv6 } from 'node:net';
import type { Logger } from 'pino';
import { TsiboxError } from '../errors.js';
import type { RateLimitedLog } from '../log-rate.js';
import type { Policy } from '../policy/index.js';
import type { PortMap } from '../portmap/index.js';
import type { VsockDevice } from '../virtio/vsock/device.js';
import { resolveLimits, type TsiLimitOptions } from '../../proxies/limits.js';
import { TsiHost } from '../../proxies/tsi.js';
import type { NetworkSetup } from './network.js';

/**
 * TSI networking (docs/tsi-protocol.md): the guest's TCP connect() to a non-local
 * address is made by tsibox on the host, if the policy allows it.
 */
export interface SandboxNetwork {
  mode: 'tsi';
  /** Required: decides every connection (see src/policy). */
  policy: Policy;
  /** Host ports exposed to guest listeners (TSI listen() is not in the guest kernel yet). */
  portMap?: PortMap;
  /**
   * A guest IPv4 address that stands for the host's 127.0.0.1 (e.g. '10.0.2.2'): guest
   * connections to it are made to 127.0.0.1 on the host. Applied before the policy,
   * which therefore must allow 127.0.0.1. Off by default.
   */
  hostLoopbackAlias?: string;
  /** The same for IPv6 (e.g. 'fd00::2' → ::1). Off by default. */
  hostLoopbackAlias6?: string;
  /**
   * Let the guest connect to host unix sockets (AF_UNIX through TSI), subject to the
   * policy's `protocol: 'unix'` rules on the canonical path. Default false: a guest
   * AF_UNIX connect to a host path fails with EACCES (docs/security.md).
   */
  unixSockets?: boolean;
  /**
   * Limits on what the guest can hold open on the host (docs/security.md): concurrent
   * connections (512), listeners (128), UDP sockets (256), new connections per second
   * (1000). Over a limit the guest gets ENOBUFS (EAGAIN for the rate), never a host failure.
   */
  limits?: TsiLimitOptions;
}


/** Checks a TSI network option (INVALID_ARGUMENT with the field at fault). */
export function checkTsiNetwork(n: SandboxNetwork): void {
  if (n.mode !== 'tsi') throw new TsiboxError('INVALID_ARGUMENT', `network.mode ${JSON.stringify(n.mode)} is not 'tsi' or 'passt'`);
  if (n.policy === undefined || typeof (n.policy as { evaluate?: unknown }).evaluate !== 'function') {
    throw new TsiboxError('INVALID_ARGUMENT', 'network.policy is required (new Policy({ default, rules }))');
  }
  if (n.hostLoopbackAlias !== undefined && !isIPv4(n.hostLoopbackAlias)) throw new TsiboxError('INVALID_ARGUMENT', `network.hostLoopbackAlias ${n.hostLoopbackAlias} is not an IPv4 address`);
  if (n.hostLoopbackAlias6 !== undefined && !isIPv6(n.hostLoopbackAlias6)) throw new TsiboxError('INVALID_ARGUMENT', `network.hostLoopbackAlias6 ${n.hostLoopbackAlias6} is not an IPv6 address`);
  if (n.unixSockets !== undefined && typeof n.unixSockets !== 'boolean') throw new TsiboxError('INVALID_ARGUMENT', 'network.unixSockets must be a boolean');
  resolveLimits(n.limits);
}

/** The TSI host on `vsock` for this sandbox; close() stops its proxies. */
export function startTsiNetwork(network: SandboxNetwork, vsock: VsockDevice, log: Logger, guestLog: RateLimitedLog): NetworkSetup {
  const hostAliases: Record<string, string> = {};
  if (network.hostLoopbackAlias !== undefined) hostAliases[network.hostLoopbackAlias] = '127.0.0.1';
  if (network.hostLoopbackAlias6 !== undefined) hostAliases[network.hostLoopbackAlias6] = '::1';
  const tsi = new TsiHost({
    device: vsock, policy: network.policy, logger: log, hostAliases, guestLog,
    unixSockets: network.unixSockets === true,
    ...(network.limits ? { limits: network.limits } : {}),
    ...(network.portMap ? { portMap: network.portMap } : {}),
  });
  return { devices: [], qemuDevices: [], close: async () => { tsi.close(); } };
}
