// Packet codecs for the virtio-net path (docs/netstack.md). Parsers return ParseResult
// and never throw on malformed input; encoders build valid packets with checksums.
export * from './result.js';
export * from './checksum.js';
export * from './address.js';
export * from './ethernet.js';
export * from './arp.js';
export * from './ipv4.js';
export * from './ipv6.js';
export * from './tcp.js';
export * from './udp.js';
export * from './icmp.js';
export * from './packet.js';
export * from './replies.js';
export * from './reassembly.js';
export * from './fragment.js';
export type { FrameBackend, FramePort } from './frame-port.js';
