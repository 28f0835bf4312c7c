export type { FrameBackend, FramePort } from '../../../netstack/frame-port.js';
export {
  ETH_HEADER_SIZE, LEGACY_NET_HDR_SIZE, MAX_FRAME_SIZE, NET_HDR_SIZE, NetDevice, NetFeature, RX_QUEUE, TX_QUEUE, VIRTIO_NET_S_LINK_UP,
  formatMac, parseMac, randomMac, type NetDeviceOptions, type NetStats,
} from './device.js';
