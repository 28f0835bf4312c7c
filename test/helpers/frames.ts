// Crafted Ethernet frames for the frame-filter tests (guest 10.0.2.15, gateway 10.0.2.2,
// passt's DNS forwarder 10.0.2.3), a recording backend, and a filter rig with a clock.
import {
  encodeEthernet, encodeIPv4, encodeIPv6, encodeTcp, encodeUdp, EtherType, IpProto, ipv4FromString,
} from '../../netstack/index.js';
import type { Policy } from '../../src/policy/index.js';
import type { FrameBackend, FramePort } from '../../netstack/frame-port.js';
import { FramePolicyFilter, type FramePolicyOptions } from '../../src/frame-filter/frame-policy.js';
import { memoryLogger, type LogLine } from './memory-logger.js';

export const GUEST = ipv4FromString('10.0.2.15')!;
export const GW = ipv4FromString('10.0.2.2')!;
export const DNS = ipv4FromString('10.0.2.3')!;
export const OUT = ipv4FromString('93.184.216.34')!;
export const GMAC = Buffer.from('02000000000f', 'hex');
export const PMAC = Buffer.from('9a55aa55aa55', 'hex');
// (not fd00::/64: a test host may own addresses there, which the policy judges as loopback)
export const GUEST6 = Buffer.from('fd000001000000000000000000000015', 'hex');
export const PEER6 = Buffer.from('fd000001000000000000000000000002', 'hex');
/** What the rig says passt forwards DNS to. */
export const RESOLVER = '192.0.2.53';

export type From = 'guest' | 'host';

/** Records copies of what it is sent. */
export class RecordingBackend implements FrameBackend {
  port!: FramePort;
  sent: Buffer[] = [];
  attach(p: FramePort): void { this.port = p; }
  send(f: Uint8Array): boolean { this.sent.push(Buffer.from(f)); return true; }
  pause(): void {}
  resume(): void {}
  close(): void {}
}

export function rig(policy: Policy, extra: Partial<Omit<FramePolicyOptions, 'guestAddress'>> = {}) {
  const inner = new RecordingBackend();
  let clock = 0;
  const lines: LogLine[] = [];
  const logger = memoryLogger(lines);
  const filter = new FramePolicyFilter({
    inner, policy, gateway: '10.0.2.2', guestAddress: '10.0.2.15', guestAddress6: 'fd00:1::15', mapGatewayToHost: true, dnsForward: { match: '10.0.2.3', upstream: RESOLVER },
    deferReplies: false, now: () => clock, logger, ...extra,
  });
  const toGuest: Buffer[] = [];
  filter.attach({ deliver: (f) => { toGuest.push(f); }, writable: () => {}, closed: () => {} });
  return { inner, filter, toGuest, lines, advance: (ms: number) => { clock += ms; } };
}

const macs = (from: From): [Buffer, Buffer] => (from === 'guest' ? [PMAC, GMAC] : [GMAC, PMAC]);

export const v4 = (src: Uint8Array, dst: Uint8Array, proto: number, l4: Uint8Array, from: From = 'guest', ip: Partial<Parameters<typeof encodeIPv4>[0]> = {}): Buffer =>
  encodeEthernet(...macs(from), EtherType.IPv4, encodeIPv4({ src, dst, protocol: proto, ...ip }, l4));

export const v6 = (src: Uint8Array, dst: Uint8Array, nextHeader: number, payload: Uint8Array, from: From = 'guest'): Buffer =>
  encodeEthernet(...macs(from), EtherType.IPv6, encodeIPv6({ src, dst, nextHeader }, payload));

export const tcp = (src: Uint8Array, sp: number, dst: Uint8Array, dp: number, flags: number, payload: Uint8Array = Buffer.alloc(0), from: From = 'guest'): Buffer =>
  v4(src, dst, IpProto.TCP, encodeTcp({ srcPort: sp, dstPort: dp, seq: 100, ack: 200, flags }, payload, src, dst), from);

export const udp = (src: Uint8Array, sp: number, dst: Uint8Array, dp: number, payload: Uint8Array, from: From = 'guest'): Buffer =>
  v4(src, dst, IpProto.UDP, encodeUdp(sp, dp, payload, src, dst), from);

/** One IPv4 fragment carrying `data` at byte `offset` of datagram `id`. */
export const frag4 = (src: Uint8Array, dst: Uint8Array, proto: number, id: number, offset: number, more: boolean, data: Uint8Array, from: From = 'guest'): Buffer =>
  v4(src, dst, proto, data, from, { id, fragmentOffset: offset, moreFragments: more });

/** One IPv6 fragment (fixed header + fragment header) carrying `data` at byte `offset`. */
export function frag6(src: Uint8Array, dst: Uint8Array, proto: number, id: number, offset: number, more: boolean, data: Uint8Array, from: From = 'guest'): Buffer {
  const fh = Buffer.alloc(8);
  fh[0] = proto;
  fh.writeUInt16BE(offset | (more ? 1 : 0), 2);
  fh.writeUInt32BE(id >>> 0, 4);
  return v6(src, dst, 44, Buffer.concat([fh, data]), from);
}

/** Cuts `data` (a whole transport message) into pieces of `size` bytes (a multiple of 8), as [offset, more, bytes]. */
export function cut(data: Uint8Array, size: number): Array<[number, boolean, Uint8Array]> {
  const out: Array<[number, boolean, Uint8Array]> = [];
  for (let off = 0; off < data.length; off += size) out.push([off, off + size < data.length, data.subarray(off, Math.min(data.length, off + size))]);
  return out;
}

export { IpProto };
