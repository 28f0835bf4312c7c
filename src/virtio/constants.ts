// Numbers from the virtio 1.2 specification (virtio-mmio transport, split rings).

/** virtio-mmio register offsets (version 2 layout). */
export const Reg = {
  MagicValue: 0x000,
  Version: 0x004,
  DeviceId: 0x008,
  VendorId: 0x00c,
  DeviceFeatures: 0x010,
  DeviceFeaturesSel: 0x014,
  DriverFeatures: 0x020,
  DriverFeaturesSel: 0x024,
  QueueSel: 0x030,
  QueueNumMax: 0x034,
  QueueNum: 0x038,
  QueueReady: 0x044,
  QueueNotify: 0x050,
  InterruptStatus: 0x060,
  InterruptAck: 0x064,
  Status: 0x070,
  QueueDescLow: 0x080,
  QueueDescHigh: 0x084,
  QueueDriverLow: 0x090,
  QueueDriverHigh: 0x094,
  QueueDeviceLow: 0x0a0,
  QueueDeviceHigh: 0x0a4,
  ShmSel: 0x0ac,
  ShmLenLow: 0x0b0,
  ShmLenHigh: 0x0b4,
  ShmBaseLow: 0x0b8,
  ShmBaseHigh: 0x0bc,
  QueueReset: 0x0c0,
  ConfigGeneration: 0x0fc,
  Config: 0x100,
} as const;

/** Size of one virtio-mmio window as the guest sees it. */
export const MMIO_WINDOW_SIZE = 0x200;
/** "virt" little-endian. */
export const MMIO_MAGIC = 0x74726976;
export const MMIO_VERSION = 2;
/** Vendor id we report ("TSIB" would be cute; any value works, QEMU uses 0x554d4551). */
export const VENDOR_ID = 0x42495354;

/** Device status bits. */
export const Status = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

/** Interrupt status bits. */
export const Interrupt = {
  USED_BUFFER: 1,
  CONFIG_CHANGE: 2,
} as const;

/** Transport feature bits (device-independent), as bigint masks. */
export const Feature = {
  RING_INDIRECT_DESC: 1n << 28n,
  RING_EVENT_IDX: 1n << 29n,
  VERSION_1: 1n << 32n,
  ACCESS_PLATFORM: 1n << 33n,
  RING_PACKED: 1n << 34n,
} as const;

/** Device ids. */
export const DeviceId = {
  NET: 1,
  BLOCK: 2,
  CONSOLE: 3,
  RNG: 4,
  BALLOON: 5,
  VSOCK: 19,
  FS: 26,
} as const;

/** Split-ring descriptor flags. */
export const Desc = {
  NEXT: 1,
  WRITE: 2,
  INDIRECT: 4,
  /** Bytes per descriptor. */
  SIZE: 16,
} as const;

/** avail.flags: the driver asks the device not to interrupt. */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device asks the driver not to notify. */
export const VRING_USED_F_NO_NOTIFY = 1;

/** Largest split queue the spec allows. */
export const MAX_QUEUE_SIZE = 32768;
