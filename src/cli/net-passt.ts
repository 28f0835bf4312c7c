// `tsibox run --net passt [--allow CIDR[:PORTS]]...`: the passt network mode (a virtio-net
// NIC wired to passt) for the CLI. The gateway 10.0.2.2 reaches the host's 127.0.0.1.
// As with --net tsi, everything is denied unless --allow permits it (the frame filter
// judges the address the host connects to: --allow 127.0.0.1:PORT for 10.0.2.2:PORT);
// ARP, DHCP and DNS to passt's forwarder 10.0.2.3 always pass.
import type { PasstNetwork } from '../engine/network-passt.js';
import type { Policy } from '../policy/index.js';

/** Sandbox network for --net passt with the policy built from --allow. */
export function passtNetworkOption(policy: Policy): PasstNetwork {
  return { mode: 'passt', policy };
}
