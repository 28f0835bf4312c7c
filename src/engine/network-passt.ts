// Network mode 'passt' under the QEMU engine: a conventional NIC. Our NetDevice is
// served to QEMU over vhost-user (`-netdev vhost-user` + `-device virtio-net-device`),
// its frames go to a passt process on a socketpair, and init configures eth0 with the
// addresses we chose and gave passt (no DHCP in the guest).
import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import type { Logger } from 'pino';
import { HelperProcess } from '../sys/helper-process.js';
import { startPasst, type PasstProcess } from '../../proxies/passt.js';
import { TsiboxError } from '../errors.js';
import { ipv4FromString } from '../../netstack/address.js';
import type { GuestNetConfig } from '../guest/cmdline.js';
import type { RateLimitedLog } from '../log-rate.js';
import { FramePolicyFilter } from '../frame-filter/frame-policy.js';
import type { FlowRecord } from '../connection-records.js';
import type { Policy } from '../policy/index.js';
import { NetDevice, randomMac } from '../virtio/net/index.js';
import type { VhostUserDeviceSpec } from './qemu.js';

/** `Sandbox.run({ network: { mode: 'passt', ... } })`. */
export interface PasstNetwork {
  mode: 'passt';
  /**
   * Required: the egress policy, applied to the guest's frames by the frame filter
   * (src/frame-filter/frame-policy.ts, docs/netstack.md). It judges the address the HOST will
   * connect to: the gateway (10.0.2.2, mapped by passt) is judged as 127.0.0.1.
   * `Policy.allowAll()` is the unrestricted network of earlier versions.
   */
  policy: Policy;
  /** Guest IPv4 address (default 10.0.2.15). */
  address?: string;
  /** Prefix length (default 24). */
  prefix?: number;
  /**
   * Gateway (default 10.0.2.2). passt maps connections to it to the host's loopback
   * (127.0.0.1), so host services on 127.0.0.1 are reachable at this address.
   */
  gateway?: string;
  /**
   * Name servers for the guest's /etc/resolv.conf. Default ['10.0.2.3']: passt's DNS
   * forwarder, which sends what reaches its port 53 on to the host's resolver (the first
   * IPv4 nameserver of the host's /etc/resolv.conf, 127.0.0.1 when there is none). The
   * policy judges those queries as what they are: udp/tcp to that resolver, port 53
   * (`allow udp <resolver>:53` lets the guest resolve names; a deny-all policy leaves it
   * none). Other servers are judged as themselves. false: no resolv.conf, no forwarder.
   */
  dns?: string[] | false;
  /** The guest's MAC (default: random, locally administered). */
  mac?: string;
  /** Host ports passt forwards to the guest, as passt -t / -u specs ('8080:80'). Fixed at start. */
  tcpForwards?: string[];
  udpForwards?: string[];
  /** false: the gateway is just a router, not the host (passt --no-map-gw). */
  mapGatewayToHost?: boolean;
  /** Record the guest's traffic (passt -p; the file must be writable by passt's user). */
  pcap?: string;
  /** The passt binary (default: $TSIBOX_PASST, else passt from PATH). */
  passtPath?: string;
}

export const PASST_DEFAULTS = { address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', dns: '10.0.2.3' } as const;

export interface PasstNetworkSetup {
  /** Add to the QEMU devices. */
  device: VhostUserDeviceSpec;
  /** Put into InitConfig.net. */
  guest: GuestNetConfig;
  netDevice: NetDevice;
  passt: PasstProcess;
  /** The policy filter between the device and passt (stats, finished flows). */
  filter: FramePolicyFilter;
  /** Resolves with a NETWORK_ERROR if passt ends before close() (the sandbox then ends). */
  failed: Promise<TsiboxError>;
  /** Stops passt (idempotent). */
  close(): Promise<void>;
}

/**
 * Starts passt and builds the device; the caller runs QEMU, then close(). `guestLog` is
 * the sandbox's rate-limited log for lines the guest can trigger (net.flow); default:
 * one of the filter's own.
 */
export async function startPasstNetwork(n: PasstNetwork, log: Logger, guestLog?: RateLimitedLog, onFlow?: (rec: FlowRecord) => void): Promise<PasstNetworkSetup> {
  if (n.mode !== 'passt') throw new TsiboxError('INVALID_ARGUMENT', `network.mode ${String(n.mode)} is not 'passt'`);
  checkPasstPolicy(n);
  const address = n.address ?? PASST_DEFAULTS.address;
  const prefix = n.prefix ?? PASST_DEFAULTS.prefix;
  const gateway = n.gateway ?? PASST_DEFAULTS.gateway;
  const dns = n.dns === false ? [] : (n.dns ?? [PASST_DEFAULTS.dns]);
  const defaultDns = n.dns === undefined;
  const guest: GuestNetConfig = { address, prefix, gateway, ...(dns.length > 0 ? { dns } : {}) };
  checkSubnet(guest);
  const mac = n.mac ?? randomMac();
  // Read before passt starts, as passt reads it when it starts.
  const dnsUpstream = defaultDns ? passtDnsUpstream(readResolvConf()) : null;
  const passt = await startPasst({
    address, prefix, gateway, mac, logger: log,
    // No -D: it only fills passt's DHCP answers (the guest's resolv.conf comes from
    // init), and with -D passt skips the host's resolv.conf and forwards DNS to 0.0.0.0,
    // the host's loopback.
    ...(defaultDns ? { dnsForward: PASST_DEFAULTS.dns } : {}),
    ...(n.tcpForwards ? { tcpForwards: n.tcpForwards } : {}),
    ...(n.udpForwards ? { udpForwards: n.udpForwards } : {}),
    ...(n.mapGatewayToHost === false ? { mapGateway: false } : {}),
    ...(n.pcap !== undefined ? { pcap: n.pcap } : {}),
    ...(n.passtPath !== undefined ? { binary: n.passtPath } : {}),
  });
  const filter = new FramePolicyFilter({
    inner: passt.backend, policy: n.policy, gateway, guestAddress: address, mapGatewayToHost: n.mapGatewayToHost !== false,
    ...(dnsUpstream !== null ? { dnsForward: { match: PASST_DEFAULTS.dns, upstream: dnsUpstream } } : {}),
    logger: log, ...(guestLog ? { log: guestLog } : {}), ...(onFlow ? { onFlow } : {}),
  });
  let netDevice: NetDevice;
  try {
    // QEMU's virtio-mmio offers 1024-entry rings under microvm (see defaultQemuDevices).
    netDevice = new NetDevice({ backend: filter, mac, queueSize: 1024 });
  } catch (err) {
    await passt.close();
    throw err;
  }
  const device: VhostUserDeviceSpec = {
    device: netDevice,
    qemuDevice: 'virtio-net-device',
    name: 'net',
    // QEMU's virtio-net keeps the config space (MAC, status) and any control queue;
    // the back end gets the rx and tx rings.
    activeQueues: 2,
    socketPath: true,
    qemuArgs: (chardev) => ['-netdev', `vhost-user,id=net0,chardev=${chardev}`, '-device', `virtio-net-device,netdev=net0,mac=${mac}`],
  };
  let closed: Promise<void> | null = null;
  const failed = passt.exited.then((ex) => (closed !== null ? new Promise<never>(() => {}) : new TsiboxError('NETWORK_ERROR',
    `the sandbox's network process passt (pid ${passt.pid}) ${HelperProcess.describe(ex)} while the sandbox ran; the sandbox was stopped${passt.stderr ? `; passt's last lines:\n${passt.stderr.split('\n').slice(-5).join('\n')}` : ''}`)));
  return {
    device, guest, netDevice, passt, filter, failed,
    close: () => (closed ??= (async () => {
      filter.close(); // logs the flows still open
      await passt.close();
      log.debug({ stats: netDevice.stats(), filter: filter.stats() }, 'virtio-net done');
    })()),
  };
}

/** The host's /etc/resolv.conf ('' when unreadable). */
export function readResolvConf(): string {
  try {
    return readFileSync('/etc/resolv.conf', 'utf8');
  } catch {
    return '';
  }
}

/**
 * Where passt (Debian 12's, 2023-03) forwards DNS queries sent to its --dns-forward
 * address: the first `nameserver` line of the host's resolv.conf whose last word is an
 * IPv4 address (kept as it is, loopback included); with none, 127.0.0.1 (passt then
 * writes to 0.0.0.0, which Linux delivers to loopback). Measured, not documented.
 */
export function passtDnsUpstream(resolvConf: string): string {
  for (const line of resolvConf.split('\n')) {
    // As passt parses it: the line starts with "nameserver ", the address follows the last space.
    if (!line.startsWith('nameserver ')) continue;
    const last = line.slice(line.lastIndexOf(' ') + 1);
    if (!isIPv4(last)) continue;
    return last.startsWith('0.') ? '127.0.0.1' : last;
  }
  return '127.0.0.1';
}

/** passt mode names its policy: there is no silent allow-all. */
export function checkPasstPolicy(n: PasstNetwork): void {
  // TSI-only options would be silently ignored here: passt opens the host sockets itself.
  for (const k of ['unixSockets', 'limits', 'portMap', 'onPortMapError', 'hostLoopbackAlias', 'hostLoopbackAlias6']) {
    if ((n as unknown as Record<string, unknown>)[k] !== undefined) {
      throw new TsiboxError('INVALID_ARGUMENT', `network.${k} is a TSI option; mode 'passt' has no use for it (see tcpForwards / udpForwards, and the policy)`);
    }
  }
  const p = (n as { policy?: unknown }).policy;
  if (p === undefined || p === null || typeof (p as { evaluate?: unknown }).evaluate !== 'function') {
    throw new TsiboxError('INVALID_ARGUMENT', "network.policy is required for mode 'passt' (new Policy({ default, rules }); Policy.allowAll() for an unrestricted network)");
  }
}

/** An IPv4 address as a 32-bit number, or null when `a` is none. */
function ipv4Number(a: unknown): number | null {
  const b = typeof a === 'string' ? ipv4FromString(a) : null;
  return b === null ? null : b.reduce((n, x) => (n * 256) + x, 0);
}

function checkSubnet(g: GuestNetConfig): void {
  // Validates the addresses (netToken throws for malformed ones) and the subnet.
  const mask = g.prefix >= 1 && g.prefix <= 30 ? (0xffff_ffff << (32 - g.prefix)) >>> 0 : 0;
  if (mask === 0) throw new TsiboxError('INVALID_ARGUMENT', `network.prefix ${g.prefix} is not 1..30`);
  const notIPv4 = (k: string, v: unknown): TsiboxError => new TsiboxError('INVALID_ARGUMENT', `network.${k} ${JSON.stringify(v)} is not an IPv4 address`);
  const address = ipv4Number(g.address);
  if (address === null) throw notIPv4('address', g.address);
  const gateway = ipv4Number(g.gateway);
  if (gateway === null) throw notIPv4('gateway', g.gateway);
  if (((address & mask) >>> 0) !== ((gateway & mask) >>> 0)) {
    throw new TsiboxError('INVALID_ARGUMENT', `network.gateway ${g.gateway} is not in ${g.address}/${g.prefix}`);
  }
  if (g.address === g.gateway) throw new TsiboxError('INVALID_ARGUMENT', 'network.address and network.gateway are the same');
  if ((g.dns ?? []).length > 3) throw new TsiboxError('INVALID_ARGUMENT', 'network.dns: at most 3 servers');
}
