// Network mode 'gvproxy': a conventional NIC (eth0) whose frames go, through the same
// policy filter as passt's (src/frame-filter/frame-policy.ts), to a gvproxy process
// (proxies/gvproxy.ts). The guest configures eth0 by DHCP (init's `tsibox.net=dhcp`;
// gvproxy leases 192.168.127.2 to our MAC). Ports are published through gvproxy's API,
// following a PortMap that may change while the sandbox runs (proxies/gvproxy-ports.ts).
import type { Logger } from 'pino';
import { GVPROXY_NET, startGvproxy, type GvproxyProcess } from '../../proxies/gvproxy.js';
import { GvproxyPorts } from '../../proxies/gvproxy-ports.js';
import { HelperProcess } from '../sys/helper-process.js';
import { TsiboxError } from '../errors.js';
import type { GuestNetConfig } from '../guest/cmdline.js';
import type { RateLimitedLog } from '../log-rate.js';
import { FramePolicyFilter } from '../frame-filter/frame-policy.js';
import type { FlowRecord } from '../connection-records.js';
import type { Policy } from '../policy/index.js';
import type { PortMap, PortMapping } from '../portmap/index.js';
import { NetDevice } from '../virtio/net/index.js';
import { passtDnsUpstream, readResolvConf } from './network-passt.js';
import { followPortMapErrors } from './network-setup.js';
import type { VhostUserDeviceSpec } from './qemu.js';

/** `Sandbox.run({ network: { mode: 'gvproxy', policy, ... } })`. */
export interface GvproxyNetwork {
  mode: 'gvproxy';
  /**
   * Required: the policy, applied to the guest's frames. It judges what the HOST will
   * reach: 192.168.127.254:PORT (gvproxy's NAT to the host) as 127.0.0.1:PORT; DNS to
   * 192.168.127.1:53 as the host's resolver (the first IPv4 `nameserver` of
   * /etc/resolv.conf), port 53. gvproxy's own API at 192.168.127.1:80 (it can open host
   * listeners) is allowed only by a rule naming 192.168.127.1 exactly. Inbound flows to
   * published ports are judged as `inbound` from 127.0.0.1 (gvproxy hides the client's
   * address) to the guest port.
   */
  policy: Policy;
  /**
   * Host ports forwarded to guest ports through gvproxy's API ('127.0.0.1:8080:80').
   * Entries added or removed while the sandbox runs are exposed / unexposed at once;
   * `boundPort` is set while gvproxy listens. Entries present at start that gvproxy
   * refuses fail the start (PORT_MAP_BIND_FAILED, NETWORK_ERROR); a run-time refusal
   * takes the entry out of the map (its 'failed' event) and goes to `onPortMapError`.
   */
  portMap?: PortMap;
  /** A run-time port-map entry gvproxy refused (it is taken out of the map again). Default: the log line (`gvproxy.publish.failed`) only. */
  onPortMapError?: (err: TsiboxError, mapping: PortMapping) => void;
  /** The gvproxy binary (default: $TSIBOX_GVPROXY, else gvproxy from PATH). */
  gvproxyPath?: string;
  /** Where gvproxy's private directory is made (default os.tmpdir()). */
  runtimeDir?: string;
}

export interface GvproxyNetworkSetup {
  device: VhostUserDeviceSpec;
  guest: GuestNetConfig | 'dhcp';
  netDevice: NetDevice;
  gvproxy: GvproxyProcess;
  filter: FramePolicyFilter;
  ports: GvproxyPorts | null;
  /** Resolves with a NETWORK_ERROR if gvproxy ends before close() (the sandbox then ends). */
  failed: Promise<TsiboxError>;
  close(): Promise<void>;
}

const PASST_ONLY = ['address', 'prefix', 'gateway', 'dns', 'mac', 'tcpForwards', 'udpForwards', 'mapGatewayToHost', 'pcap', 'passtPath'];
const TSI_ONLY = ['unixSockets', 'limits', 'hostLoopbackAlias', 'hostLoopbackAlias6'];

/** gvproxy mode names its policy; options of other modes are refused (INVALID_ARGUMENT). */
export function checkGvproxyNetwork(n: GvproxyNetwork): void {
  const rec = n as unknown as Record<string, unknown>;
  for (const k of [...PASST_ONLY, ...TSI_ONLY]) {
    if (rec[k] !== undefined) {
      throw new TsiboxError('INVALID_ARGUMENT', `network.${k} is not an option of mode 'gvproxy' (its addresses are fixed: guest ${GVPROXY_NET.guest}, gateway/DNS ${GVPROXY_NET.gateway}, host ${GVPROXY_NET.hostAlias})`);
    }
  }
  const p = rec['policy'] as { evaluate?: unknown } | undefined | null;
  if (p === undefined || p === null || typeof p.evaluate !== 'function') {
    throw new TsiboxError('INVALID_ARGUMENT', "network.policy is required for mode 'gvproxy' (new Policy({ default, rules }); Policy.allowAll() for an unrestricted network)");
  }
  if (n.portMap !== undefined && typeof (n.portMap as { on?: unknown }).on !== 'function') {
    throw new TsiboxError('INVALID_ARGUMENT', 'network.portMap must be a PortMap');
  }
}

/** Starts gvproxy, the filter, the device and the port forwards; the caller runs the VM, then close(). */
export async function startGvproxyNetwork(n: GvproxyNetwork, log: Logger, guestLog?: RateLimitedLog, onFlow?: (rec: FlowRecord) => void): Promise<GvproxyNetworkSetup> {
  checkGvproxyNetwork(n);
  const dnsUpstream = passtDnsUpstream(readResolvConf());
  const gv = await startGvproxy({
    logger: log, mac: GVPROXY_NET.mac,
    ...(n.gvproxyPath !== undefined ? { binary: n.gvproxyPath } : {}),
    ...(n.runtimeDir !== undefined ? { runtimeDir: n.runtimeDir } : {}),
  });
  let ports: GvproxyPorts | null = null;
  let filter: FramePolicyFilter | null = null;
  try {
    filter = new FramePolicyFilter({
      inner: gv.backend, policy: n.policy, gateway: GVPROXY_NET.gateway, guestAddress: GVPROXY_NET.guest,
      mapGatewayToHost: false, hostAliases: [[GVPROXY_NET.hostAlias, '127.0.0.1']], gatewayServices: 'explicit',
      dnsForward: { match: GVPROXY_NET.dns, upstream: dnsUpstream }, guestMtu: GVPROXY_NET.mtu,
      logger: log, ...(guestLog ? { log: guestLog } : {}), ...(onFlow ? { onFlow } : {}),
    });
    if (n.portMap !== undefined) {
      ports = new GvproxyPorts({
        api: gv.api, portMap: n.portMap, guestAddress: GVPROXY_NET.guest, logger: log,
      });
      await ports.start();
    }
  } catch (err) {
    filter?.close();
    await gv.close();
    throw err;
  }
  const netDevice = new NetDevice({ backend: filter, mac: GVPROXY_NET.mac, queueSize: 1024 });
  const device: VhostUserDeviceSpec = {
    device: netDevice, qemuDevice: 'virtio-net-device', name: 'net', activeQueues: 2, socketPath: true,
    qemuArgs: (chardev) => ['-netdev', `vhost-user,id=net0,chardev=${chardev}`, '-device', `virtio-net-device,netdev=net0,mac=${GVPROXY_NET.mac}`],
  };
  const failed = gv.exited.then((ex) => {
    const how = HelperProcess.describe(ex);
    const err = gv.stderr.split('\n').slice(-5).join('\n');
    return new TsiboxError('NETWORK_ERROR', `the sandbox's network process gvproxy (pid ${gv.pid}) ${how} while the sandbox ran; the sandbox was stopped${err ? `; gvproxy's last lines:\n${err}` : ''}`);
  });
  const f = filter;
  const unfollow = followPortMapErrors(n.portMap, n.onPortMapError);
  let closed: Promise<void> | null = null;
  return {
    device, guest: 'dhcp', netDevice, gvproxy: gv, filter: f, ports,
    // Only an exit before close() is a failure: never settles afterwards.
    failed: failed.then((e) => (gv.closing ? new Promise<never>(() => {}) : e)),
    close: () => (closed ??= (async () => {
      unfollow();
      await ports?.close();
      f.close();
      await gv.close();
      log.debug({ stats: netDevice.stats(), filter: f.stats() }, 'virtio-net (gvproxy) done');
    })()),
  };
}
