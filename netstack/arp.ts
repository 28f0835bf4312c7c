// ARP for Ethernet/IPv4 (RFC 826); other hardware/protocol types are refused.
import { fail, ok, type ParseResult } from './result.js';

export const ARP_LEN = 28;
export const ArpOp = { Request: 1, Reply: 2 } as const;

export interface ArpPacket {
  op: number;
  senderMac: Uint8Array;
  senderIp: Uint8Array;
  targetMac: Uint8Array;
  targetIp: Uint8Array;
}

export function parseArp(b: Uint8Array, off: number): ParseResult<ArpPacket> {
  if (b.length - off < ARP_LEN) return fail('arp: truncated');
  const htype = (b[off]! << 8) | b[off + 1]!;
  const ptype = (b[off + 2]! << 8) | b[off + 3]!;
  if (htype !== 1 || ptype !== 0x0800 || b[off + 4] !== 6 || b[off + 5] !== 4) return fail('arp: not Ethernet/IPv4');
  const op = (b[off + 6]! << 8) | b[off + 7]!;
  if (op !== ArpOp.Request && op !== ArpOp.Reply) return fail(`arp: op ${op}`);
  return ok({
    op,
    senderMac: b.subarray(off + 8, off + 14), senderIp: b.subarray(off + 14, off + 18),
    targetMac: b.subarray(off + 18, off + 24), targetIp: b.subarray(off + 24, off + 28),
  });
}

export function encodeArp(p: ArpPacket): Buffer {
  const out = Buffer.alloc(ARP_LEN);
  out.writeUInt16BE(1, 0);
  out.writeUInt16BE(0x0800, 2);
  out[4] = 6;
  out[5] = 4;
  out.writeUInt16BE(p.op, 6);
  out.set(p.senderMac.subarray(0, 6), 8);
  out.set(p.senderIp.subarray(0, 4), 14);
  out.set(p.targetMac.subarray(0, 6), 18);
  out.set(p.targetIp.subarray(0, 4), 24);
  return out;
}
