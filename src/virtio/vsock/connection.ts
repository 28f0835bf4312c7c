// One vsock connection as the host sees it. The device moves packets; the connection
// holds the per-connection state machine and credit accounting (virtio 1.2 §5.10.6.3):
//
//   guest → host: we advertise `bufAlloc` and `fwdCnt`; the host consumer calls
//   `consumed(n)` once bytes have left the VMM (handed to a socket that accepted them),
//   so the guest can never have more than `bufAlloc` bytes buffered here. A guest that
//   sends past its credit is reset.
//   host → guest: `write()` queues bytes; they go out only while the guest's advertised
//   credit allows. `write()` returns false above `highWater` (pause the source) and
//   'drain' fires when the queue fell below it again.
import { EventEmitter } from 'node:events';
import { MAX_PACKET_PAYLOAD, Op, SeqFlag, Shutdown, VsockType, type PacketHeader } from './header.js';

export type ConnectionState = 'connecting' | 'connected' | 'closed';

/** Why a connection ended (the close reason in logs). */
export type CloseReason =
  | 'closed'            // both sides shut down cleanly
  | 'reset-by-guest'    // guest sent RST
  | 'refused'           // guest answered our REQUEST with RST
  | 'reset-by-host'     // host called destroy()
  | 'protocol-error'    // guest broke the vsock rules (credit overrun, bad op)
  | 'connect-timeout'   // guest did not answer our REQUEST in time
  | 'transport-reset'   // transport reset event (guest CID change, VMM request)
  | 'device-reset';     // driver reset the device

export interface ConnectionEvents {
  connect: [];
  /** Bytes from the guest (a copy). `eom` marks a SEQPACKET message end. Call consumed() later. */
  data: [data: Buffer, eom: boolean];
  /** The guest will send no more (SHUTDOWN with SEND). */
  end: [];
  /** Queued host→guest bytes fell below the high-water mark. */
  drain: [];
  close: [reason: CloseReason, detail: string];
}

/** What a connection needs from its device. */
export interface ConnectionHost {
  /** The connection has something to send: schedule an rx flush. */
  wake(conn: VsockConnection): void;
  /** The connection is closed; forget it (and send `rst` if asked). */
  forget(conn: VsockConnection, rst: boolean): void;
  /** Host-side bytes queued toward the guest changed by `delta`. */
  accountBuffered(delta: number): void;
}

interface OutChunk {
  data: Buffer;
  off: number;
  eom: boolean;
}

export interface OutPacket {
  header: PacketHeader;
  payload: Buffer[];
}

export class VsockConnection extends EventEmitter<ConnectionEvents> {
  readonly type: VsockType;
  readonly hostPort: number;
  readonly guestPort: number;
  readonly initiator: 'guest' | 'host';
  readonly key: string;
  readonly bufAlloc: number;
  readonly highWater: number;
  readonly openedAt = performance.now();
  #host: ConnectionHost;
  #guestCid: bigint;
  #state: ConnectionState;
  // guest → host
  #rxCnt = 0;
  #fwdCnt = 0;
  #reportedFwd = 0;
  // host → guest
  #peerBufAlloc = 0;
  #peerFwdCnt = 0;
  #txCnt = 0;
  #out: OutChunk[] = [];
  #outBytes = 0;
  #full = false;
  // pending control packets
  #needResponse = false;
  #needRequest = false;
  #needCreditUpdate = false;
  #needCreditRequest = false;
  /** Shutdown flags we want to send and have not yet. */
  #shutdownPending = 0;
  /** resetAfterQueued(): the RST waits for the queued bytes (its detail). */
  #resetPending: string | null = null;
  /** Cumulative shutdown flags we sent / the guest sent. */
  #shutdownSent = 0;
  #peerShutdown = 0;
  #messageOpen = false;
  /** Bytes moved each way (for logs). */
  bytesFromGuest = 0;
  bytesToGuest = 0;

  constructor(host: ConnectionHost, init: {
    type: VsockType; hostPort: number; guestPort: number; guestCid: bigint; initiator: 'guest' | 'host';
    bufAlloc: number; highWater: number;
  }) {
    super();
    this.#host = host;
    this.type = init.type;
    this.hostPort = init.hostPort;
    this.guestPort = init.guestPort;
    this.#guestCid = init.guestCid;
    this.initiator = init.initiator;
    this.key = connectionKey(init.hostPort, init.guestPort);
    this.bufAlloc = init.bufAlloc;
    this.highWater = init.highWater;
    if (init.initiator === 'guest') {
      this.#state = 'connected';
      this.#needResponse = true;
    } else {
      this.#state = 'connecting';
      this.#needRequest = true;
    }
  }

  get state(): ConnectionState {
    return this.#state;
  }

  /** Host→guest bytes waiting for guest credit or rx buffers. */
  get bufferedToGuest(): number {
    return this.#outBytes;
  }

  /** Guest→host bytes handed to the consumer and not yet consumed (≤ bufAlloc). */
  get unconsumed(): number {
    return (this.#rxCnt - this.#fwdCnt) >>> 0;
  }

  /** Whether the guest said it will send no more. */
  get guestEnded(): boolean {
    return (this.#peerShutdown & Shutdown.SEND) !== 0;
  }

  /** Whether end() was called (or the connection is closed). */
  get hostEnded(): boolean {
    return ((this.#shutdownSent | this.#shutdownPending) & Shutdown.SEND) !== 0 || this.#state === 'closed' || this.#resetPending !== null;
  }

  /**
   * Queues bytes for the guest. On SEQPACKET each call is one message unless `eom`
   * is false. Returns false once the queue is above the high-water mark.
   */
  write(data: Uint8Array, eom = true): boolean {
    if (this.#state === 'closed' || this.hostEnded || (this.#peerShutdown & Shutdown.RCV) !== 0) return true;
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (buf.length === 0 && this.type === VsockType.STREAM) return !this.#full;
    this.#out.push({ data: buf, off: 0, eom: this.type === VsockType.SEQPACKET ? eom : false });
    this.#outBytes += buf.length;
    this.#host.accountBuffered(buf.length);
    if (this.#state === 'connected') this.#host.wake(this);
    if (this.#outBytes >= this.highWater) this.#full = true;
    return !this.#full;
  }

  /** Sends SHUTDOWN(SEND) after the queued bytes: the guest reads EOF. */
  end(): void {
    if (this.#state === 'closed' || this.hostEnded) return;
    this.#shutdownPending |= Shutdown.SEND;
    if (this.#state === 'connected') this.#host.wake(this);
  }

  /** Resets the connection (RST to the guest); queued bytes are dropped. */
  destroy(detail = 'host reset'): void {
    if (this.#state === 'closed') return;
    this.#close('reset-by-host', detail, true);
  }

  /**
   * Resets the connection after the bytes already queued reached the guest, as a
   * TCP peer's RST follows the data it sent before it (the guest reads them, then
   * ECONNRESET; docs/tsi-protocol.md §6). A guest that takes nothing within
   * `graceMs` is reset at once.
   */
  resetAfterQueued(detail = 'host reset', graceMs = 1000): void {
    if (this.#state === 'closed') return;
    if (this.#outBytes === 0 || this.#state !== 'connected') return this.destroy(detail);
    this.#resetPending = detail;
    this.#shutdownPending = 0;
    setTimeout(() => { this.destroy(detail); }, graceMs).unref();
  }

  /** The consumer is done with `n` bytes delivered by 'data': credit them to the guest. */
  consumed(n: number): void {
    if (this.#state === 'closed' || n <= 0) return;
    const outstanding = (this.#rxCnt - this.#fwdCnt) >>> 0;
    const take = Math.min(n, outstanding);
    this.#fwdCnt = (this.#fwdCnt + take) >>> 0;
    if (((this.#fwdCnt - this.#reportedFwd) >>> 0) >= this.bufAlloc / 2 && !this.#needCreditUpdate) {
      this.#needCreditUpdate = true;
      this.#host.wake(this);
    }
  }

  // ---- device side ----

  /** Guest credit information carried by every packet. */
  updatePeerCredit(bufAlloc: number, fwdCnt: number): void {
    const before = this.#peerCredit();
    this.#peerBufAlloc = bufAlloc;
    this.#peerFwdCnt = fwdCnt;
    if (before === 0 && this.#peerCredit() > 0 && this.#outBytes > 0) this.#host.wake(this);
  }

  #peerCredit(): number {
    const inFlight = (this.#txCnt - this.#peerFwdCnt) >>> 0;
    return inFlight >= this.#peerBufAlloc ? 0 : this.#peerBufAlloc - inFlight;
  }

  /** Handles one guest packet for this connection (the device decoded and checked it). */
  receive(h: PacketHeader, payload: Buffer | null): void {
    if (this.#state === 'closed') return;
    this.updatePeerCredit(h.bufAlloc, h.fwdCnt);
    switch (h.op) {
      case Op.RESPONSE:
        if (this.#state !== 'connecting') return this.#protocolError('RESPONSE on a connected socket');
        this.#state = 'connected';
        this.emit('connect');
        if (this.#hasWork()) this.#host.wake(this);
        return;
      case Op.RST:
        this.#close(this.#state === 'connecting' ? 'refused' : 'reset-by-guest', 'guest sent RST', false);
        return;
      case Op.SHUTDOWN: {
        if (this.#state !== 'connected') return this.#protocolError('SHUTDOWN before RESPONSE');
        const flags = h.flags & Shutdown.BOTH;
        const newlyEnded = (flags & Shutdown.SEND) !== 0 && (this.#peerShutdown & Shutdown.SEND) === 0;
        this.#peerShutdown |= flags;
        if ((this.#peerShutdown & Shutdown.RCV) !== 0) this.#dropOutput();
        if (newlyEnded) this.emit('end');
        if (this.#state !== 'connected') return; // a handler closed us
        // The guest closed both ways (close() on its socket): acknowledge with RST.
        if (this.#peerShutdown === Shutdown.BOTH) this.#close('closed', 'guest closed', true);
        else this.#maybeFinish();
        return;
      }
      case Op.RW: {
        if (this.#state !== 'connected') return this.#protocolError('RW before RESPONSE');
        if ((this.#peerShutdown & Shutdown.SEND) !== 0) return this.#protocolError('RW after SHUTDOWN(SEND)');
        const len = payload === null ? 0 : payload.length;
        if (((this.#rxCnt - this.#fwdCnt) >>> 0) + len > this.bufAlloc) {
          return this.#protocolError(`guest sent ${len} bytes past its credit (buf_alloc ${this.bufAlloc})`);
        }
        this.#rxCnt = (this.#rxCnt + len) >>> 0;
        this.bytesFromGuest += len;
        const eom = this.type === VsockType.SEQPACKET && (h.flags & SeqFlag.EOM) !== 0;
        if (len > 0 || eom) this.emit('data', payload ?? Buffer.alloc(0), eom);
        return;
      }
      case Op.CREDIT_UPDATE:
        return;
      case Op.CREDIT_REQUEST:
        this.#needCreditUpdate = true;
        this.#host.wake(this);
        return;
      case Op.REQUEST:
        return this.#protocolError('REQUEST on an existing connection');
      default:
        return this.#protocolError(`unknown op ${h.op}`);
    }
  }

  /**
   * Builds the next packet for the guest, payload at most `room` bytes, or null when
   * there is nothing to send now.
   */
  nextPacket(room: number): OutPacket | null {
    if (this.#state === 'closed') return null;
    if (this.#needRequest) {
      this.#needRequest = false;
      return this.#packet(Op.REQUEST, 0, 0);
    }
    if (this.#state === 'connecting') return null;
    if (this.#needResponse) {
      this.#needResponse = false;
      return this.#packet(Op.RESPONSE, 0, 0);
    }
    const credit = this.#peerCredit();
    if (this.#outBytes > 0 && credit > 0 && room > 0) return this.#dataPacket(Math.min(room, credit, MAX_PACKET_PAYLOAD));
    if (this.#outBytes === 0 && this.#shutdownPending !== 0) {
      const flags = this.#shutdownPending;
      this.#shutdownSent |= flags;
      this.#shutdownPending = 0;
      const p = this.#packet(Op.SHUTDOWN, flags, 0);
      return p;
    }
    if (this.#needCreditUpdate) return this.#packet(Op.CREDIT_UPDATE, 0, 0);
    if (this.#outBytes > 0 && credit === 0 && this.#needCreditRequest) {
      this.#needCreditRequest = false;
      return this.#packet(Op.CREDIT_REQUEST, 0, 0);
    }
    return null;
  }

  /** After the device sent what nextPacket() gave: is there more right now? */
  hasWork(): boolean {
    return this.#hasWork();
  }

  #hasWork(): boolean {
    if (this.#state === 'closed') return false;
    if (this.#needRequest) return true;
    if (this.#state === 'connecting') return false;
    if (this.#needResponse || this.#needCreditUpdate) return true;
    if (this.#outBytes > 0) return this.#peerCredit() > 0 || this.#needCreditRequest;
    return this.#shutdownPending !== 0;
  }

  #dataPacket(max: number): OutPacket {
    const payload: Buffer[] = [];
    let size = 0;
    let eom = false;
    while (size < max && this.#out.length > 0) {
      const c = this.#out[0]!;
      const take = Math.min(max - size, c.data.length - c.off);
      payload.push(take === c.data.length ? c.data : c.data.subarray(c.off, c.off + take));
      c.off += take;
      size += take;
      if (c.off === c.data.length) {
        this.#out.shift();
        if (c.eom) {
          eom = true;
          break;
        }
      }
    }
    this.#outBytes -= size;
    this.#host.accountBuffered(-size);
    this.#txCnt = (this.#txCnt + size) >>> 0;
    this.bytesToGuest += size;
    this.#messageOpen = this.type === VsockType.SEQPACKET && !eom;
    if (this.#outBytes > 0 && this.#peerCredit() === 0) this.#needCreditRequest = true;
    if (this.#full && this.#outBytes < this.highWater) {
      this.#full = false;
      queueMicrotask(() => { if (this.#state !== 'closed') this.emit('drain'); });
    }
    return this.#packet(Op.RW, eom ? SeqFlag.EOM | SeqFlag.EOR : 0, size, payload);
  }

  #packet(op: number, flags: number, len: number, payload: Buffer[] = []): OutPacket {
    this.#reportedFwd = this.#fwdCnt;
    this.#needCreditUpdate = false;
    return {
      header: {
        srcCid: 2n, dstCid: this.#guestCid, srcPort: this.hostPort, dstPort: this.guestPort, len,
        type: this.type, op, flags, bufAlloc: this.bufAlloc, fwdCnt: this.#fwdCnt,
      },
      payload,
    };
  }

  /** Both directions finished cleanly: acknowledge with RST as Linux does. */
  #maybeFinish(): void {
    if ((this.#peerShutdown & Shutdown.SEND) !== 0 && (this.#shutdownSent & Shutdown.SEND) !== 0 && this.#outBytes === 0) {
      this.#close('closed', 'both sides shut down', true);
    }
  }

  /** Called by the device after it sent a packet. */
  afterSend(op: number): void {
    if (op === Op.SHUTDOWN) this.#maybeFinish();
    else if (op === Op.RW && this.#resetPending !== null && this.#outBytes === 0) this.destroy(this.#resetPending);
  }

  #dropOutput(): void {
    if (this.#outBytes > 0) this.#host.accountBuffered(-this.#outBytes);
    this.#out = [];
    this.#outBytes = 0;
  }

  #protocolError(detail: string): void {
    this.#close('protocol-error', detail, true);
  }

  /** Ends the connection without telling the guest (device or transport reset). */
  abort(reason: CloseReason, detail: string): void {
    this.#close(reason, detail, false);
  }

  /** Host-initiated connect gave up. */
  timeout(): void {
    if (this.#state === 'connecting') this.#close('connect-timeout', 'guest did not answer REQUEST', true);
  }

  #close(reason: CloseReason, detail: string, rst: boolean): void {
    if (this.#state === 'closed') return;
    this.#state = 'closed';
    this.#dropOutput();
    this.#host.forget(this, rst);
    this.emit('close', reason, detail);
  }

  /** Whether a SEQPACKET message was cut mid-way (for diagnostics). */
  get messageOpen(): boolean {
    return this.#messageOpen;
  }
}

export function connectionKey(hostPort: number, guestPort: number): string {
  return `${hostPort}:${guestPort}`;
}
