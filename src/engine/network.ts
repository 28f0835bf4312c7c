// A sandbox's network mode, whatever the engine: the devices it adds (for the KVM
// engine as virtio-mmio devices, for QEMU as vhost-user back ends), the guest's network
// configuration for init, and one close(). Modes: TSI (network-tsi.ts), passt
// (network-passt.ts), gvproxy (network-gvproxy.ts).
import type { Logger } from 'pino';
import type { GuestNetConfig } from '../guest/cmdline.js';
import type { RateLimitedLog } from '../log-rate.js';
import type { VirtioDevice } from '../virtio/device.js';
import type { VsockDevice } from '../virtio/vsock/device.js';
import type { VhostUserDeviceSpec } from './qemu.js';
import type { TsiboxError } from '../errors.js';
import type { FinishedConnection } from '../../proxies/log.js';
import type { FlowRecord } from '../net/frame-flows.js';
import { startGvproxyNetwork, type GvproxyNetwork } from './network-gvproxy.js';
import { startPasstNetwork, type PasstNetwork } from './network-passt.js';
import { startTsiNetwork, type TsiNetwork } from './network-tsi.js';

/**
 * One finished connection or flow, as the sandbox's 'connection' event carries it: a
 * TSI connection (`tsi.connection`: streams, listeners' inbound connections, UDP
 * sockets, vsock bridges) or a virtio-net flow judged by the frame filter (`net.flow`:
 * passt and gvproxy modes). Every record, never rate-limited (unlike the log lines).
 */
export type ConnectionEvent = ({ event: 'tsi.connection' } & FinishedConnection) | ({ event: 'net.flow' } & FlowRecord);

/** What a network mode reports to the sandbox while it runs. */
export interface NetworkHooks {
  onConnection?: (ev: ConnectionEvent) => void;
}

export interface NetworkSetup {
  /** Devices the KVM engine attaches (after console, rng and vsock). */
  devices: VirtioDevice[];
  /** The same devices as QEMU vhost-user back ends. */
  qemuDevices: VhostUserDeviceSpec[];
  /** Guest kernel parameters the mode needs (TSI: `tsi.unix_paths=`). */
  kernelArgs?: string[];
  /** For InitConfig.net (a NIC to configure, or 'dhcp'); absent: no NIC. */
  guest?: GuestNetConfig | 'dhcp';
  /** Resolves with a NETWORK_ERROR when the mode's network process ends while the VM runs (the sandbox stops it). */
  failed?: Promise<TsiboxError>;
  /** Stops what the mode started (idempotent). */
  close(): Promise<void>;
}

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
