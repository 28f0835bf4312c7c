// What differs between external vhost-user devices on virtio-mmio: device ID, queue
// count, ring size, config space. A new kind (vhost-user-blk: device ID 2, one queue or
// GET_QUEUE_NUM, config from the back end's GET_CONFIG with the CONFIG protocol
// feature) is one more object of this shape.
import { TsiboxError } from '../../errors.js';
import type { HandshakeResult, VhostUserFrontend } from './frontend.js';

export interface VhostUserMmioKind {
  /** virtio device ID the guest sees. */
  deviceId: number;
  /** Names the kind in log lines (e.g. 'vhost-user-fs'). */
  name: string;
  /** Ask for the CONFIG protocol feature in the handshake (needed for GET_CONFIG). */
  wantsConfig: boolean;
  /** QueueNumMax: a power of two ≤ 1024. */
  queueSize: number;
  /** Device-specific feature bits (0..23) to let through; default all the back end offers. */
  deviceFeatureMask?: bigint;
  /** Queues the device has, given the handshake (checked against GET_QUEUE_NUM). */
  queues(hs: HandshakeResult): number;
  /** The config space bytes, made here or read from the back end. */
  config(frontend: VhostUserFrontend, hs: HandshakeResult): Promise<Uint8Array>;
}

/** virtio-fs (virtio 1.2 §5.11): tag[36] + num_request_queues (u32 LE) in config space. */
export const VIRTIO_FS_DEVICE_ID = 26;
const FS_TAG_BYTES = 36;

/**
 * A virtio-fs device served by virtiofsd, mounted in the guest by `tag` (≤ 36 bytes of
 * UTF-8; INVALID_ARGUMENT otherwise). One request queue (Debian 12's virtiofsd refuses
 * more), so queues are hiprio (0) and request (1). The config space is ours, as QEMU's
 * vhost-user-fs-device serves it too. Ring size 128, QEMU's default for this device.
 */
export function virtioFsKind(tag: string): VhostUserMmioKind {
  const bytes = Buffer.from(tag, 'utf8');
  if (bytes.length === 0 || bytes.length > FS_TAG_BYTES) throw new TsiboxError('INVALID_ARGUMENT', `virtio-fs tag must be 1..${FS_TAG_BYTES} bytes, got ${bytes.length}`);
  const config = Buffer.alloc(FS_TAG_BYTES + 4);
  bytes.copy(config, 0);
  config.writeUInt32LE(1, FS_TAG_BYTES);
  return {
    deviceId: VIRTIO_FS_DEVICE_ID,
    name: 'vhost-user-fs',
    wantsConfig: false,
    queueSize: 128,
    queues: () => 2,
    config: () => Promise.resolve(config),
  };
}
