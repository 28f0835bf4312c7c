// virtio-vsock (device id 19): queues rx (0), tx (1), event (2); config is the guest
// CID (le64). The device terminates vsock connections on the host: host code listens
// on vsock ports (`listen`) for guest-initiated connections and opens connections to
// guest ports (`connect`). It needs nothing but the DeviceContext, so any engine (the
// KVM engine, or vhost-user under QEMU) can serve it.
//
// Everything in a guest packet is checked: header length, payload length against the
// buffers and the 64 KiB packet limit, CIDs, socket type, op, state and credit. A bad
// packet is dropped or answered with RST; nothing on this path throws.
import { TsiboxError } from '../../errors.js';
import { DeviceId } from '../constants.js';
import { readConfigBytes, type DeviceContext, type VirtioDevice } from '../device.js';
import { gather, scatter } from '../iovec.js';
import type { DescriptorChain } from '../queue.js';
import { VsockConnection, connectionKey, type CloseReason, type ConnectionHost } from './connection.js';
import {
  HEADER_SIZE, HOST_CID, MAX_PACKET_PAYLOAD, MIN_GUEST_CID, Op, VSOCK_EVENT_TRANSPORT_RESET, VsockFeature, VsockType,
  decodeHeader, encodeHeader, type PacketHeader,
} from './header.js';

export const RX_QUEUE = 0;
export const TX_QUEUE = 1;
export const EVENT_QUEUE = 2;

/** Host-side ports the device picks for host-initiated connections start here. */
const EPHEMERAL_BASE = 0x4000_0000;
/** RSTs for unknown connections waiting for rx buffers; more are dropped. */
const MAX_CONTROL_BACKLOG = 1024;
const HOST_CID_BIG = BigInt(HOST_CID);

export type ListenHandler = (conn: VsockConnection) => void;

export interface VsockOptions {
  /** Guest CID (default 3). */
  guestCid?: number | bigint;
  queueSize?: number;
  /** Offer VIRTIO_VSOCK_F_SEQPACKET (default true). */
  seqpacket?: boolean;
  /** Receive buffer advertised to the guest per connection (default 256 KiB). */
  bufAlloc?: number;
  /** Host→guest bytes queued per connection before write() returns false (default 256 KiB). */
  highWater?: number;
  /** Most simultaneous connections (default 4096); more are refused with RST. */
  maxConnections?: number;
  /** How long a host-initiated connect waits for the guest (default 5 s). */
  connectTimeoutMs?: number;
}

export interface VsockStats {
  connections: number;
  /** Host→guest bytes queued in the device, all connections. */
  bufferedToGuest: number;
  /** Guest→host bytes delivered and not yet consumed, all connections. */
  unconsumed: number;
  packetsFromGuest: number;
  packetsToGuest: number;
  /** Guest packets dropped as malformed. */
  malformed: number;
  /** RSTs dropped because the guest posted no rx buffers and the backlog was full. */
  droppedControl: number;
}

export class VsockDevice implements VirtioDevice, ConnectionHost {
  readonly deviceId = DeviceId.VSOCK;
  readonly features: bigint;
  readonly queueSizes: readonly number[];
  readonly #opts: Required<Omit<VsockOptions, 'guestCid' | 'queueSize' | 'seqpacket'>>;
  #guestCid: bigint;
  #config = new Uint8Array(8);
  #ctx: DeviceContext | null = null;
  #seqpacket = false;
  #conns = new Map<string, VsockConnection>();
  #listeners = new Map<number, { handler: ListenHandler; type: VsockType | null }>();
  /** Connections with something to send, in round-robin order. */
  #ready = new Set<VsockConnection>();
  #control: PacketHeader[] = [];
  #flushScheduled = false;
  #pendingEvents = 0;
  #nextEphemeral = EPHEMERAL_BASE;
  #buffered = 0;
  #scratch = new Uint8Array(HEADER_SIZE);
  #scratchView = new DataView(this.#scratch.buffer);
  #stats = { packetsFromGuest: 0, packetsToGuest: 0, malformed: 0, droppedControl: 0 };

  constructor(opts: VsockOptions = {}) {
    this.#guestCid = checkCid(opts.guestCid ?? 3);
    this.#writeConfig();
    this.features = opts.seqpacket === false ? 0n : VsockFeature.SEQPACKET;
    const size = opts.queueSize ?? 256;
    this.queueSizes = [size, size, 8];
    this.#opts = {
      bufAlloc: opts.bufAlloc ?? 256 * 1024,
      highWater: opts.highWater ?? 256 * 1024,
      maxConnections: opts.maxConnections ?? 4096,
      connectTimeoutMs: opts.connectTimeoutMs ?? 5000,
    };
  }

  get guestCid(): bigint {
    return this.#guestCid;
  }

  /** Whether the driver is live. */
  get active(): boolean {
    return this.#ctx !== null;
  }

  /** Whether the driver accepted SEQPACKET. */
  get seqpacketNegotiated(): boolean {
    return this.#seqpacket;
  }

  stats(): VsockStats {
    let unconsumed = 0;
    for (const c of this.#conns.values()) unconsumed += c.unconsumed;
    return { connections: this.#conns.size, bufferedToGuest: this.#buffered, unconsumed, ...this.#stats };
  }

  // ---- host API ----

  /**
   * Accept guest connections to host port `port`. `type` limits the socket type
   * (default: both). Returns a function that stops listening (open connections stay).
   */
  listen(port: number, handler: ListenHandler, opts: { type?: 'stream' | 'seqpacket' } = {}): () => void {
    if (!Number.isInteger(port) || port < 0 || port > 0xffff_ffff || port === 0xffff_ffff) {
      throw new TsiboxError('INVALID_ARGUMENT', `vsock port ${port} is not a u32 port`);
    }
    if (this.#listeners.has(port)) throw new TsiboxError('VSOCK_PORT_IN_USE', `host vsock port ${port} already has a listener`);
    const type = opts.type === undefined ? null : opts.type === 'stream' ? VsockType.STREAM : VsockType.SEQPACKET;
    const entry = { handler, type };
    this.#listeners.set(port, entry);
    return () => { if (this.#listeners.get(port) === entry) this.#listeners.delete(port); };
  }

  /**
   * Opens a connection to guest port `guestPort`; 'connect' or 'close' ('refused')
   * follows. Throws TsiboxError VSOCK_BUSY when `maxConnections` are open.
   */
  connect(guestPort: number, opts: { type?: 'stream' | 'seqpacket' } = {}): VsockConnection {
    if (!Number.isInteger(guestPort) || guestPort < 0 || guestPort >= 0xffff_ffff) {
      throw new TsiboxError('INVALID_ARGUMENT', `vsock port ${guestPort} is not a u32 port`);
    }
    const type = opts.type === 'seqpacket' ? VsockType.SEQPACKET : VsockType.STREAM;
    // Host clients (published ports, bridges) count against the same bound as the guest's.
    if (this.#conns.size >= this.#opts.maxConnections) {
      throw new TsiboxError('VSOCK_BUSY', `vsock: ${this.#conns.size} connections open, the limit is ${this.#opts.maxConnections}`);
    }
    const hostPort = this.#ephemeralPort(guestPort);
    const conn = this.#newConnection(type, hostPort, guestPort, 'host');
    const timer = setTimeout(() => { conn.timeout(); }, this.#opts.connectTimeoutMs);
    timer.unref();
    const clear = (): void => { clearTimeout(timer); };
    conn.once('connect', clear);
    conn.once('close', clear);
    if (this.#ctx === null) {
      queueMicrotask(() => { conn.abort('refused', 'vsock driver not active'); });
    } else {
      this.wake(conn);
    }
    return conn;
  }

  /**
   * Transport reset (virtio 1.2 §5.10.6.6): every connection ends and the guest is
   * told through the event queue; the guest re-reads the CID.
   */
  resetTransport(): void {
    const events = this.#ctx?.queues[EVENT_QUEUE];
    if (this.#ctx !== null && (events === null || events === undefined)) {
      // No event queue of ours (QEMU keeps it under vhost-user): the guest cannot hear
      // the event, so each connection is reset on its own (RST), which it does hear.
      for (const c of [...this.#conns.values()]) c.destroy('transport reset');
      return;
    }
    this.#abortAll('transport-reset', 'transport reset');
    this.#control = [];
    this.#pendingEvents++;
    this.#flushEvents();
  }

  /** Changes the guest CID (config space) and resets the transport. */
  setGuestCid(cid: number | bigint): void {
    this.#guestCid = checkCid(cid);
    this.#writeConfig();
    this.#ctx?.configChanged();
    this.resetTransport();
  }

  // ---- VirtioDevice ----

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.#config, offset, data);
  }

  writeConfig(): void {
    // guest_cid is read-only.
  }

  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    this.#seqpacket = (ctx.features & VsockFeature.SEQPACKET) !== 0n;
    this.#control = [];
    this.#pendingEvents = 0;
  }

  reset(): void {
    this.#ctx = null;
    this.#abortAll('device-reset', 'driver reset the device');
    this.#control = [];
    this.#pendingEvents = 0;
  }

  queueNotify(index: number): void {
    if (this.#ctx === null) return;
    if (index === TX_QUEUE) this.#processTx();
    else if (index === RX_QUEUE) this.#flushRx();
    else if (index === EVENT_QUEUE) this.#flushEvents();
  }

  // ---- ConnectionHost ----

  wake(conn: VsockConnection): void {
    this.#ready.add(conn);
    this.#scheduleFlush();
  }

  forget(conn: VsockConnection, rst: boolean): void {
    if (this.#conns.get(conn.key) === conn) this.#conns.delete(conn.key);
    this.#ready.delete(conn);
    if (rst && this.#ctx !== null) {
      this.#queueControl({
        srcCid: BigInt(HOST_CID), dstCid: this.#guestCid, srcPort: conn.hostPort, dstPort: conn.guestPort, len: 0,
        type: conn.type, op: Op.RST, flags: 0, bufAlloc: 0, fwdCnt: 0,
      });
    }
  }

  accountBuffered(delta: number): void {
    this.#buffered += delta;
  }

  // ---- guest → host ----

  #processTx(): void {
    const ctx = this.#ctx!;
    const q = ctx.queues[TX_QUEUE];
    if (q === null || q === undefined) return;
    let n = 0;
    for (let chain = q.pop(); chain !== null; chain = q.pop()) {
      this.#handleChain(chain);
      q.addUsed(chain.head, 0);
      n++;
      if (this.#ctx !== ctx) return; // a handler reset the device
    }
    if (n > 0) ctx.signalUsed(q);
  }

  #handleChain(chain: DescriptorChain): void {
    this.#stats.packetsFromGuest++;
    if (chain.readableBytes < HEADER_SIZE) return this.#malformed(`packet of ${chain.readableBytes} bytes is shorter than the header`);
    gather(chain.readable, 0, HEADER_SIZE, this.#scratch);
    const h = decodeHeader(this.#scratchView);
    if (h.len > MAX_PACKET_PAYLOAD) return this.#malformed(`payload length ${h.len} over ${MAX_PACKET_PAYLOAD}`, h);
    if (h.len > chain.readableBytes - HEADER_SIZE) return this.#malformed(`payload length ${h.len} past the ${chain.readableBytes - HEADER_SIZE} bytes posted`, h);
    if (h.srcCid !== this.#guestCid) return this.#malformed(`src_cid ${h.srcCid} is not the guest CID ${this.#guestCid}`);
    if (h.dstCid !== HOST_CID_BIG) return this.#malformed(`dst_cid ${h.dstCid} is not the host`);
    const typeOk = h.type === VsockType.STREAM || (h.type === VsockType.SEQPACKET && this.#seqpacket);
    if (!typeOk) {
      if (h.op !== Op.RST) this.#rstFor(h);
      return;
    }
    const conn = this.#conns.get(connectionKey(h.dstPort, h.srcPort));
    if (conn === undefined) return this.#noConnection(h);
    if (conn.type !== h.type) {
      conn.destroy('socket type changed mid-connection');
      return;
    }
    let payload: Buffer | null = null;
    if (h.op === Op.RW && h.len > 0) {
      const copy = gather(chain.readable, HEADER_SIZE, h.len);
      payload = Buffer.from(copy.buffer, copy.byteOffset, copy.byteLength);
    }
    conn.receive(h, payload);
  }

  #noConnection(h: PacketHeader): void {
    if (h.op === Op.RST) return;
    if (h.op !== Op.REQUEST) return this.#rstFor(h);
    const listener = this.#listeners.get(h.dstPort);
    if (listener === undefined || (listener.type !== null && listener.type !== h.type) || this.#conns.size >= this.#opts.maxConnections) {
      return this.#rstFor(h);
    }
    const conn = this.#newConnection(h.type as VsockType, h.dstPort, h.srcPort, 'guest');
    conn.updatePeerCredit(h.bufAlloc, h.fwdCnt);
    this.wake(conn);
    try {
      listener.handler(conn);
    } catch (err) {
      this.#ctx?.log.error({ err, port: h.dstPort }, 'vsock listener threw; connection reset');
      conn.destroy('listener threw');
    }
  }

  #newConnection(type: VsockType, hostPort: number, guestPort: number, initiator: 'guest' | 'host'): VsockConnection {
    const conn = new VsockConnection(this, {
      type, hostPort, guestPort, guestCid: this.#guestCid, initiator, bufAlloc: this.#opts.bufAlloc, highWater: this.#opts.highWater,
    });
    this.#conns.set(conn.key, conn);
    return conn;
  }

  #ephemeralPort(guestPort: number): number {
    for (let i = 0; i < 0x1000_0000; i++) {
      const p = this.#nextEphemeral;
      this.#nextEphemeral = p >= 0x7fff_ffff ? EPHEMERAL_BASE : p + 1;
      if (!this.#listeners.has(p) && !this.#conns.has(connectionKey(p, guestPort))) return p;
    }
    throw new TsiboxError('INVALID_STATE', 'no free host vsock port');
  }

  #malformed(reason: string, h?: PacketHeader): void {
    this.#stats.malformed++;
    this.#ctx?.log.debug({ reason }, 'malformed vsock packet dropped');
    if (h !== undefined && h.srcCid === this.#guestCid && h.dstCid === BigInt(HOST_CID) && h.op !== Op.RST) {
      const conn = this.#conns.get(connectionKey(h.dstPort, h.srcPort));
      if (conn !== undefined) conn.destroy(reason);
      else this.#rstFor(h);
    }
  }

  #rstFor(h: PacketHeader): void {
    this.#queueControl({
      srcCid: BigInt(HOST_CID), dstCid: this.#guestCid, srcPort: h.dstPort, dstPort: h.srcPort, len: 0,
      type: h.type === VsockType.SEQPACKET ? VsockType.SEQPACKET : VsockType.STREAM, op: Op.RST, flags: 0, bufAlloc: 0, fwdCnt: 0,
    });
  }

  #queueControl(h: PacketHeader): void {
    if (this.#control.length >= MAX_CONTROL_BACKLOG) {
      this.#stats.droppedControl++;
      return;
    }
    this.#control.push(h);
    this.#scheduleFlush();
  }

  // ---- host → guest ----

  #scheduleFlush(): void {
    if (this.#flushScheduled || this.#ctx === null) return;
    this.#flushScheduled = true;
    queueMicrotask(() => {
      this.#flushScheduled = false;
      this.#flushRx();
    });
  }

  #flushRx(): void {
    const ctx = this.#ctx;
    if (ctx === null) return;
    const q = ctx.queues[RX_QUEUE];
    if (q === null || q === undefined) return;
    let sent = 0;
    while (this.#control.length > 0 || this.#ready.size > 0) {
      const chain = q.pop();
      if (chain === null) break;
      if (chain.writableBytes < HEADER_SIZE) {
        // A buffer too small for any packet: give it back empty (Linux drops it).
        q.addUsed(chain.head, 0);
        sent++;
        continue;
      }
      const control = this.#control.shift();
      if (control !== undefined) {
        scatter(chain.writable, this.#encode(control), []);
        q.addUsed(chain.head, HEADER_SIZE);
        sent++;
        continue;
      }
      const conn = this.#ready.values().next().value as VsockConnection;
      const pkt = conn.nextPacket(chain.writableBytes - HEADER_SIZE);
      this.#ready.delete(conn);
      if (pkt === null) {
        q.unpop();
        continue;
      }
      const written = scatter(chain.writable, this.#encode(pkt.header), pkt.payload);
      q.addUsed(chain.head, written);
      sent++;
      conn.afterSend(pkt.header.op);
      if (conn.hasWork()) this.#ready.add(conn); // to the back: round robin
    }
    this.#stats.packetsToGuest += sent;
    if (sent > 0) ctx.signalUsed(q);
  }

  #encode(h: PacketHeader): Uint8Array {
    encodeHeader(h, this.#scratch);
    return this.#scratch;
  }

  #flushEvents(): void {
    const ctx = this.#ctx;
    if (ctx === null) return;
    const q = ctx.queues[EVENT_QUEUE];
    if (q === null || q === undefined) return;
    let n = 0;
    while (this.#pendingEvents > 0) {
      const chain = q.pop();
      if (chain === null) break;
      if (chain.writableBytes < 4) {
        q.addUsed(chain.head, 0);
        n++;
        continue;
      }
      const ev = new Uint8Array(4);
      new DataView(ev.buffer).setUint32(0, VSOCK_EVENT_TRANSPORT_RESET, true);
      q.addUsed(chain.head, scatter(chain.writable, ev, []));
      this.#pendingEvents--;
      n++;
    }
    if (n > 0) ctx.signalUsed(q);
  }

  #abortAll(reason: CloseReason, detail: string): void {
    const conns = [...this.#conns.values()];
    this.#conns.clear();
    this.#ready.clear();
    for (const c of conns) c.abort(reason, detail);
  }

  #writeConfig(): void {
    new DataView(this.#config.buffer).setBigUint64(0, this.#guestCid, true);
  }
}

function checkCid(cid: number | bigint): bigint {
  const c = BigInt(cid);
  if (c < BigInt(MIN_GUEST_CID) || c >= 0xffff_ffffn) {
    throw new TsiboxError('INVALID_ARGUMENT', `guest CID ${c} is reserved or out of range (3 .. 2^32-2)`);
  }
  return c;
}
