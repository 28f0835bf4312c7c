// What every TSI proxy shares.
import type { Logger } from 'pino';
import type { Policy } from '../src/policy/index.js';
import type { PortMap } from '../src/portmap/index.js';
import type { VsockDevice } from '../src/virtio/vsock/device.js';
import type { ConnectionLog } from './log.js';

export interface TsiContext {
  readonly device: VsockDevice;
  readonly policy: Policy;
  readonly portMap: PortMap;
  readonly connections: ConnectionLog;
  readonly log: Logger;
  /** Host connect timeout and the handshake deadline for a guest's first message (ms). */
  readonly timeoutMs: number;
}
