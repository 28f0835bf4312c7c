// The guest side of docs/tsi-protocol.md in TypeScript: what the AF_TSI kernel patch
// will do, played over GuestVsock (software driver + real vsock device). Tests,
// benches and the fuzzer use it to talk to TsiHost.
import { EventEmitter } from 'node:events';
import { TsiboxError } from '../../../src/errors.js';
import type { GuestSocket, GuestVsock } from '../vsock/guest.js';
import {
  TsiMessageReader, SOCK_STREAM, GuestErrno, TsiOp, TsiPort, decodeAccept, decodeConnectResult, decodeSockAddr, encodeConnect,
  encodeDgram, encodeDgramOpen, encodeHello, encodeListen, encodeSeqResult, errnoName, type TsiMessage, type SockAddr,
} from '../../../proxies/protocol.js';

/** A failed TSI call: `errno` is positive (ECONNREFUSED = 111). */
export class TsiCallError extends Error {
  constructor(readonly errno: number, what: string) {
    super(`${what}: ${errnoName(errno)} (-${errno})`);
  }
}

/**
 * A connected TSI stream (after CONNECT_RESULT or ACCEPT). Bytes and EOF that arrive
 * before anyone listens for 'data' are held, so nothing is lost between the handshake
 * and the caller attaching its handlers.
 */
export class TsiStream extends EventEmitter<{ data: [Buffer]; end: []; close: [string] }> {
  readonly socket: GuestSocket;
  readonly local: SockAddr;
  readonly peer: SockAddr;
  #held: Buffer[] | null = [];
  #endHeld = false;
  constructor(socket: GuestSocket, local: SockAddr, peer: SockAddr, rest: Buffer) {
    super();
    this.socket = socket;
    this.local = local;
    this.peer = peer;
    if (rest.length > 0) this.#held!.push(rest);
    socket.on('data', (d) => {
      if (this.#held !== null) this.#held.push(d);
      else this.emit('data', d);
    });
    socket.on('end', () => {
      if (this.#held !== null) this.#endHeld = true;
      else this.emit('end');
    });
    socket.on('close', (r) => { queueMicrotask(() => this.emit('close', r)); });
    (this as EventEmitter).on('newListener', (event: string) => {
      if (event !== 'data' || this.#held === null) return;
      queueMicrotask(() => {
        const held = this.#held ?? [];
        this.#held = null;
        for (const d of held) this.emit('data', d);
        if (this.#endHeld) this.emit('end');
      });
    });
  }
  write(data: Uint8Array): Promise<void> {
    return this.socket.write(data);
  }
  end(): void {
    this.socket.end();
  }
  close(): void {
    this.socket.close();
  }
  /** Collects everything until EOF. */
  readAll(): Promise<Buffer> {
    const parts: Buffer[] = [];
    this.on('data', (d) => parts.push(d));
    return new Promise((resolve, reject) => {
      this.once('end', () => { resolve(Buffer.concat(parts)); });
      this.once('close', (r) => { reject(new Error(`closed before EOF: ${r}`)); });
    });
  }
}

/** Reads one frame from a fresh socket (synchronously in the data callback), then hands on the raw bytes. */
function firstFrame(socket: GuestSocket, maxLen: number, cb?: (f: TsiMessage, rest: Buffer) => void): Promise<{ frame: TsiMessage; rest: Buffer }> {
  const reader = new TsiMessageReader(maxLen);
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer): void => {
      reader.push(d);
      const f = reader.next();
      if (f === null) return;
      socket.off('data', onData);
      socket.off('close', onClose);
      if (f instanceof GuestErrno) return reject(new TsiCallError(f.errno, f.reason));
      const rest = reader.rest();
      cb?.(f, rest);
      resolve({ frame: f, rest });
    };
    const onClose = (reason: string): void => { reject(new Error(`socket closed before the first message: ${reason}`)); };
    socket.on('data', onData);
    socket.once('close', onClose);
  });
}

export class TsiUdp extends EventEmitter<{ message: [Buffer, SockAddr]; 'dgram-error': [number, SockAddr] }> {
  readonly socket: GuestSocket;
  readonly local: SockAddr;
  readonly exposed: boolean;
  constructor(socket: GuestSocket, local: SockAddr, exposed: boolean, reader: TsiMessageReader) {
    super();
    this.socket = socket;
    this.local = local;
    this.exposed = exposed;
    socket.on('data', (d) => {
      reader.push(d);
      for (let f = reader.next(); f !== null; f = reader.next()) {
        if (f instanceof GuestErrno) return;
        if (f.op === TsiOp.DGRAM) {
          const a = decodeSockAddr(f.bytes, 8);
          if (!(a instanceof GuestErrno)) this.emit('message', Buffer.from(f.bytes.subarray(32)), a);
        } else if (f.op === TsiOp.DGRAM_ERROR) {
          const a = decodeSockAddr(f.bytes, 16);
          this.emit('dgram-error', -f.bytes.readInt32LE(8), a instanceof GuestErrno ? { family: 'none' } : a);
        }
      }
    });
  }
  send(to: SockAddr, payload: Uint8Array): Promise<void> {
    return this.socket.write(encodeDgram(to, payload), true);
  }
  close(): void {
    this.socket.close();
  }
}

export class TsiGuest {
  readonly vsock: GuestVsock;
  #control: GuestSocket | null = null;
  #controlReader = new TsiMessageReader(64);
  #pending = new Map<number, (f: TsiMessage) => void>();
  #seq = 1;
  /** Reserved vsock ports for bound UDP sockets (1023 and 1020.. stay for control sessions in tests). */
  #reservedPort = 1019;

  constructor(vsock: GuestVsock) {
    this.vsock = vsock;
  }

  /**
   * Opens the control channel (from a reserved vsock port, as the guest kernel does;
   * the host refuses others) and negotiates the version.
   */
  async hello(localPort = 1023): Promise<{ version: number; features: number }> {
    const s = await this.vsock.connect(TsiPort.CONTROL, this.vsock.seqpacket ? 'seqpacket' : 'stream', { localPort });
    this.#control = s;
    s.on('data', (d) => {
      this.#controlReader.push(d);
      for (let f = this.#controlReader.next(); f !== null; f = this.#controlReader.next()) {
        if (f instanceof GuestErrno) return;
        const seq = f.bytes.length >= 12 ? f.bytes.readUInt32LE(8) : 0;
        const done = this.#pending.get(seq);
        this.#pending.delete(seq);
        done?.(f);
      }
    });
    const f = await this.request((seq) => encodeHello(seq));
    const result = f.bytes.readInt32LE(12);
    if (result < 0) throw new TsiCallError(-result, 'HELLO');
    return { version: f.bytes[16]!, features: f.bytes.readUInt32LE(20) };
  }

  /** Sends a raw control message (tests); resolves with the reply carrying its seq. */
  request(build: (seq: number) => Buffer): Promise<TsiMessage> {
    const s = this.#control;
    if (s === null) return Promise.reject(new TsiboxError('INVALID_STATE', 'hello() first'));
    const seq = this.#seq++;
    return new Promise((resolve, reject) => {
      this.#pending.set(seq, resolve);
      s.once('close', (r) => { reject(new Error(`control channel closed: ${r}`)); });
      void s.write(build(seq));
    });
  }

  /** connect(): resolves with the stream or throws TsiCallError(errno). */
  async connect(target: SockAddr): Promise<TsiStream> {
    const s = await this.vsock.connect(TsiPort.STREAM, 'stream');
    void s.write(encodeConnect(target, SOCK_STREAM));
    let stream: TsiStream | null = null;
    const { frame } = await firstFrame(s, 64, (f, rest) => {
      const r = decodeConnectResult(f);
      if (!(r instanceof GuestErrno) && r.result === 0) stream = new TsiStream(s, r.local, r.peer, rest);
    });
    const r = decodeConnectResult(frame);
    if (r instanceof GuestErrno) throw new TsiCallError(r.errno, r.reason);
    if (r.result < 0 || stream === null) {
      s.close();
      throw new TsiCallError(r.result < 0 ? -r.result : 71, 'connect');
    }
    return stream;
  }

  /**
   * listen(): registers a guest listener for `bind` (port must be real, nonzero).
   * `result` is 0 when exposed, -EADDRNOTAVAIL when registered but not mapped.
   */
  async listen(bind: SockAddr, onAccept: (s: TsiStream, listenerId: number) => void): Promise<{ result: number; listenerId: number; host: SockAddr; vsockPort: number }> {
    const vsockPort = this.vsock.allocListenPort();
    this.vsock.listen(vsockPort, (sock) => {
      firstFrame(sock, 64, (frame, rest) => {
        const a = decodeAccept(frame);
        if (a instanceof GuestErrno) {
          sock.reset();
          return;
        }
        onAccept(new TsiStream(sock, a.local, a.peer, rest), a.listenerId);
      }).catch(() => { /* closed early */ });
    });
    const f = await this.request((seq) => encodeListen({ seq, sockType: SOCK_STREAM, backlog: 128, vsockPort, bind }));
    if (f.op !== TsiOp.LISTEN_RESULT) return { result: f.bytes.readInt32LE(12), listenerId: 0, host: { family: 'none' }, vsockPort };
    const host = decodeSockAddr(f.bytes, 24);
    return { result: f.bytes.readInt32LE(12), listenerId: f.bytes.readUInt32LE(16), host: host instanceof GuestErrno ? { family: 'none' } : host, vsockPort };
  }

  async unlisten(listenerId: number): Promise<number> {
    const f = await this.request((seq) => encodeSeqResult(TsiOp.UNLISTEN, seq, 0, listenerId));
    return f.bytes.readInt32LE(12);
  }

  /**
   * A UDP socket; `bind.port` nonzero asks for the port-mapped host port. Like the guest
   * kernel, a bound socket's vsock connection comes from a reserved port (the host
   * exposes a published port only then); `privileged: false` plays a raw AF_VSOCK process.
   */
  async udp(bind: SockAddr, opts: { privileged?: boolean } = {}): Promise<TsiUdp> {
    const bound = bind.family !== 'none' && bind.family !== 'unix' && bind.port !== 0;
    const localPort = (opts.privileged ?? bound) ? this.#reservedPort-- : undefined;
    if (this.#reservedPort < 600) this.#reservedPort = 1019;
    const s = await this.vsock.connect(TsiPort.DGRAM, this.vsock.seqpacket ? 'seqpacket' : 'stream', localPort === undefined ? {} : { localPort });
    void s.write(encodeDgramOpen(bind));
    const reader = new TsiMessageReader();
    let udp: TsiUdp | null = null;
    const { frame } = await firstFrame(s, 64, (f, rest) => {
      if (f.op !== TsiOp.DGRAM_OPEN_RESULT || f.bytes.readInt32LE(8) < 0) return;
      const local = decodeSockAddr(f.bytes, 16);
      if (rest.length > 0) reader.push(rest);
      udp = new TsiUdp(s, local instanceof GuestErrno ? { family: 'none' } : local, (f.bytes.readUInt32LE(12) & 1) !== 0, reader);
    });
    const result = frame.bytes.readInt32LE(8);
    if (frame.op !== TsiOp.DGRAM_OPEN_RESULT || result < 0) {
      s.close();
      throw new TsiCallError(result < 0 ? -result : 71, 'DGRAM_OPEN');
    }
    return udp!;
  }

  close(): void {
    this.#control?.close();
    this.#control = null;
  }
}
