// What differs between external vhost-user devices on virtio-mmio: device ID, queue
// count, ring size, feature mask, config space (ours, or the back end's GET_CONFIG) and
// which config fields the driver may write. Today: virtio-fs (virtiofsd) and
// virtio-blk (qemu-storage-daemon).
import { TsiboxError } from '../../../errors.js';
import { DeviceId } from '../../../virtio/constants.js';
import type { HandshakeResult, VhostUserFrontend } from './frontend.js';
import type { ConfigField } from './mmio-transport.js';
import { ProtocolFeature } from '../protocol.js';

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
  /** Config fields the driver may write (sent on as SET_CONFIG); default none. */
  configWritable?: readonly ConfigField[];
}

/** virtio-fs (virtio 1.2 §5.11): tag[36] + num_request_queues (u32 LE) in config space. */
export const VIRTIO_FS_DEVICE_ID = DeviceId.FS;
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

/** virtio-blk (virtio 1.2 §5.2). */
export const VIRTIO_BLK_DEVICE_ID = DeviceId.BLOCK;

/** VIRTIO_BLK_F_* device feature bits (virtio 1.2 §5.2.3). */
export const BlkFeature = {
  SIZE_MAX: 1n << 1n,
  SEG_MAX: 1n << 2n,
  GEOMETRY: 1n << 4n,
  RO: 1n << 5n,
  BLK_SIZE: 1n << 6n,
  FLUSH: 1n << 9n,
  TOPOLOGY: 1n << 10n,
  CONFIG_WCE: 1n << 11n,
  MQ: 1n << 12n,
  DISCARD: 1n << 13n,
  WRITE_ZEROES: 1n << 14n,
  SECURE_ERASE: 1n << 16n,
} as const;

/**
 * struct virtio_blk_config up to and including the write-zeroes fields (virtio 1.2
 * §5.2.4): capacity u64 @0, size_max u32 @8, seg_max u32 @12, geometry @16, blk_size
 * u32 @20, topology @24, writeback u8 @32, num_queues u16 @34, discard fields @36..47,
 * write-zeroes fields @48..56, padding to 60. Every back end since QEMU 4.0 has at least
 * this much; fields after it (secure erase, zoned) belong to features we do not pass.
 */
export const BLK_CONFIG_SIZE = 60;
/** `writeback` (u8): 1 write-back cache (the driver flushes), 0 write-through. */
export const BLK_CONFIG_WRITEBACK = 32;

/**
 * The device bits a vhost-user-blk back end may offer the guest through us: those whose
 * config fields lie inside BLK_CONFIG_SIZE, or that need none. Left out: MQ (one request
 * queue, as the QEMU engine attaches with num-queues=1; Linux then never reads
 * num_queues), SECURE_ERASE and ZONED (config beyond what we read), and legacy-only
 * BARRIER/SCSI.
 */
export const BLK_DEVICE_FEATURES = BlkFeature.SIZE_MAX | BlkFeature.SEG_MAX | BlkFeature.GEOMETRY | BlkFeature.RO
  | BlkFeature.BLK_SIZE | BlkFeature.FLUSH | BlkFeature.TOPOLOGY | BlkFeature.CONFIG_WCE | BlkFeature.DISCARD | BlkFeature.WRITE_ZEROES;

/**
 * A virtio-blk device served by a vhost-user-blk back end (qemu-storage-daemon). One
 * request queue of 256 entries (QEMU's vhost-user-blk default). The config space is the
 * back end's own (GET_CONFIG, so the CONFIG protocol feature is needed: DEVICE_ERROR
 * without it): capacity, RO, block size, topology, discard and write-zeroes limits
 * reach the guest as the back end states them. `writeback` is writable with CONFIG_WCE
 * (Linux: /sys/block/vdX/cache_type), and the change goes to the back end, which
 * switches its cache mode as under QEMU's front end.
 */
export function vhostUserBlkKind(): VhostUserMmioKind {
  return {
    deviceId: VIRTIO_BLK_DEVICE_ID,
    name: 'vhost-user-blk',
    wantsConfig: true,
    queueSize: 256,
    deviceFeatureMask: BLK_DEVICE_FEATURES,
    queues: () => 1,
    config: async (frontend, hs) => {
      if ((hs.protocolFeatures & ProtocolFeature.CONFIG) === 0n) {
        throw new TsiboxError('DEVICE_ERROR', `${frontend.name}: the back end does not offer the CONFIG protocol feature (virtio-blk needs its GET_CONFIG)`);
      }
      // From offset 0, always: libvhost-user (qemu-storage-daemon) ignores GET_CONFIG's offset.
      return frontend.getConfig(0, BLK_CONFIG_SIZE);
    },
    configWritable: [{ offset: BLK_CONFIG_WRITEBACK, size: 1, feature: BlkFeature.CONFIG_WCE }],
  };
}
