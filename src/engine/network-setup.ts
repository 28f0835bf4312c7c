// What every network mode (TSI, passt, gvproxy) hands the sandbox, and the small pieces
// the modes share. Kept apart from network.ts, which picks the mode, so a mode never
// imports the module that imports it.
import type { GuestNetConfig } from '../guest/cmdline.js';
import type { TsiboxError } from '../errors.js';
import type { ConnectionEvent } from '../connection-records.js';
import type { PortMap, PortMapping } from '../portmap/index.js';
import type { VirtioDevice } from '../virtio/device.js';
import type { VhostUserDeviceSpec } from './qemu.js';

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


/** Passes the map's 'failed' events to `onError` (TSI and gvproxy modes alike); returns the undo. */
export function followPortMapErrors(portMap: PortMap | undefined, onError: ((err: TsiboxError, m: PortMapping) => void) | undefined): () => void {
  if (portMap === undefined || onError === undefined) return () => {};
  const h = (m: PortMapping, err: TsiboxError): void => { onError(err, m); };
  portMap.on('failed', h);
  return () => { portMap.off('failed', h); };
}
