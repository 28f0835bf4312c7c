// TSI networking as a network mode: the TSI host (proxies, policy, port map, limits)
// on the sandbox's vsock device. The vsock device itself belongs to every sandbox
// (both engines attach it), so this mode adds no device and no guest configuration.
import { isIPv4, isIPv6 } from 'node:net';
import type { Logger } from 'pino';
import { TsiboxError } from '../errors.js';
import type { RateLimitedLog } from '../log-rate.js';
import type { Policy } from '../policy/index.js';
import type { PortMap, PortMapping } from '../portmap/index.js';
import { checkHostPorts } from '../portmap/preflight.js';
import type { VsockDevice } from '../virtio/vsock/device.js';
import { resolveLimits, type TsiLimitOptions } from '../../proxies/limits.js';
import { TsiHost } from '../../proxies/tsi.js';
import type { FinishedConnection } from '../connection-records.js';
import { followPortMapErrors, type NetworkSetup } from './network-setup.js';

/**
 * TSI networking (docs/tsi-protocol.md): the guest's TCP connect() to a non-local
 * address is made by tsibox on the host, if the policy allows it.
 */
export interface TsiNetwork {
  mode: 'tsi';
  /** Required: decides every connection (see src/policy). */
  policy: Policy;
  /**
   * Host ports exposed to guest listeners and UDP sockets. Entries present at start
   * whose host port is a number are tried before the guest boots: one that cannot be
   * bound (taken, EACCES) fails the start (PORT_MAP_BIND_FAILED). A later failure (the
   * host listen when the guest listens, a run-time `add()`) takes the entry out of the
   * map and is reported: the map's 'failed' event, `onPortMapError`, and a
   * `tsi.publish.failed` log line.
   */
  portMap?: PortMap;
  /** A port-map entry the host could not listen for after the start (it left the map). Default: the log line only. */
  onPortMapError?: (err: TsiboxError, mapping: PortMapping) => void;
  /**
   * A guest IPv4 address that stands for the host's 127.0.0.1 (e.g. '10.0.2.2'): guest
   * connections to it are made to 127.0.0.1 on the host. Applied before the policy,
   * which therefore must allow 127.0.0.1. Off by default.
   */
  hostLoopbackAlias?: string;
  /** The same for IPv6 (e.g. 'fd00::2' → ::1). Off by default. */
  hostLoopbackAlias6?: string;
  /**
   * Let the guest reach host unix sockets (AF_UNIX through TSI): a guest AF_UNIX
   * stream connect() to a path named by an allow rule with `protocol: 'unix'` (the
   * path itself, or under it when it ends in '/') is made on the host, judged on the
   * canonical host path; other guest unix sockets stay guest-local. Default false:
   * none are carried (docs/security.md, docs/tsi-protocol.md §4).
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
export function checkTsiNetwork(n: TsiNetwork): void {
  if (n.mode !== 'tsi') throw new TsiboxError('INVALID_ARGUMENT', `network.mode ${JSON.stringify(n.mode)} is not 'tsi' or 'passt'`);
  if (n.policy === undefined || typeof (n.policy as { evaluate?: unknown }).evaluate !== 'function') {
    throw new TsiboxError('INVALID_ARGUMENT', 'network.policy is required (new Policy({ default, rules }))');
  }
  if (n.hostLoopbackAlias !== undefined && !isIPv4(n.hostLoopbackAlias)) throw new TsiboxError('INVALID_ARGUMENT', `network.hostLoopbackAlias ${n.hostLoopbackAlias} is not an IPv4 address`);
  if (n.hostLoopbackAlias6 !== undefined && !isIPv6(n.hostLoopbackAlias6)) throw new TsiboxError('INVALID_ARGUMENT', `network.hostLoopbackAlias6 ${n.hostLoopbackAlias6} is not an IPv6 address`);
  if (n.unixSockets !== undefined && typeof n.unixSockets !== 'boolean') throw new TsiboxError('INVALID_ARGUMENT', 'network.unixSockets must be a boolean');
  resolveLimits(n.limits);
}

/**
 * The TSI host on `vsock` for this sandbox; close() stops its proxies. Rejects with
 * PORT_MAP_BIND_FAILED when a numbered host port of the map cannot be bound now.
 */
export async function startTsiNetwork(network: TsiNetwork, vsock: VsockDevice, log: Logger, guestLog: RateLimitedLog, onConnection?: (rec: FinishedConnection) => void): Promise<NetworkSetup> {
  if (network.portMap !== undefined) {
    const busy = await checkHostPorts(network.portMap.entries);
    if (busy !== null) throw busy;
  }
  const hostAliases: Record<string, string> = {};
  if (network.hostLoopbackAlias !== undefined) hostAliases[network.hostLoopbackAlias] = '127.0.0.1';
  if (network.hostLoopbackAlias6 !== undefined) hostAliases[network.hostLoopbackAlias6] = '::1';
  const tsi = new TsiHost({
    device: vsock, policy: network.policy, logger: log, hostAliases, guestLog,
    unixSockets: network.unixSockets === true, ...(onConnection ? { onConnection } : {}),
    ...(network.limits ? { limits: network.limits } : {}),
    ...(network.portMap ? { portMap: network.portMap } : {}),
  });
  const unixPaths = network.unixSockets === true ? guestUnixPaths(network.policy) : [];
  const unfollow = followPortMapErrors(network.portMap, network.onPortMapError);
  return {
    devices: [], qemuDevices: [], close: async () => { unfollow(); tsi.close(); },
    ...(unixPaths.length > 0 ? { kernelArgs: [`tsi.unix_paths=${unixPaths.join(',')}`] } : {}),
  };
}

/**
 * The unix socket paths the guest kernel sends to the host (`tsi.unix_paths=`): the
 * paths of the policy's allow rules for protocol 'unix', as written (a directory when
 * it ends in '/'). The host still judges every connect on the canonical path; this
 * list only tells the guest which AF_UNIX connects are the host's, so that guest-local
 * unix sockets stay local. INVALID_ARGUMENT for a path the kernel command line cannot
 * carry (a space, comma or quote; more than 511 bytes in all).
 */
export function guestUnixPaths(policy: Policy): string[] {
  const paths: string[] = [];
  for (const r of policy.rules) {
    if (r.action !== 'allow' || r.path === undefined) continue;
    const protocols = r.protocol === undefined ? ['unix'] : ([] as string[]).concat(r.protocol);
    if (!protocols.includes('unix')) continue;
    if (/[\s,"]/.test(r.path)) throw new TsiboxError('INVALID_ARGUMENT', `unix rule path ${JSON.stringify(r.path)}: a guest-visible path cannot hold a space, comma or quote`);
    if (!paths.includes(r.path)) paths.push(r.path);
  }
  if (paths.join(',').length > 511) throw new TsiboxError('INVALID_ARGUMENT', 'unix rule paths: more than 511 bytes in all (the guest kernel\'s tsi.unix_paths= limit)');
  return paths;
}

