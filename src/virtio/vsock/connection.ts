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
//
// Lifecycle: named states (connection-state.ts), every change through #to(), which
// refuses an illegal one. `state` (public) in brackets.
//
//   host connect() ─▶ local-init [connecting]        guest REQUEST ─▶ established [connected]
//                       │  end(): shutdownQueued          (RESPONSE goes out first)
//                       │  RESPONSE ─▶ established, or half-closed(host shutdown-queued) after end()
//                       │  RST ─▶ closed(refused); timer ─▶ closed(connect-timeout)
//                       │  SHUTDOWN, RW, REQUEST ─▶ closed(protocol-error, RST)
//   established ── end() / guest SHUTDOWN(RCV|SEND) ──▶ half-closed [connected]
//   half-closed: host open → shutdown-queued → shutdown-sent (SHUTDOWN(SEND) left after
//                the queued bytes); guest recv/send flags add up ('end' on send)
//                ── guest shut both ways, or guest send + ours sent ──▶ closed(closed, RST)
//   established | half-closed ── resetAfterQueued() with bytes queued ──▶ resetting [connected]
//   resetting ── last queued byte sent, or grace timer ──▶ closed(reset-by-host, RST)
//   any live state ── guest RST ▶ closed(reset-by-guest) · destroy() ▶ closed(reset-by-host, RST)
//                  ── bad packet ▶ closed(protocol-error, RST) · abort() ▶ closed(transport-/device-reset)
//   closed [closed]: terminal; packets and calls are ignored.
import { EventEmitter } from 'node:events';
import type { CloseReason, ConnectionEvents, ConnectionState, GuestStream } from '../../guest-stream.js';
import {
  GUEST_OPEN, assertTransition, guestShutdown, publicState, type ConnectionPhase, type GuestShutdown,
} from './connection-state.js';
import { MAX_PACKET_PAYLOAD, Op, SeqFlag, Shutdown, VsockType, type PacketHeader } from './header.js';

export type { CloseReason, ConnectionEvents, ConnectionState };
export type { ConnectionPhase, GuestShutdown, HostSend } from './connection-state.js';

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

export class VsockConnection extends EventEmitter<ConnectionEvents> implements GuestStream {
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
  #phase: ConnectionPhase;
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
    // A guest-initiated connection is established at once: its RESPONSE is the first
    // packet out (nextPacket() sends nothing before it).
    if (init.initiator === 'guest') {
      this.#phase = { kind: 'established' };
      this.#needResponse = true;
    } else {
      this.#phase = { kind: 'local-init', shutdownQueued: false };
      this.#needRequest = true;
    }
  }

  /** Coarse state: 'connecting' in local-init, 'closed' when closed, else 'connected'. */
  get state(): ConnectionState {
    return publicState(this.#phase);
  }

  /** The detailed named state (see the diagram at the top of connection.ts); for logs and tests. */
  get phase(): ConnectionPhase {
    return this.#phase;
  }

  /** The one place the state changes. @throws TsiboxError INVALID_STATE on an illegal transition (a bug). */
  #to(next: ConnectionPhase): void {
    assertTransition(this.#phase, next, this.key);
    this.#phase = next;
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
    return guestShutdown(this.#phase).send;
  }

  /** Whether end() was called (or the connection is closed or resetting). */
  get hostEnded(): boolean {
    const p = this.#phase;
    switch (p.kind) {
      case 'local-init': return p.shutdownQueued;
      case 'established': return false;
      case 'half-closed': return p.host !== 'open';
      default: return true;
    }
  }

  /**
   * Queues bytes for the guest. On SEQPACKET each call is one message unless `eom`
   * is false. Returns false once the queue is above the high-water mark.
   */
  write(data: Uint8Array, eom = true): boolean {
    if (this.hostEnded || guestShutdown(this.#phase).recv) return true;
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (buf.length === 0 && this.type === VsockType.STREAM) return !this.#full;
    this.#out.push({ data: buf, off: 0, eom: this.type === VsockType.SEQPACKET ? eom : false });
    this.#outBytes += buf.length;
    this.#host.accountBuffered(buf.length);
    if (this.#phase.kind !== 'local-init') this.#host.wake(this); // bytes wait for RESPONSE
    if (this.#outBytes >= this.highWater) this.#full = true;
    return !this.#full;
  }

  /** Sends SHUTDOWN(SEND) after the queued bytes: the guest reads EOF. */
  end(): void {
    if (this.hostEnded) return;
    const p = this.#phase;
    if (p.kind === 'local-init') return this.#to({ kind: 'local-init', shutdownQueued: true });
    this.#to({ kind: 'half-closed', host: 'shutdown-queued', guest: guestShutdown(p) });
    this.#host.wake(this);
  }

  /** Resets the connection (RST to the guest); queued bytes are dropped. */
  destroy(detail = 'host reset'): void {
    if (this.#phase.kind === 'closed') return;
    this.#close('reset-by-host', detail, true);
  }

  /**
   * Resets the connection after the bytes already queued reached the guest, as a
   * TCP peer's RST follows the data it sent before it (the guest reads them, then
   * ECONNRESET; docs/tsi-protocol.md §6). A guest that takes nothing within
   * `graceMs` is reset at once.
   */
  resetAfterQueued(detail = 'host reset', graceMs = 1000): void {
    const p = this.#phase;
    if (p.kind === 'closed') return;
    if (this.#outBytes === 0 || p.kind === 'local-init') return this.destroy(detail);
    // A SHUTDOWN(SEND) still queued is superseded: the RST ends both ways.
    this.#to({ kind: 'resetting', detail, guest: guestShutdown(p) });
    setTimeout(() => { this.destroy(detail); }, graceMs).unref();
  }

  /** The consumer is done with `n` bytes delivered by 'data': credit them to the guest. */
  consumed(n: number): void {
    if (this.#phase.kind === 'closed' || n <= 0) return;
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
    const p = this.#phase;
    if (p.kind === 'closed') return;
    this.updatePeerCredit(h.bufAlloc, h.fwdCnt); // wakes at most; the state stays p
    switch (h.op) {
      case Op.RESPONSE:
        if (p.kind !== 'local-init') return this.#protocolError('RESPONSE on a connected socket');
        this.#to(p.shutdownQueued ? { kind: 'half-closed', host: 'shutdown-queued', guest: GUEST_OPEN } : { kind: 'established' });
        this.emit('connect');
        if (this.#hasWork()) this.#host.wake(this);
        return;
      case Op.RST:
        this.#close(p.kind === 'local-init' ? 'refused' : 'reset-by-guest', 'guest sent RST', false);
        return;
      case Op.SHUTDOWN:
        if (p.kind === 'local-init') return this.#protocolError('SHUTDOWN before RESPONSE');
        return this.#guestShutdown(p, h.flags);
      case Op.RW: {
        if (p.kind === 'local-init') return this.#protocolError('RW before RESPONSE');
        if (guestShutdown(p).send) return this.#protocolError('RW after SHUTDOWN(SEND)');
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

  /** A guest SHUTDOWN (virtio 1.2 §5.10.6.5): its flags add to what the guest shut before. */
  #guestShutdown(p: Exclude<ConnectionPhase, { kind: 'local-init' | 'closed' }>, rawFlags: number): void {
    const flags = rawFlags & Shutdown.BOTH;
    const was = guestShutdown(p);
    const guest: GuestShutdown = { recv: was.recv || (flags & Shutdown.RCV) !== 0, send: was.send || (flags & Shutdown.SEND) !== 0 };
    if (guest.recv !== was.recv || guest.send !== was.send) {
      this.#to(p.kind === 'established' ? { kind: 'half-closed', host: 'open', guest } : { ...p, guest });
    }
    if (guest.recv) this.#dropOutput();
    if (guest.send && !was.send) this.emit('end');
    if (this.#phase.kind === 'closed') return; // an 'end' handler closed us
    // The guest closed both ways (close() on its socket): acknowledge with RST.
    const now = guestShutdown(this.#phase);
    if (now.recv && now.send) this.#close('closed', 'guest closed', true);
    else this.#maybeFinish();
  }

  /**
   * Builds the next packet for the guest, payload at most `room` bytes, or null when
   * there is nothing to send now.
   */
  nextPacket(room: number): OutPacket | null {
    const p = this.#phase;
    if (p.kind === 'closed') return null;
    if (this.#needRequest) {
      this.#needRequest = false;
      return this.#packet(Op.REQUEST, 0, 0);
    }
    if (p.kind === 'local-init') return null;
    if (this.#needResponse) {
      this.#needResponse = false;
      return this.#packet(Op.RESPONSE, 0, 0);
    }
    const credit = this.#peerCredit();
    if (this.#outBytes > 0 && credit > 0 && room > 0) return this.#dataPacket(Math.min(room, credit, MAX_PACKET_PAYLOAD));
    if (this.#outBytes === 0 && p.kind === 'half-closed' && p.host === 'shutdown-queued') {
      this.#to({ ...p, host: 'shutdown-sent' });
      return this.#packet(Op.SHUTDOWN, Shutdown.SEND, 0);
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
    const p = this.#phase;
    if (p.kind === 'closed') return false;
    if (this.#needRequest) return true;
    if (p.kind === 'local-init') return false;
    if (this.#needResponse || this.#needCreditUpdate) return true;
    if (this.#outBytes > 0) return this.#peerCredit() > 0 || this.#needCreditRequest;
    return p.kind === 'half-closed' && p.host === 'shutdown-queued';
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
      queueMicrotask(() => { if (this.#phase.kind !== 'closed') this.emit('drain'); });
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
    const p = this.#phase;
    if (p.kind === 'half-closed' && p.guest.send && p.host === 'shutdown-sent' && this.#outBytes === 0) {
      this.#close('closed', 'both sides shut down', true);
    }
  }

  /** Called by the device after it sent a packet. */
  afterSend(op: number): void {
    const p = this.#phase;
    if (op === Op.SHUTDOWN) this.#maybeFinish();
    else if (op === Op.RW && p.kind === 'resetting' && this.#outBytes === 0) this.destroy(p.detail);
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
    if (this.#phase.kind === 'local-init') this.#close('connect-timeout', 'guest did not answer REQUEST', true);
  }

  #close(reason: CloseReason, detail: string, rst: boolean): void {
    const p = this.#phase;
    if (p.kind === 'closed') return;
    this.#to({ kind: 'closed', reason, detail, guest: guestShutdown(p) });
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
