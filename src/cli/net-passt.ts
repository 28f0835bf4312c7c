// `tsibox run --net passt [--net-forward SPEC]...`: the passt network mode (a virtio-net
// NIC wired to passt) for the CLI. The gateway 10.0.2.2 reaches the host's 127.0.0.1.
import type { PasstNetwork } from '../engine/network-passt.js';

/** Sandbox network for --net passt. */
export function passtNetworkOption(): PasstNetwork {
  return { mode: 'passt' };
}
