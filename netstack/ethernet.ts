// Ethernet II frames. One 802.1Q (or 802.1ad) tag is skipped and reported; a second
// tag is refused (the filter drops tagged frames anyway: the guest has no VLANs).
import { fail, ok, type ParseResult } from './result.js';

export const ETH_HLEN = 14;
export const EtherType = { IPv4: 0x0800, ARP: 0x0806, IPv6: 0x86dd, VLAN: 0x8100, QinQ: 0x88a8 } as const;

export interface EthernetFrame {
  dst: Uint8Array;
  src: Uint8Array;
  etherType: number;
  /** The VLAN id of a skipped 802.1Q tag, or null for an untagged frame. */
  vlan: number | null;
  /** Where the payload starts in the frame. */
  payloadOffset: number;
}

export function parseEthernet(frame: Uint8Array): ParseResult<EthernetFrame> {
  if (frame.length < ETH_HLEN) return fail(`ethernet: ${frame.length} bytes is shorter than a header`);
  let etherType = (frame[12]! << 8) | frame[13]!;
  let off = ETH_HLEN;
  let vlan: number | null = null;
  if (etherType === EtherType.VLAN || etherType === EtherType.QinQ) {
    if (frame.length < ETH_HLEN + 4) return fail('ethernet: truncated 802.1Q tag');
    vlan = ((frame[14]! << 8) | frame[15]!) & 0x0fff;
    etherType = (frame[16]! << 8) | frame[17]!;
    off += 4;
    if (etherType === EtherType.VLAN || etherType === EtherType.QinQ) return fail('ethernet: stacked VLAN tags');
  }
  if (etherType < 0x0600) return fail(`ethernet: 802.3 length field ${etherType} (not Ethernet II)`);
  return ok({ dst: frame.subarray(0, 6), src: frame.subarray(6, 12), etherType, vlan, payloadOffset: off });
}

export function encodeEthernet(dst: Uint8Array, src: Uint8Array, etherType: number, payload: Uint8Array): Buffer {
  const out = Buffer.alloc(ETH_HLEN + payload.length);
  out.set(dst.subarray(0, 6), 0);
  out.set(src.subarray(0, 6), 6);
  out.writeUInt16BE(etherType, 12);
  out.set(payload, ETH_HLEN);
  return out;
}

/** Whether a MAC is a group (multicast or broadcast) address: the I/G bit, bit 0 of the first byte (IEEE 802). */
export function isMulticastMac(mac: Uint8Array): boolean {
  return (mac[0]! & 1) !== 0;
}

/** "aa:bb:cc:dd:ee:ff" (or '-' separated) as 6 bytes; null when malformed. The one MAC parser. */
export function macFromString(mac: string): Uint8Array | null {
  if (typeof mac !== 'string') return null;
  const m = /^([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})$/i.exec(mac);
  return m === null ? null : Uint8Array.from(m.slice(1).map((h) => parseInt(h, 16)));
}
