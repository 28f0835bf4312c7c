// A sandbox's network mode, whatever the engine: the devices it adds (for the KVM
// engine as virtio-mmio devices, for QEMU as vhost-user back ends), the guest's network
// configuration for init, and one close(). Modes: TSI (network-tsi.ts), passt
// (network-passt.ts), gvproxy (network-gvproxy.ts).
import type { Logger } from 'pino';
import type { RateLimitedLog } from '../log-rate.js';
import type { VsockDevice } from '../virtio/vsock/device.js';
import type { FinishedConnection, FlowRecord } from '../connection-records.js';
import type { NetworkHooks, NetworkSetup } from './network-setup.js';
import { startGvproxyNetwork, type GvproxyNetwork } from './network-gvproxy.js';
import { startPasstNetwork, type PasstNetwork } from './network-passt.js';
import { startTsiNetwork, type TsiNetwork } from './network-tsi.js';

/** Starts the network mode the options name, on the sandbox's vsock device. */
export async function startNetwork(network: TsiNetwork | PasstNetwork | GvproxyNetwork, vsock: VsockDevice, log: Logger, guestLog: RateLimitedLog, hooks: NetworkHooks = {}): Promise<NetworkSetup> {
  const onFlow = hooks.onConnection === undefined ? undefined : ((cb) => (rec: FlowRecord) => { cb(Object.assign({ event: 'net.flow' as const }, rec)); })(hooks.onConnection);
  if (network.mode === 'passt') {
    const p = await startPasstNetwork(network, log, guestLog, onFlow);
    return { devices: [p.netDevice], qemuDevices: [p.device], guest: p.guest, failed: p.failed, close: () => p.close() };
  }
  if (network.mode === 'gvproxy') {
    const g = await startGvproxyNetwork(network, log, guestLog, onFlow);
    return { devices: [g.netDevice], qemuDevices: [g.device], guest: g.guest, failed: g.failed, close: () => g.close() };
  }
  const onConnection = hooks.onConnection === undefined ? undefined : ((cb) => (rec: FinishedConnection) => { cb(Object.assign({ event: 'tsi.connection' as const }, rec)); })(hooks.onConnection);
  return await startTsiNetwork(network, vsock, log, guestLog, onConnection);
}
