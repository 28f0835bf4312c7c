// `tsibox run --net passt [--allow CIDR[:PORTS]]...`: the passt network mode (a virtio-net
// NIC wired to passt) for the CLI. The gateway 10.0.2.2 reaches the host's 127.0.0.1.
// As with --net tsi, everything is denied unless --allow permits it (the frame filter
// judges the address the host connects to: --allow 127.0.0.1:PORT for 10.0.2.2:PORT);
// ARP, DHCP and DNS to passt's forwarder 10.0.2.3 always pass.
//
// `tsibox run --net gvproxy [--allow ...] [--publish ...]`: the same NIC wired to gvproxy
// (DHCP in the guest; 192.168.127.254 reaches the host's 127.0.0.1), --publish through
// gvproxy's API.
import type { GvproxyNetwork } from '../engine/network-gvproxy.js';
import type { PasstNetwork } from '../engine/network-passt.js';
import type { Policy } from '../policy/index.js';
import { PortMap } from '../portmap/index.js';
import { UsageError } from './args.js';

/** Sandbox network for --net passt with the policy built from --allow. */
export function passtNetworkOption(policy: Policy): PasstNetwork {
  return { mode: 'passt', policy };
}

/** Sandbox network for --net gvproxy: the policy from --allow, --publish as a PortMap. */
export function gvproxyNetworkOption(policy: Policy, publish: unknown): GvproxyNetwork {
  const published = Array.isArray(publish) ? publish.map(String) : [];
  if (published.length === 0) return { mode: 'gvproxy', policy };
  try {
    return { mode: 'gvproxy', policy, portMap: new PortMap(published) };
  } catch (e) {
    throw new UsageError(`--publish: ${(e as Error).message}`);
  }
}
