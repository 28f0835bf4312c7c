// IPv4 (RFC 791) and IPv6 (RFC 8200 §4.5) reassembly, for a filter that must judge whole
// datagrams: a fragment's headers mean nothing until every byte of its datagram is here,
// and a backend that does not reassemble (passt) reads a later fragment's data as a
// transport header. The guest is hostile, so:
//  - overlapping fragments drop the whole datagram, and its later fragments until it
//    times out (RFC 5722 for IPv6; the same choice for IPv4). An exact duplicate (same
//    offset and length) is ignored: the first copy is kept, so what is judged is what
//    is forwarded. Fragments that disagree on the end, or non-last fragments whose
//    length is not a multiple of 8, drop it too.
//  - everything is bounded: datagrams in progress, fragments per datagram, the
//    reassembled length (what the length field can say), bytes held in all, and time.
// A complete datagram comes out as ONE unfragmented frame: the first fragment's Ethernet
// and IP headers (IPv6: up to the fragment header, which is removed) with lengths,
// flags and checksum rewritten, then the data.
import { checksum } from './checksum.js';
import type { IpFrame } from './packet.js';

export interface ReassemblyLimits {
  /** Datagrams in progress (or discarded, until their timeout) at most; the oldest makes room. */
  maxDatagrams?: number;
  /** Fragments per datagram at most. */
  maxFragments?: number;
  /** Largest reassembled length field: IPv4 total length, IPv6 payload length. */
  maxDatagramBytes?: number;
  /** Fragment data held in all at most; the oldest datagrams make room. */
  maxTotalBytes?: number;
  /** A datagram not complete this long after its first fragment came is dropped. */
  timeoutMs?: number;
}

export const REASSEMBLY_DEFAULTS: Required<ReassemblyLimits> = {
  maxDatagrams: 64, maxFragments: 256, maxDatagramBytes: 65535, maxTotalBytes: 1 << 20, timeoutMs: 30_000,
};

export type ReassemblyDrop = 'overlap' | 'bad-length' | 'too-big' | 'too-many-fragments' | 'no-room' | 'discarded';

export type ReassemblyResult =
  | { status: 'held' }
  | { status: 'complete'; frame: Buffer }
  | { status: 'dropped'; reason: ReassemblyDrop };

export interface ReassemblyStats {
  /** Datagrams in the table now (in progress or discarded). */
  datagrams: number;
  /** Fragment data bytes held now. */
  bytes: number;
  completed: number;
  /** Datagrams dropped (overlap, bad length, too big, too many fragments, no room). */
  dropped: number;
  /** Fragments of a discarded datagram dropped. */
  discardedFragments: number;
  timedOut: number;
  /** Datagrams dropped to make room for newer ones. */
  evicted: number;
}

interface Part {
  off: number;
  data: Buffer;
}

interface Datagram {
  key: string;
  family: 4 | 6;
  started: number;
  /** The first fragment's frame up to its IP header's end (IPv6: the fragment header), once it came. */
  head: Buffer | null;
  ipOffset: number;
  nextHeader: number;
  nextHeaderAt: number;
  /** Data length, known once the last fragment came (-1 before). */
  total: number;
  have: number;
  /** Sorted by offset, never overlapping. */
  parts: Part[];
  /** An overlap (or another fault) was seen: its fragments are dropped until the timeout. */
  dead: boolean;
}

export class Reassembler {
  readonly limits: Required<ReassemblyLimits>;
  readonly #table = new Map<string, Datagram>();
  #bytes = 0;
  readonly #stats = { completed: 0, dropped: 0, discardedFragments: 0, timedOut: 0, evicted: 0 };

  constructor(limits: ReassemblyLimits = {}) {
    this.limits = { ...REASSEMBLY_DEFAULTS, ...limits };
  }

  stats(): ReassemblyStats {
    return { ...this.#stats, datagrams: this.#table.size, bytes: this.#bytes };
  }

  /** Takes one fragment (`f.ip.fragment` set); its bytes are copied. */
  add(frame: Uint8Array, f: IpFrame, now: number): ReassemblyResult {
    const fr = f.ip.fragment;
    if (fr === null) return { status: 'complete', frame: Buffer.from(frame.subarray(0, f.ip.end)) };
    const key = datagramKey(f);
    let d = this.#table.get(key);
    if (d !== undefined && now - d.started >= this.limits.timeoutMs) {
      this.#remove(d);
      if (!d.dead) this.#stats.timedOut++;
      d = undefined;
    }
    if (d === undefined) {
      d = { key, family: f.ip.family, started: now, head: null, ipOffset: 0, nextHeader: 0, nextHeaderAt: -1, total: -1, have: 0, parts: [], dead: false };
      while (this.#table.size >= this.limits.maxDatagrams) this.#evictOldest();
      this.#table.set(key, d);
    }
    if (d.dead) {
      this.#stats.discardedFragments++;
      return { status: 'dropped', reason: 'discarded' };
    }
    const off = fr.offset;
    const len = f.ip.end - fr.dataOffset;
    const end = off + len;
    if (fr.more && (len === 0 || len % 8 !== 0)) return this.#kill(d, 'bad-length');
    if (end > this.limits.maxDatagramBytes) return this.#kill(d, 'too-big');
    const last = d.parts[d.parts.length - 1];
    if (!fr.more) {
      if (d.total >= 0 && d.total !== end) return this.#kill(d, 'overlap');
      if (last !== undefined && last.off + last.data.length > end) return this.#kill(d, 'overlap');
      d.total = end;
    } else if (d.total >= 0 && end > d.total) {
      return this.#kill(d, 'overlap');
    }
    // Where it goes: before the first part at or after its offset.
    let lo = 0;
    let hi = d.parts.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (d.parts[mid]!.off < off) lo = mid + 1;
      else hi = mid;
    }
    const prev = d.parts[lo - 1];
    const next = d.parts[lo];
    if (next !== undefined && next.off === off && next.data.length === len) return { status: 'held' }; // exact duplicate
    if ((prev !== undefined && prev.off + prev.data.length > off) || (next !== undefined && next.off < end)) return this.#kill(d, 'overlap');
    if (d.parts.length >= this.limits.maxFragments) return this.#kill(d, 'too-many-fragments');
    while (this.#bytes + len > this.limits.maxTotalBytes && this.#evictOldest(d)) { /* made room */ }
    if (this.#bytes + len > this.limits.maxTotalBytes) return this.#kill(d, 'no-room');
    d.parts.splice(lo, 0, { off, data: Buffer.from(frame.subarray(fr.dataOffset, f.ip.end)) });
    d.have += len;
    this.#bytes += len;
    if (fr.first && d.head === null) {
      d.head = Buffer.from(frame.subarray(0, fr.headerEnd));
      d.ipOffset = f.ip.offset;
      d.nextHeader = fr.nextHeader;
      d.nextHeaderAt = fr.nextHeaderAt;
    }
    if (d.head === null || d.total < 0 || d.have !== d.total) return { status: 'held' };
    // Disjoint parts inside [0, total) whose lengths add up to total cover it.
    const whole = this.#build(d);
    this.#remove(d);
    return whole;
  }

  /** Drops datagrams past their timeout. */
  sweep(now: number): void {
    // The table is in arrival order, so the first one not expired ends the walk.
    for (const d of this.#table.values()) {
      if (now - d.started < this.limits.timeoutMs) break;
      this.#remove(d);
      if (!d.dead) this.#stats.timedOut++;
    }
  }

  clear(): void {
    this.#table.clear();
    this.#bytes = 0;
  }

  #build(d: Datagram): ReassemblyResult {
    const head = d.head!;
    const ip = d.ipOffset;
    const hl = head.length - ip;
    const length = d.family === 4 ? hl + d.total : hl - 40 + d.total;
    if (length > this.limits.maxDatagramBytes) {
      this.#stats.dropped++;
      return { status: 'dropped', reason: 'too-big' };
    }
    const out = Buffer.allocUnsafe(head.length + d.total);
    head.copy(out, 0);
    let at = head.length;
    for (const p of d.parts) {
      p.data.copy(out, at);
      at += p.data.length;
    }
    if (d.family === 4) {
      out.writeUInt16BE(length, ip + 2);
      out.writeUInt16BE(out.readUInt16BE(ip + 6) & 0x4000, ip + 6); // keep DF; MF and offset cleared
      out.writeUInt16BE(0, ip + 10);
      out.writeUInt16BE(checksum(out, ip, ip + hl), ip + 10);
    } else {
      out.writeUInt16BE(length, ip + 4);
      out[d.nextHeaderAt] = d.nextHeader;
    }
    this.#stats.completed++;
    return { status: 'complete', frame: out };
  }

  #kill(d: Datagram, reason: ReassemblyDrop): ReassemblyResult {
    this.#bytes -= d.have;
    d.have = 0;
    d.parts = [];
    d.head = null;
    d.dead = true;
    this.#stats.dropped++;
    return { status: 'dropped', reason };
  }

  #remove(d: Datagram): void {
    this.#table.delete(d.key);
    this.#bytes -= d.have;
    d.have = 0;
    d.parts = [];
  }

  /** Drops the oldest datagram other than `keep`; false when there is none. */
  #evictOldest(keep?: Datagram): boolean {
    for (const d of this.#table.values()) {
      if (d === keep) continue;
      this.#remove(d);
      if (!d.dead) this.#stats.evicted++;
      return true;
    }
    return false;
  }
}

/**
 * The reassembly key from the address bytes (one address, one key): IPv4 (src, dst,
 * protocol, id), IPv6 (src, dst, id).
 */
function datagramKey(f: IpFrame): string {
  const ip = f.ip;
  const hex = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.length).toString('hex');
  return ip.family === 4
    ? `4 ${hex(ip.src)} ${hex(ip.dst)} ${ip.protocol} ${ip.fragment!.id}`
    : `6 ${hex(ip.src)} ${hex(ip.dst)} ${ip.fragment!.id}`;
}
