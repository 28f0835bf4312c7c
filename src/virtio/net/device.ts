// virtio-net (device id 1): queues rx (0) and tx (1); config is the MAC address and
// the link status. Like libkrun's passt/gvproxy path it offers no offloads, no
// MRG_RXBUF, no control queue and one queue pair: every buffer holds one virtio_net_hdr
// (12 bytes; 10 for a legacy driver) and one whole Ethernet frame. The header is stripped on tx and
// written zeroed (num_buffers 1) on rx; frames travel through a FrameBackend.
//
// Every tx frame is copied out of guest memory once, before the backend sees it: what a
// filter decides on is what is forwarded (the guest's other vCPUs cannot change it).
//
// Flow control: tx buffers are taken only while the backend accepts frames; rx frames
// the guest has no buffers for wait in a bounded queue (the backend is paused above a
// high-water mark, frames past the limit are dropped and counted). Everything the
// guest wrote is checked: a chain too short for a header, a frame shorter than an
// Ethernet header or longer than MAX_FRAME_SIZE is dropped and counted; nothing here
// throws because of the guest.
import { randomBytes } from 'node:crypto';
import { TsiboxError } from '../../errors.js';
import { isMulticastMac, macFromString } from '../../../netstack/index.js';
import { DeviceId, Feature } from '../constants.js';
import { readConfigBytes, type DeviceContext, type VirtioDevice } from '../device.js';
import { gather, scatter } from '../iovec.js';
import type { DescriptorChain, Virtqueue } from '../queue.js';
import type { FrameBackend, FramePort } from '../../../netstack/frame-port.js';

export const RX_QUEUE = 0;
export const TX_QUEUE = 1;

/** Feature bits of virtio-net (virtio 1.2 §5.1.3) we name; we offer MAC and STATUS. */
export const NetFeature = {
  CSUM: 1n << 0n,
  GUEST_CSUM: 1n << 1n,
  MTU: 1n << 3n,
  MAC: 1n << 5n,
  MRG_RXBUF: 1n << 15n,
  STATUS: 1n << 16n,
  CTRL_VQ: 1n << 17n,
  MQ: 1n << 22n,
} as const;

/** virtio_net_hdr with VERSION_1: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers. */
export const NET_HDR_SIZE = 12;
/**
 * The legacy header (no num_buffers): what a driver that did not accept VERSION_1 (nor
 * MRG_RXBUF) uses, e.g. Linux behind QEMU's virtio-mmio, which is legacy by default.
 */
export const LEGACY_NET_HDR_SIZE = 10;
/** Destination MAC, source MAC, EtherType. */
export const ETH_HEADER_SIZE = 14;
/** Largest frame either way (64 KiB: passt's and the guest's largest without GSO). */
export const MAX_FRAME_SIZE = 65536;
/** config.status bit. */
export const VIRTIO_NET_S_LINK_UP = 1;

/** Chains handled per turn of the event loop before yielding. */
const TX_BATCH = 256;

export interface NetDeviceOptions {
  /** Where frames go. */
  backend: FrameBackend;
  /** MAC address "aa:bb:cc:dd:ee:ff" (default: random, locally administered). */
  mac?: string;
  /** Ring size of both queues (default 256; QEMU's virtio-mmio needs 1024). */
  queueSize?: number;
  /** Frames held for the guest at most; more are dropped (default 256). */
  rxQueueLimit?: number;
  /** Pause the backend when this many frames are held (default half the limit). */
  rxHighWater?: number;
}

export interface NetStats {
  txFrames: number;
  txBytes: number;
  /** Guest frames dropped: chain shorter than the header, runt or oversized frame, backend gone. */
  txDropped: number;
  rxFrames: number;
  rxBytes: number;
  /** Frames for the guest dropped because the rx queue was full (or the frame was malformed). */
  rxDropped: number;
  /** Frames for the guest dropped because they did not fit the guest's buffer. */
  rxTooBig: number;
  /** rx chains the guest posted that cannot hold any frame (returned unused). */
  rxBadChains: number;
  /** Frames held now for want of guest buffers. */
  rxQueued: number;
  /** Whether the backend is paused by us / has told us it is full. */
  rxPaused: boolean;
  txBlocked: boolean;
}

/** Parses "aa:bb:cc:dd:ee:ff" (or '-' separated). */
export function parseMac(mac: string): Uint8Array {
  const b = macFromString(mac);
  if (b === null) throw new TsiboxError('INVALID_ARGUMENT', `MAC address ${JSON.stringify(mac)} is not aa:bb:cc:dd:ee:ff`);
  if (isMulticastMac(b)) throw new TsiboxError('INVALID_ARGUMENT', `MAC address ${mac} is a multicast address`);
  return b;
}

export function formatMac(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join(':');
}

/** A random unicast, locally administered MAC. */
export function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0]! & 0xfc) | 0x02;
  return formatMac(b);
}

export class NetDevice implements VirtioDevice, FramePort {
  readonly deviceId = DeviceId.NET;
  readonly features = NetFeature.MAC | NetFeature.STATUS;
  readonly queueSizes: readonly number[];
  readonly mac: string;
  readonly #backend: FrameBackend;
  readonly #config = new Uint8Array(8);
  readonly #rxLimit: number;
  readonly #rxHigh: number;
  readonly #rxLow: number;
  #ctx: DeviceContext | null = null;
  #rx: Virtqueue | null = null;
  #tx: Virtqueue | null = null;
  /** Frames for the guest waiting for rx buffers, oldest first. */
  #held: Buffer[] = [];
  #heldHead = 0;
  #rxPaused = false;
  #txBlocked = false;
  #txScheduled = false;
  #backendGone: string | null = null;
  /** Every tx frame is copied here out of guest memory before the backend sees it. */
  #scratch = Buffer.alloc(MAX_FRAME_SIZE);
  #hdr = new Uint8Array(NET_HDR_SIZE);
  #hdrSize = NET_HDR_SIZE;
  #stats = { txFrames: 0, txBytes: 0, txDropped: 0, rxFrames: 0, rxBytes: 0, rxDropped: 0, rxTooBig: 0, rxBadChains: 0 };

  constructor(opts: NetDeviceOptions) {
    const mac = parseMac(opts.mac ?? randomMac());
    this.mac = formatMac(mac);
    this.#config.set(mac, 0);
    this.#config[6] = VIRTIO_NET_S_LINK_UP;
    const size = opts.queueSize ?? 256;
    this.queueSizes = [size, size];
    this.#rxLimit = Math.max(1, opts.rxQueueLimit ?? 256);
    this.#rxHigh = Math.min(this.#rxLimit, Math.max(1, opts.rxHighWater ?? Math.ceil(this.#rxLimit / 2)));
    this.#rxLow = Math.floor(this.#rxHigh / 2);
    this.#backend = opts.backend;
    this.#backend.attach(this);
  }

  get active(): boolean {
    return this.#ctx !== null;
  }

  stats(): NetStats {
    return { ...this.#stats, rxQueued: this.#held.length - this.#heldHead, rxPaused: this.#rxPaused, txBlocked: this.#txBlocked };
  }

  // ---- VirtioDevice ----

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.#config, offset, data);
  }

  writeConfig(): void {
    // MAC and status are read-only for a VERSION_1 driver.
  }

  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    const modern = (ctx.features & (Feature.VERSION_1 | NetFeature.MRG_RXBUF)) !== 0n;
    this.#hdrSize = modern ? NET_HDR_SIZE : LEGACY_NET_HDR_SIZE;
    this.#hdr = new Uint8Array(this.#hdrSize);
    if (modern) this.#hdr[10] = 1; // num_buffers: always one buffer per frame without MRG_RXBUF
    this.#rx = ctx.queues[RX_QUEUE] ?? null;
    this.#tx = ctx.queues[TX_QUEUE] ?? null;
    this.#flushRx();
    this.#processTx();
  }

  reset(): void {
    this.#ctx = null;
    this.#rx = null;
    this.#tx = null;
  }

  queueNotify(index: number): void {
    if (index === RX_QUEUE) this.#flushRx();
    else if (index === TX_QUEUE) this.#processTx();
  }

  // ---- FramePort (the backend's side) ----

  deliver(frame: Buffer): void {
    if (frame.length < ETH_HEADER_SIZE || frame.length > MAX_FRAME_SIZE) {
      this.#stats.rxDropped++;
      return;
    }
    if (this.#held.length - this.#heldHead >= this.#rxLimit) {
      this.#stats.rxDropped++;
      this.#pauseRx();
      return;
    }
    this.#held.push(frame);
    this.#flushRx();
    if (this.#held.length - this.#heldHead >= this.#rxHigh) this.#pauseRx();
  }

  writable(): void {
    if (!this.#txBlocked) return;
    this.#txBlocked = false;
    this.#processTx();
  }

  closed(reason: string | null): void {
    this.#backendGone = reason ?? 'backend closed';
    this.#ctx?.log.debug({ reason }, 'virtio-net backend closed');
    this.#txBlocked = false;
    this.#processTx();
  }

  // ---- rx: network → guest ----

  #pauseRx(): void {
    if (this.#rxPaused) return;
    this.#rxPaused = true;
    this.#backend.pause();
  }

  #flushRx(): void {
    const ctx = this.#ctx;
    const q = this.#rx;
    if (ctx === null || q === null) return;
    let used = 0;
    while (this.#heldHead < this.#held.length) {
      const chain = q.pop();
      if (chain === null) break;
      const frame = this.#held[this.#heldHead]!;
      const room = chain.writableBytes - this.#hdrSize;
      if (room < ETH_HEADER_SIZE) {
        // Cannot hold any frame (header-only or readable-only chain): hand it back empty.
        this.#stats.rxBadChains++;
        q.addUsed(chain.head, 0);
        used++;
        continue;
      }
      this.#heldHead++;
      if (frame.length > room) {
        // The guest's buffers are smaller than this frame (e.g. a datagram above its MTU).
        this.#stats.rxTooBig++;
        q.unpop();
        continue;
      }
      scatter(chain.writable, this.#hdr, [frame]);
      q.addUsed(chain.head, this.#hdrSize + frame.length);
      this.#stats.rxFrames++;
      this.#stats.rxBytes += frame.length;
      used++;
    }
    if (this.#heldHead === this.#held.length) {
      this.#held = [];
      this.#heldHead = 0;
    } else if (this.#heldHead > 1024) {
      this.#held = this.#held.slice(this.#heldHead);
      this.#heldHead = 0;
    }
    if (used > 0) ctx.signalUsed(q);
    if (this.#rxPaused && this.#held.length - this.#heldHead <= this.#rxLow) {
      this.#rxPaused = false;
      this.#backend.resume();
    }
  }

  // ---- tx: guest → network ----

  #processTx(): void {
    const ctx = this.#ctx;
    const q = this.#tx;
    if (ctx === null || q === null) return;
    let n = 0;
    while (!this.#txBlocked) {
      if (n >= TX_BATCH) {
        this.#scheduleTx();
        break;
      }
      const chain = q.pop();
      if (chain === null) break;
      n++;
      this.#sendChain(chain);
      q.addUsed(chain.head, 0);
    }
    if (n > 0) ctx.signalUsed(q);
  }

  #scheduleTx(): void {
    if (this.#txScheduled) return;
    this.#txScheduled = true;
    setImmediate(() => {
      this.#txScheduled = false;
      this.#processTx();
    });
  }

  #sendChain(chain: DescriptorChain): void {
    const len = chain.readableBytes - this.#hdrSize;
    if (len < ETH_HEADER_SIZE || len > MAX_FRAME_SIZE || this.#backendGone !== null) {
      this.#stats.txDropped++;
      return;
    }
    const frame = gather(chain.readable, this.#hdrSize, len, this.#scratch);
    this.#stats.txFrames++;
    this.#stats.txBytes += len;
    if (!this.#backend.send(frame)) this.#txBlocked = true;
  }
}
