// A guest-side virtio-vsock driver in TypeScript: it plays what Linux's
// virtio_transport does, through the software driver (MMIO registers, split rings in
// real guest memory) against the real VsockDevice. Tests, the fuzzer and the benches
// use it as "the guest". It follows Linux 6.1's rules where they matter for the host:
// credit (a CREDIT_UPDATE once the unreported forwarded bytes leave less than 64 KiB
// of free space), SHUTDOWN flags, RST on close, transport reset handling.
import { EventEmitter } from 'node:events';
import { TsiboxError } from '../../../src/errors.js';
import { Feature } from '../../../src/virtio/constants.js';
import type { DriverQueue } from '../virtio/driver.js';
import { createHarness, type Harness } from '../virtio/harness.js';
import { EVENT_QUEUE, RX_QUEUE, TX_QUEUE, VsockDevice, type VsockOptions } from '../../../src/virtio/vsock/device.js';
import {
  HEADER_SIZE, HOST_CID, MAX_PACKET_PAYLOAD, Op, SeqFlag, Shutdown, VsockFeature, VsockType, decodeHeader, encodeHeader,
  type PacketHeader,
} from '../../../src/virtio/vsock/header.js';

export interface GuestVsockOptions {
  device?: VsockDevice;
  deviceOptions?: VsockOptions;
  /** Guest RAM (default 64 MiB). */
  memorySize?: number;
  /** Payload bytes per rx buffer (default 64 KiB; Linux uses 4 KiB). */
  rxBufSize?: number;
  /** Receive buffer advertised per socket (default 256 KiB, Linux's default). */
  bufAlloc?: number;
  /** Negotiate SEQPACKET when offered (default true). */
  seqpacket?: boolean;
  /** Queue size the driver uses (default: the device maximum). */
  queueSize?: number;
}

export type GuestSocketState = 'connecting' | 'connected' | 'closed';

export interface GuestSocketEvents {
  data: [data: Buffer, eom: boolean];
  end: [];
  close: [reason: string];
  connect: [];
  writable: [];
}

export class GuestSocket extends EventEmitter<GuestSocketEvents> {
  readonly localPort: number;
  readonly peerPort: number;
  readonly type: number;
  state: GuestSocketState;
  readonly #vs: GuestVsock;
  readonly bufAlloc: number;
  #rxCnt = 0;
  #fwdCnt = 0;
  #reportedFwd = 0;
  #peerBufAlloc = 0;
  #peerFwdCnt = 0;
  #txCnt = 0;
  #out: Array<{ data: Buffer; off: number; eom: boolean; done?: () => void }> = [];
  #paused = false;
  #askedCredit = false;
  #held: Array<[Buffer, boolean]> = [];
  #heldBytes = 0;
  shutdownSent = 0;
  peerShutdown = 0;
  closeReason: string | null = null;
  /** Bytes the host sent past the credit we gave (must stay 0). */
  creditViolations = 0;
  bytesIn = 0;
  bytesOut = 0;

  constructor(vs: GuestVsock, localPort: number, peerPort: number, type: number, state: GuestSocketState, bufAlloc: number) {
    super();
    this.#vs = vs;
    this.localPort = localPort;
    this.peerPort = peerPort;
    this.type = type;
    this.state = state;
    this.bufAlloc = bufAlloc;
  }

  get key(): string {
    return `${this.localPort}:${this.peerPort}`;
  }

  /** Bytes received and not yet consumed (held while paused). */
  get heldBytes(): number {
    return this.#heldBytes;
  }

  get queuedOut(): number {
    let n = 0;
    for (const c of this.#out) n += c.data.length - c.off;
    return n;
  }

  /** Queues bytes; resolves once they were handed to the device. */
  write(data: Uint8Array, eom = true): Promise<void> {
    if (this.state === 'closed') return Promise.reject(new TsiboxError('INVALID_STATE', `socket closed (${this.closeReason})`));
    return new Promise((resolve) => {
      this.#out.push({ data: Buffer.from(data), off: 0, eom, done: resolve });
      this.pump();
    });
  }

  /** shutdown(SHUT_WR): SHUTDOWN(SEND) after the queued bytes. */
  end(): void {
    if (this.state === 'closed' || (this.shutdownSent & Shutdown.SEND) !== 0) return;
    this.#out.push({ data: Buffer.alloc(0), off: 0, eom: false, done: () => {
      this.shutdownSent |= Shutdown.SEND;
      this.#vs.sendControl(this, Op.SHUTDOWN, Shutdown.SEND);
    } });
    this.pump();
  }

  /** close(): SHUTDOWN(BOTH); the host answers RST. */
  close(): void {
    if (this.state === 'closed') return;
    this.shutdownSent = Shutdown.BOTH;
    this.#vs.sendControl(this, Op.SHUTDOWN, Shutdown.BOTH);
  }

  reset(): void {
    if (this.state === 'closed') return;
    this.#vs.sendControl(this, Op.RST, 0);
    this.finish('reset by guest');
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    const held = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
    for (const [d, eom] of held) this.#deliver(d, eom);
  }

  // ---- driver side ----

  header(op: number, flags: number, len: number): PacketHeader {
    this.#reportedFwd = this.#fwdCnt;
    return {
      srcCid: this.#vs.cid, dstCid: BigInt(HOST_CID), srcPort: this.localPort, dstPort: this.peerPort, len, type: this.type, op, flags,
      bufAlloc: this.bufAlloc, fwdCnt: this.#fwdCnt,
    };
  }

  credit(h: PacketHeader): void {
    if (h.fwdCnt !== this.#peerFwdCnt || h.bufAlloc !== this.#peerBufAlloc) this.#askedCredit = false;
    this.#peerBufAlloc = h.bufAlloc;
    this.#peerFwdCnt = h.fwdCnt;
  }

  #peerFree(): number {
    const inFlight = (this.#txCnt - this.#peerFwdCnt) >>> 0;
    return inFlight >= this.#peerBufAlloc ? 0 : this.#peerBufAlloc - inFlight;
  }

  /** Sends queued bytes as credit allows. */
  pump(): void {
    if (this.state !== 'connected') return;
    while (this.#out.length > 0) {
      const c = this.#out[0]!;
      if (c.data.length === 0) {
        this.#out.shift();
        c.done?.();
        continue;
      }
      if ((this.peerShutdown & Shutdown.RCV) !== 0) {
        this.#out.shift();
        c.done?.();
        continue;
      }
      const free = this.#peerFree();
      if (free === 0) {
        if (!this.#askedCredit) {
          this.#askedCredit = true;
          this.#vs.sendControl(this, Op.CREDIT_REQUEST, 0);
        }
        return;
      }
      const n = Math.min(free, MAX_PACKET_PAYLOAD, c.data.length - c.off);
      const last = c.off + n === c.data.length;
      const flags = this.type === VsockType.SEQPACKET && last && c.eom ? SeqFlag.EOM | SeqFlag.EOR : 0;
      this.#vs.sendPacket(this.header(Op.RW, flags, n), c.data.subarray(c.off, c.off + n));
      this.#txCnt = (this.#txCnt + n) >>> 0;
      this.bytesOut += n;
      c.off += n;
      if (last) {
        this.#out.shift();
        c.done?.();
      }
    }
    this.emit('writable');
  }

  receive(data: Buffer, eom: boolean): void {
    if (((this.#rxCnt - this.#fwdCnt) >>> 0) + data.length > this.bufAlloc) this.creditViolations += data.length;
    this.#rxCnt = (this.#rxCnt + data.length) >>> 0;
    this.bytesIn += data.length;
    if (this.#paused) {
      this.#held.push([data, eom]);
      this.#heldBytes += data.length;
      return;
    }
    this.#deliver(data, eom);
  }

  #deliver(data: Buffer, eom: boolean): void {
    this.#fwdCnt = (this.#fwdCnt + data.length) >>> 0;
    this.emit('data', data, eom);
    const unreported = (this.#fwdCnt - this.#reportedFwd) >>> 0;
    if (this.state === 'connected' && this.bufAlloc - unreported < MAX_PACKET_PAYLOAD) this.#vs.sendControl(this, Op.CREDIT_UPDATE, 0);
  }

  finish(reason: string): void {
    if (this.state === 'closed') return;
    const wasConnecting = this.state === 'connecting';
    this.state = 'closed';
    this.closeReason = reason;
    this.#vs.forget(this);
    for (const c of this.#out) c.done?.();
    this.#out = [];
    if (wasConnecting) this.emit('close', reason);
    else this.emit('close', reason);
  }
}

const HOST_CID_BIG = BigInt(HOST_CID);

export class GuestVsock {
  readonly device: VsockDevice;
  readonly harness: Harness<VsockDevice>;
  cid: bigint;
  readonly #rx: DriverQueue;
  readonly #tx: DriverQueue;
  readonly #ev: DriverQueue;
  readonly #rxBufSize: number;
  readonly #bufAlloc: number;
  readonly #socks = new Map<string, GuestSocket>();
  readonly #listeners = new Map<number, { type: number; handler: (s: GuestSocket) => void }>();
  #nextPort = 49152;
  #kickTx = false;
  #scheduled = false;
  #closed = false;
  readonly #hdr = new Uint8Array(HEADER_SIZE);
  /** Packets the host sent that this driver could not make sense of (must stay 0). */
  badPackets = 0;
  transportResets = 0;

  constructor(opts: GuestVsockOptions = {}) {
    this.device = opts.device ?? new VsockDevice(opts.deviceOptions);
    this.#rxBufSize = opts.rxBufSize ?? 64 * 1024;
    this.#bufAlloc = opts.bufAlloc ?? 256 * 1024;
    this.harness = createHarness(this.device, { memorySize: opts.memorySize ?? 64 * 1024 * 1024, kick: 'direct' });
    const d = this.harness.driver;
    const want = Feature.VERSION_1 | Feature.RING_EVENT_IDX | (opts.seqpacket === false ? 0n : VsockFeature.SEQPACKET);
    d.negotiate(want);
    const qs = opts.queueSize === undefined ? {} : { size: opts.queueSize };
    this.#rx = d.setupQueue(RX_QUEUE, { ...qs, slotSize: HEADER_SIZE + this.#rxBufSize });
    this.#tx = d.setupQueue(TX_QUEUE, { ...qs, slotSize: HEADER_SIZE + MAX_PACKET_PAYLOAD });
    this.#ev = d.setupQueue(EVENT_QUEUE, { slotSize: 16 });
    d.driverOk();
    this.cid = this.#readCid();
    this.#fillRx();
    while (this.#ev.add([], [8]) !== null) { /* fill */ }
    this.#ev.kick(true);
    this.harness.irq.onTrigger = () => { this.#schedule(); };
  }

  get seqpacket(): boolean {
    return (this.harness.driver.negotiated & VsockFeature.SEQPACKET) !== 0n;
  }

  get sockets(): number {
    return this.#socks.size;
  }

  /**
   * connect() to host port `port`; rejects with errno-like code ECONNREFUSED on RST.
   * `localPort` binds the guest side (a reserved port <= 1023 is what a privileged
   * guest process or the guest kernel would use); default: an ephemeral port.
   */
  connect(port: number, type: 'stream' | 'seqpacket' = 'stream', opts: { localPort?: number; bufAlloc?: number } = {}): Promise<GuestSocket> {
    const t = type === 'seqpacket' ? VsockType.SEQPACKET : VsockType.STREAM;
    const local = opts.localPort ?? this.#allocPort(port);
    if (this.#socks.has(`${local}:${port}`)) return Promise.reject(Object.assign(new Error(`vsock port ${local} in use`), { code: 'EADDRINUSE' }));
    const s = new GuestSocket(this, local, port, t, 'connecting', opts.bufAlloc ?? this.#bufAlloc);
    this.#socks.set(s.key, s);
    return new Promise((resolve, reject) => {
      s.once('connect', () => { resolve(s); });
      s.once('close', (reason) => {
        if (s.listenerCount('connect') > 0) reject(Object.assign(new Error(`vsock connect to ${port}: ${reason}`), { code: 'ECONNREFUSED' }));
      });
      this.sendControl(s, Op.REQUEST, 0);
    });
  }

  /** Accepts host connections to guest port `port`. */
  listen(port: number, handler: (s: GuestSocket) => void, type: 'stream' | 'seqpacket' = 'stream'): () => void {
    this.#listeners.set(port, { type: type === 'seqpacket' ? VsockType.SEQPACKET : VsockType.STREAM, handler });
    return () => { this.#listeners.delete(port); };
  }

  /** A free local port for a listener. */
  allocListenPort(): number {
    let p = this.#nextPort++;
    while (this.#listeners.has(p)) p = this.#nextPort++;
    return p;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.harness.irq.onTrigger = null;
    for (const s of [...this.#socks.values()]) s.finish('driver closed');
    this.harness.close();
  }

  // ---- packets ----

  sendControl(s: GuestSocket, op: number, flags: number): void {
    this.sendPacket(s.header(op, flags, 0), null);
  }

  sendPacket(h: PacketHeader, payload: Uint8Array | null): void {
    if (this.#closed) return;
    encodeHeader(h, this.#hdr);
    const out = payload === null || payload.length === 0 ? [this.#hdr] : [this.#hdr, payload];
    let head = this.#tx.add(out, []);
    if (head === null) {
      this.#flushTx();
      head = this.#tx.add(out, []);
      if (head === null) throw new TsiboxError('INVALID_STATE', 'tx queue stuck: the device took no buffers');
    }
    if (!this.#kickTx) {
      this.#kickTx = true;
      queueMicrotask(() => { this.#flushTx(); });
    }
  }

  #flushTx(): void {
    this.#kickTx = false;
    if (this.#closed) return;
    this.#tx.kick(true);
    this.#tx.reapCount();
  }

  forget(s: GuestSocket): void {
    if (this.#socks.get(s.key) === s) this.#socks.delete(s.key);
  }

  #allocPort(peer: number): number {
    for (;;) {
      const p = this.#nextPort++;
      if (this.#nextPort > 0xfffffff0) this.#nextPort = 49152;
      if (!this.#socks.has(`${p}:${peer}`) && !this.#listeners.has(p)) return p;
    }
  }

  #readCid(): bigint {
    return new DataView(this.harness.driver.readConfig(0, 8).buffer).getBigUint64(0, true);
  }

  #fillRx(): void {
    while (this.#rx.add([], [HEADER_SIZE + this.#rxBufSize]) !== null) { /* fill */ }
    this.#rx.kick();
  }

  #schedule(): void {
    if (this.#scheduled || this.#closed) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#process();
    });
  }

  /** The "interrupt handler": reap rx, tx and event queues. */
  #process(): void {
    if (this.#closed) return;
    this.harness.driver.ackInterrupt();
    this.#tx.reapCount();
    for (const ev of this.#ev.reap()) {
      if (ev.len >= 4 && new DataView(ev.data.buffer, ev.data.byteOffset).getUint32(0, true) === 0) this.#transportReset();
      this.#ev.add([], [8]);
    }
    this.#ev.kick();
    const used = this.#rx.reap();
    for (const u of used) {
      if (this.#closed) return;
      this.#dispatch(u.data);
    }
    if (this.#closed) return;
    if (used.length > 0) this.#fillRx();
  }

  #transportReset(): void {
    this.transportResets++;
    for (const s of [...this.#socks.values()]) s.finish('transport reset');
    this.cid = this.#readCid();
  }

  #dispatch(bytes: Uint8Array): void {
    if (bytes.length < HEADER_SIZE) {
      this.badPackets++;
      return;
    }
    const h = decodeHeader(bytes);
    if (h.dstCid !== this.cid || h.srcCid !== HOST_CID_BIG || h.len !== bytes.length - HEADER_SIZE) {
      this.badPackets++;
      return;
    }
    const s = this.#socks.get(`${h.dstPort}:${h.srcPort}`);
    if (s === undefined) {
      if (h.op === Op.REQUEST) {
        const l = this.#listeners.get(h.dstPort);
        if (l === undefined || l.type !== h.type) return this.#rst(h);
        const ns = new GuestSocket(this, h.dstPort, h.srcPort, h.type, 'connected', this.#bufAlloc);
        ns.credit(h);
        this.#socks.set(ns.key, ns);
        this.sendControl(ns, Op.RESPONSE, 0);
        l.handler(ns);
        return;
      }
      if (h.op !== Op.RST) this.#rst(h);
      return;
    }
    s.credit(h);
    switch (h.op) {
      case Op.RESPONSE:
        if (s.state === 'connecting') {
          s.state = 'connected';
          s.emit('connect');
          s.pump();
        }
        return;
      case Op.RST:
        s.finish(s.state === 'connecting' ? 'refused' : 'reset by host');
        return;
      case Op.SHUTDOWN: {
        const was = s.peerShutdown;
        s.peerShutdown |= h.flags & Shutdown.BOTH;
        if ((h.flags & Shutdown.SEND) !== 0 && (was & Shutdown.SEND) === 0) s.emit('end');
        if (s.peerShutdown === Shutdown.BOTH && s.state !== 'closed') {
          this.#rst(h);
          s.finish('closed by host');
        }
        return;
      }
      case Op.RW: {
        const payload = Buffer.from(bytes.buffer, bytes.byteOffset + HEADER_SIZE, h.len);
        s.receive(payload, (h.flags & SeqFlag.EOM) !== 0);
        return;
      }
      case Op.CREDIT_UPDATE:
        s.pump();
        return;
      case Op.CREDIT_REQUEST:
        this.sendControl(s, Op.CREDIT_UPDATE, 0);
        return;
      default:
        this.badPackets++;
    }
  }

  #rst(h: PacketHeader): void {
    this.sendPacket({
      srcCid: this.cid, dstCid: BigInt(HOST_CID), srcPort: h.dstPort, dstPort: h.srcPort, len: 0, type: h.type, op: Op.RST, flags: 0, bufAlloc: 0, fwdCnt: 0,
    }, null);
  }
}
