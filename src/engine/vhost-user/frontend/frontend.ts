// The vhost-user FRONT END: the mirror of ../backend/backend.ts. We own guest RAM (a sealed memfd,
// GuestMemory.shared) and the kick/call eventfds; an external back end (virtiofsd,
// qemu-storage-daemon) maps the RAM and serves the rings, so data never passes
// through Node. One request is in flight at a time (the protocol is strictly
// request → reply on the main channel); every reply has a deadline and is checked, as
// the back end is a separate process we do not trust with our state. Spec: QEMU
// docs/interop/vhost-user.rst ("Front-end message types", "Ring states").
import { EventEmitter } from 'node:events';
import koffi, { type node as koffiNode } from 'koffi';
import { TsiboxError } from '../../../errors.js';
import type { GuestMemory } from '../../../memory/guest-memory.js';
import type { Logger } from '../../../virtio/virtio-logger.js';
import { ringSizes } from '../../../virtio/queue.js';
import { closeFd } from '../../../sys/libc.js';
import { FdSocketReader, sendWithFds } from '../../../sys/socket.js';
import { connectUnix } from '../../../sys/unix-connect.js';
import {
  decodeConfig, encodeConfig, encodeMemTable, encodeRequest, encodeVringAddr, encodeVringState, F_PROTOCOL_FEATURES,
  FLAG_NEED_REPLY, MAX_CONFIG_SIZE, MAX_MEM_REGIONS, MessageReader, ProtocolError, ProtocolFeature, Req, requestName,
  u64Payload, VHOST_USER_VERSION, VRING_NOFD_MASK, type MemRegionDesc, type Message,
} from '../protocol.js';
import { drainChannel } from '../channel.js';

/** Protocol features this front end implements; nothing else is ever acked. */
export const FRONTEND_PROTOCOL_FEATURES = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG;
/** vring indices are 8 bits in SET_VRING_KICK/CALL/ERR payloads. */
export const MAX_VRINGS = 256;
const DEFAULT_REPLY_TIMEOUT_MS = 5000;
const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
const ENOENT = 2;
const ECONNREFUSED = 111;

export interface FrontendOptions {
  logger: Logger;
  /** Names the back end in log lines and errors (e.g. 'virtiofsd'). */
  name?: string;
  /** Longest wait for any one reply, in ms (default 5000). A late reply closes the connection. */
  replyTimeoutMs?: number;
}

export interface ConnectOptions extends FrontendOptions {
  /** Keep retrying ENOENT/ECONNREFUSED (a back end still starting) this long, in ms (default 5000). */
  connectTimeoutMs?: number;
}

export interface FrontendEvents {
  /**
   * The connection ended. `error` is null after our own close(); otherwise it says why
   * (back end closed the socket: DEVICE_ERROR; a reply timed out: VM_TIMEOUT; a
   * malformed reply: DEVICE_ERROR).
   */
  close: [error: TsiboxError | null];
}

/** A split ring as the driver laid it out: guest-physical addresses, size in entries. */
export interface VringLayout {
  size: number;
  desc: number;
  avail: number;
  used: number;
  /** First avail index the back end should read (SET_VRING_BASE); default 0. */
  base?: number;
}

/** Eventfds for one ring (the caller keeps ownership; the kernel dups them into the message). */
export interface VringFds {
  /** The back end waits on this (we, later KVM's ioeventfd, signal it). */
  kick: number;
  /** The back end signals this when it used buffers (later: a KVM irqfd). */
  call: number;
  /** The back end signals this when the ring broke; optional. */
  err?: number;
}

export interface HandshakeOptions {
  /** Protocol features wanted (intersected with what the back end offers and we implement). Default: MQ|REPLY_ACK. */
  protocolFeatures?: bigint;
}

export interface HandshakeResult {
  /** Device features the back end offers (GET_FEATURES), bit 30 included. */
  features: bigint;
  /** Protocol features now in force. */
  protocolFeatures: bigint;
  /** Queues the back end serves (GET_QUEUE_NUM with MQ; null without). */
  queueNum: number | null;
}

interface Pending {
  request: number;
  resolve: (m: Message) => void;
  reject: (err: TsiboxError) => void;
  timer: NodeJS.Timeout;
}

export class VhostUserFrontend extends EventEmitter<FrontendEvents> {
  readonly name: string;
  readonly #fd: number;
  readonly #log: Logger;
  readonly #timeoutMs: number;
  readonly #reader: FdSocketReader;
  readonly #framer = new MessageReader({ accepts: 'replies' });
  readonly #poll: koffiNode.PollHandle;
  #chain: Promise<unknown> = Promise.resolve();
  #pending: Pending | null = null;
  #protocol = 0n;
  #memory: GuestMemory | null = null;
  /** Features sent in SET_FEATURES, and whether SET_PROTOCOL_FEATURES was sent. */
  #acked = 0n;
  #protocolNegotiated = false;
  #closed = false;
  #error: TsiboxError | null = null;

  /**
   * Connects to a back end listening on `path`, retrying while the socket does not
   * exist yet or refuses (the back end is starting). Throws DEVICE_ERROR at the
   * deadline, INVALID_ARGUMENT for a path too long for sun_path.
   */
  static async connect(path: string, opts: ConnectOptions): Promise<VhostUserFrontend> {
    const deadline = Date.now() + (opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS);
    for (;;) {
      try {
        return new VhostUserFrontend(connectUnix(path), opts);
      } catch (err) {
        const e = err instanceof TsiboxError ? err.errno : undefined;
        if ((e !== ENOENT && e !== ECONNREFUSED) || Date.now() >= deadline) {
          if (e === ENOENT || e === ECONNREFUSED) {
            throw new TsiboxError('DEVICE_ERROR', `vhost-user back end at ${path} did not accept a connection in time`, { cause: err });
          }
          throw err;
        }
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Takes ownership of `fd`, a connected AF_UNIX stream socket to a back end. */
  constructor(fd: number, opts: FrontendOptions) {
    super();
    this.#fd = fd;
    this.name = opts.name ?? 'vhost-user';
    this.#log = opts.logger.child({ vhostUserFrontend: this.name });
    this.#timeoutMs = opts.replyTimeoutMs ?? DEFAULT_REPLY_TIMEOUT_MS;
    this.#reader = new FdSocketReader(fd, 8192);
    this.#poll = koffi.node.poll(fd, { readable: true }, () => { this.#onReadable(); });
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Protocol features in force (after SET_PROTOCOL_FEATURES). */
  get protocolFeatures(): bigint {
    return this.#protocol;
  }

  /** Lets the process exit while only this connection is left. */
  unref(): void {
    this.#poll.unref();
  }

  // ---- sequences ----

  /**
   * GET_FEATURES, SET_OWNER, and when bit 30 is offered GET/SET_PROTOCOL_FEATURES,
   * then GET_QUEUE_NUM when MQ is in force. SET_FEATURES comes later (setFeatures),
   * once the guest driver has accepted its features.
   */
  async handshake(opts: HandshakeOptions = {}): Promise<HandshakeResult> {
    const features = await this.getFeatures();
    await this.setOwner();
    let queueNum: number | null = null;
    if ((features & F_PROTOCOL_FEATURES) !== 0n) {
      const offered = await this.getProtocolFeatures();
      const wanted = (opts.protocolFeatures ?? (ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK)) & FRONTEND_PROTOCOL_FEATURES;
      await this.setProtocolFeatures(offered & wanted);
      if ((this.#protocol & ProtocolFeature.MQ) !== 0n) queueNum = await this.getQueueNum();
    }
    return { features, protocolFeatures: this.#protocol, queueNum };
  }

  /**
   * Starts ring `index` (QEMU's order: NUM, BASE, ADDR; then CALL and ERR before KICK
   * so no completion can be signalled to a stale fd; then ENABLE when
   * PROTOCOL_FEATURES is in force). Needs setFeatures() and setMemTable() first.
   */
  async startVring(index: number, layout: VringLayout, fds: VringFds, opts: { enable?: boolean } = {}): Promise<void> {
    await this.setVringNum(index, layout.size);
    await this.setVringBase(index, layout.base ?? 0);
    await this.setVringAddr(index, layout);
    await this.setVringCall(index, fds.call);
    if (fds.err !== undefined) await this.setVringErr(index, fds.err);
    await this.setVringKick(index, fds.kick);
    if (opts.enable !== false && this.#protocolFeaturesAcked) await this.setVringEnable(index, true);
  }

  /** Stops ring `index` (GET_VRING_BASE) and returns the next avail index the back end would have read. */
  async stopVring(index: number): Promise<number> {
    return this.getVringBase(index);
  }

  // ---- one method per message ----

  async getFeatures(): Promise<bigint> {
    return this.#u64(await this.#ask(Req.GET_FEATURES));
  }

  /**
   * SET_FEATURES with the virtio features the guest driver accepted. Bit 30
   * (PROTOCOL_FEATURES) is added when protocol features were negotiated, as the back
   * end otherwise treats rings as enabled at once and ignores SET_VRING_ENABLE.
   */
  async setFeatures(features: bigint): Promise<void> {
    const f = this.#protocolNegotiated ? features | F_PROTOCOL_FEATURES : features & ~F_PROTOCOL_FEATURES;
    await this.#request(Req.SET_FEATURES, 'none', u64Payload(f));
    this.#acked = f;
  }

  get #protocolFeaturesAcked(): boolean {
    return (this.#acked & F_PROTOCOL_FEATURES) !== 0n;
  }

  async setOwner(): Promise<void> {
    await this.#request(Req.SET_OWNER, 'none');
  }

  async getProtocolFeatures(): Promise<bigint> {
    return this.#u64(await this.#ask(Req.GET_PROTOCOL_FEATURES));
  }

  /** Acks `features` (must be within FRONTEND_PROTOCOL_FEATURES; INVALID_ARGUMENT otherwise). */
  async setProtocolFeatures(features: bigint): Promise<void> {
    if ((features & ~FRONTEND_PROTOCOL_FEATURES) !== 0n) {
      throw new TsiboxError('INVALID_ARGUMENT', `protocol features 0x${features.toString(16)} include some this front end does not implement`);
    }
    await this.#request(Req.SET_PROTOCOL_FEATURES, 'none', u64Payload(features));
    this.#protocol = features;
    this.#protocolNegotiated = true;
  }

  /** GET_QUEUE_NUM (needs MQ). The answer is bounded to 1..256. */
  async getQueueNum(): Promise<number> {
    const n = this.#u64(await this.#ask(Req.GET_QUEUE_NUM));
    if (n < 1n || n > BigInt(MAX_VRINGS)) throw this.#fail(`GET_QUEUE_NUM: ${n} queues is outside 1..${MAX_VRINGS}`);
    return Number(n);
  }

  /**
   * SET_MEM_TABLE from shared guest RAM: one region per GuestMemory region (guest
   * physical address, size, our user address, offset in the memfd), the memfd passed
   * once per region. INVALID_ARGUMENT when `memory` is not GuestMemory.shared().
   */
  async setMemTable(memory: GuestMemory): Promise<void> {
    const backing = memory.backing;
    if (backing === null) throw new TsiboxError('INVALID_ARGUMENT', 'SET_MEM_TABLE needs guest RAM made by GuestMemory.shared()');
    if (memory.regions.length > MAX_MEM_REGIONS) throw new TsiboxError('INVALID_ARGUMENT', `guest RAM has ${memory.regions.length} regions; vhost-user allows ${MAX_MEM_REGIONS}`);
    const regions: MemRegionDesc[] = memory.regions.map((r, i) => ({
      guestPhysAddr: BigInt(r.guestAddress),
      memorySize: BigInt(r.size),
      userspaceAddr: r.hostAddress,
      mmapOffset: BigInt(backing.fileOffsets[i]!),
    }));
    await this.#request(Req.SET_MEM_TABLE, 'none', encodeMemTable(regions), regions.map(() => backing.fd));
    this.#memory = memory;
  }

  async setVringNum(index: number, num: number): Promise<void> {
    checkIndex(index);
    if (!Number.isInteger(num) || num < 1 || num > 32768 || (num & (num - 1)) !== 0) {
      throw new TsiboxError('INVALID_ARGUMENT', `ring size ${num} is not a power of two in 1..32768`);
    }
    await this.#request(Req.SET_VRING_NUM, 'none', encodeVringState({ index, num }));
  }

  async setVringBase(index: number, base: number): Promise<void> {
    checkIndex(index);
    if (!Number.isInteger(base) || base < 0 || base > 0xffff) throw new TsiboxError('INVALID_ARGUMENT', `ring base ${base} is not a 16-bit index`);
    await this.#request(Req.SET_VRING_BASE, 'none', encodeVringState({ index, num: base }));
  }

  /**
   * SET_VRING_ADDR: the ring's guest-physical addresses translated to OUR user-space
   * addresses (the ones in the memory table), each part checked to lie in guest RAM.
   * Throws INVALID_STATE before setMemTable(), GUEST_MEMORY_RANGE for a ring outside RAM.
   */
  async setVringAddr(index: number, layout: VringLayout): Promise<void> {
    checkIndex(index);
    const memory = this.#memory;
    if (memory === null) throw new TsiboxError('INVALID_STATE', 'SET_VRING_ADDR before SET_MEM_TABLE');
    const sizes = ringSizes(layout.size);
    const payload = encodeVringAddr({
      index,
      flags: 0,
      desc: userAddress(memory, layout.desc, sizes.desc),
      used: userAddress(memory, layout.used, sizes.used),
      avail: userAddress(memory, layout.avail, sizes.avail),
      log: 0n,
    });
    await this.#request(Req.SET_VRING_ADDR, 'none', payload);
  }

  /** GET_VRING_BASE: stops the ring; returns the back end's next avail index (checked: 16 bits, same ring). */
  async getVringBase(index: number): Promise<number> {
    checkIndex(index);
    const m = await this.#ask(Req.GET_VRING_BASE, encodeVringState({ index, num: 0 }));
    if (m.payload.length !== 8) throw this.#fail(`GET_VRING_BASE: reply payload is ${m.payload.length} bytes, not 8`);
    const gotIndex = m.payload.readUInt32LE(0);
    const base = m.payload.readUInt32LE(4);
    if (gotIndex !== index) throw this.#fail(`GET_VRING_BASE: asked for ring ${index}, the reply is for ring ${gotIndex}`);
    if (base > 0xffff) throw this.#fail(`GET_VRING_BASE: base ${base} is not a 16-bit index`);
    return base;
  }

  async setVringKick(index: number, fd: number): Promise<void> {
    await this.#vringFd(Req.SET_VRING_KICK, index, fd);
  }

  async setVringCall(index: number, fd: number): Promise<void> {
    await this.#vringFd(Req.SET_VRING_CALL, index, fd);
  }

  async setVringErr(index: number, fd: number): Promise<void> {
    await this.#vringFd(Req.SET_VRING_ERR, index, fd);
  }

  async setVringEnable(index: number, enable: boolean): Promise<void> {
    checkIndex(index);
    await this.#request(Req.SET_VRING_ENABLE, 'none', encodeVringState({ index, num: enable ? 1 : 0 }));
  }

  /**
   * GET_CONFIG (needs the CONFIG protocol feature): `size` bytes of the device's
   * config space from `offset`. The reply must answer exactly that range; a back end
   * that cannot read its config replies with an empty payload (DEVICE_ERROR).
   */
  async getConfig(offset: number, size: number): Promise<Buffer> {
    if ((this.#protocol & ProtocolFeature.CONFIG) === 0n) throw new TsiboxError('INVALID_STATE', 'GET_CONFIG without the CONFIG protocol feature');
    if (!Number.isInteger(offset) || !Number.isInteger(size) || offset < 0 || size < 1 || offset + size > MAX_CONFIG_SIZE) {
      throw new TsiboxError('INVALID_ARGUMENT', `config range ${offset}+${size} is outside ${MAX_CONFIG_SIZE} bytes`);
    }
    const m = await this.#ask(Req.GET_CONFIG, encodeConfig({ offset, size, flags: 0, data: Buffer.alloc(size) }));
    if (m.payload.length === 0) throw new TsiboxError('DEVICE_ERROR', `${this.name}: GET_CONFIG failed in the back end`);
    let c;
    try {
      c = decodeConfig(m);
    } catch (err) {
      throw this.#fail((err as Error).message);
    }
    if (c.offset !== offset || c.size !== size) throw this.#fail(`GET_CONFIG: asked for ${offset}+${size}, the reply has ${c.offset}+${c.size}`);
    return c.data;
  }

  /**
   * SET_CONFIG (needs the CONFIG protocol feature): writes `data` into the device's
   * config space at `offset`, as the driver did (flags 0: VHOST_SET_CONFIG_TYPE_FRONTEND).
   * With REPLY_ACK a refusal (QEMU's vhost-user-blk export accepts only the 1-byte
   * `writeback` field) is a DEVICE_ERROR and the connection stays usable.
   */
  async setConfig(offset: number, data: Uint8Array): Promise<void> {
    if ((this.#protocol & ProtocolFeature.CONFIG) === 0n) throw new TsiboxError('INVALID_STATE', 'SET_CONFIG without the CONFIG protocol feature');
    if (!Number.isInteger(offset) || offset < 0 || data.length < 1 || offset + data.length > MAX_CONFIG_SIZE) {
      throw new TsiboxError('INVALID_ARGUMENT', `config range ${offset}+${data.length} is outside ${MAX_CONFIG_SIZE} bytes`);
    }
    await this.#request(Req.SET_CONFIG, 'none', encodeConfig({ offset, size: data.length, flags: 0, data: Buffer.from(data) }));
  }

  async #vringFd(request: number, index: number, fd: number): Promise<void> {
    checkIndex(index);
    const payload = u64Payload(BigInt(index) | (fd < 0 ? VRING_NOFD_MASK : 0n));
    await this.#request(request, 'none', payload, fd < 0 ? [] : [fd]);
  }

  // ---- request machinery ----

  /**
   * Sends one request after the previous one finished. 'reply' requests wait for their
   * reply; others wait for a REPLY_ACK when it is in force (any non-zero status is a
   * DEVICE_ERROR; the connection stays usable), else complete once sent.
   */
  #request(request: number, kind: 'reply' | 'none', payload: Buffer = Buffer.alloc(0), fds: readonly number[] = []): Promise<Message | null> {
    const run = this.#chain.then(() => this.#exchange(request, kind, payload, fds));
    this.#chain = run.catch(() => undefined);
    return run;
  }

  /** A request with a reply of its own. */
  async #ask(request: number, payload?: Buffer): Promise<Message> {
    const m = await this.#request(request, 'reply', payload);
    if (m === null) throw new TsiboxError('INVALID_STATE', `${requestName(request)}: no reply`);
    return m;
  }

  /** A u64 reply payload (exactly 8 bytes, or the connection is closed). */
  #u64(m: Message): bigint {
    if (m.payload.length !== 8) throw this.#fail(`${requestName(m.request)} reply payload is ${m.payload.length} bytes, not 8`);
    return m.payload.readBigUInt64LE(0);
  }

  async #exchange(request: number, kind: 'reply' | 'none', payload: Buffer, fds: readonly number[]): Promise<Message | null> {
    if (this.#closed) throw this.#error ?? new TsiboxError('INVALID_STATE', `${this.name}: vhost-user connection is closed`);
    const ack = kind === 'none' && (this.#protocol & ProtocolFeature.REPLY_ACK) !== 0n;
    const flags = VHOST_USER_VERSION | (ack ? FLAG_NEED_REPLY : 0);
    const reply = kind === 'reply' || ack ? this.#awaitReply(request) : null;
    // Marked handled now: if the send fails below, close() rejects it before anyone awaits it.
    reply?.catch(() => undefined);
    try {
      sendWithFds(this.#fd, encodeRequest(request, payload, flags), fds);
    } catch (err) {
      const e = new TsiboxError('DEVICE_ERROR', `${this.name}: sending ${requestName(request)} failed: ${(err as Error).message}`, { cause: err });
      this.close(e);
      throw e;
    }
    this.#log.trace({ request: requestName(request), size: payload.length, fds: fds.length }, 'vhost-user request');
    if (reply === null) return null;
    const m = await reply;
    if (!ack) return m;
    const status = this.#u64(m);
    if (status !== 0n) throw new TsiboxError('DEVICE_ERROR', `${this.name}: the back end refused ${requestName(request)} (status ${status})`);
    return null;
  }

  #awaitReply(request: number): Promise<Message> {
    return new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.close(new TsiboxError('VM_TIMEOUT', `${this.name}: no reply to ${requestName(request)} within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#pending = { request, resolve, reject, timer };
    });
  }

  #onReadable(): void {
    const end = drainChannel(this.#reader, this.#framer, () => this.#closed, (m) => {
      // No reply we ask for carries descriptors: any that came are not ours to keep.
      for (const fd of m.fds) closeFd(fd);
      const p = this.#pending;
      if (p === null || p.request !== m.request) {
        this.#fail(`unexpected reply ${requestName(m.request)}${p === null ? ' (no request pending)' : ` to ${requestName(p.request)}`}`);
        return;
      }
      this.#pending = null;
      clearTimeout(p.timer);
      p.resolve(m);
    });
    if (end === null) return;
    if (end.kind === 'eof') {
      const where = this.#pending === null ? '' : ` while waiting for the reply to ${requestName(this.#pending.request)}`;
      this.close(new TsiboxError('DEVICE_ERROR', `${this.name}: the back end closed the vhost-user socket${where}`));
    } else {
      const what = end.kind === 'receive-failed' ? `receive failed: ${end.message}` : end.message;
      this.close(new TsiboxError('DEVICE_ERROR', `${this.name}: ${what}`, { cause: end.cause }));
    }
  }

  /** Closes the connection for a back-end protocol violation and returns the error. */
  #fail(why: string): TsiboxError {
    const e = new TsiboxError('DEVICE_ERROR', `${this.name}: ${why}`, { cause: new ProtocolError(why) });
    this.close(e);
    return e;
  }

  /**
   * Closes the socket (once). A pending request rejects with `error` (or INVALID_STATE
   * for a plain close()). The back end sees end of stream; virtiofsd exits on it.
   * Emits 'close' with `error` (null for a plain close()).
   */
  close(error: TsiboxError | null = null): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#error = error;
    if (error !== null) this.#log.warn({ reason: error.message, code: error.code }, 'vhost-user front end closed');
    else this.#log.debug('vhost-user front end closed');
    this.#poll.stop();
    this.#poll.close();
    for (const fd of this.#framer.drainFds()) closeFd(fd);
    this.#reader.close();
    closeFd(this.#fd);
    const p = this.#pending;
    this.#pending = null;
    if (p !== null) {
      clearTimeout(p.timer);
      p.reject(error ?? new TsiboxError('INVALID_STATE', `${this.name}: vhost-user connection closed while waiting for ${requestName(p.request)}`));
    }
    this.emit('close', error);
  }
}

function checkIndex(index: number): void {
  if (!Number.isInteger(index) || index < 0 || index >= MAX_VRINGS) throw new TsiboxError('INVALID_ARGUMENT', `ring index ${index} is outside 0..${MAX_VRINGS - 1}`);
}

/** Our user-space address of guest-physical [gpa, gpa+len), which must lie in one region. */
function userAddress(memory: GuestMemory, gpa: number, len: number): bigint {
  if (!memory.contains(gpa, len)) {
    throw new TsiboxError('GUEST_MEMORY_RANGE', `ring range 0x${gpa.toString(16)}+${len} is outside guest RAM`);
  }
  for (const r of memory.regions) {
    if (gpa >= r.guestAddress && gpa + len <= r.guestAddress + r.size) return r.hostAddress + BigInt(gpa - r.guestAddress);
  }
  throw new TsiboxError('GUEST_MEMORY_RANGE', `ring range 0x${gpa.toString(16)}+${len} is outside guest RAM`);
}
