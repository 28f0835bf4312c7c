// The vhost-user back end: serves one VirtioDevice (the same class the KVM engine puts
// behind virtio-mmio) to a front end such as QEMU. It plays the transport's role:
// rings built from SET_VRING_* messages, kick eventfds → device.queueNotify,
// signalUsed → call eventfd, a broken device → every ring's error eventfd. This file
// decodes the messages (vhost-user spec, "Back-end message types", "Ring states"); the
// device lifecycle is the TransportSession's, as under virtio-mmio. Every message is
// checked; a malformed or out-of-order one throws ProtocolError (DEVICE_ERROR) and the
// connection is closed.
import { rateLimitedLogger } from '../../../log-rate.js';
import koffi, { type node as koffiNode } from 'koffi';
import type { VirtioDevice } from '../../../virtio/device.js';
import type { Logger } from '../../../virtio/virtio-logger.js';
import { checkLayout } from '../../../virtio/queue.js';
import { offeredFeatures, TransportSession } from '../../../virtio/transport-session.js';
import { TsiboxError } from '../../../errors.js';
import { sys, closeFd } from '../../../sys/libc.js';
import { mapMemTable, SwappableMemory, translate } from './memory.js';
import {
  decodeConfig, decodeMemTable, decodeU64, decodeVringAddr, decodeVringState, encodeConfig, encodeVringState,
  F_PROTOCOL_FEATURES, ProtocolError, ProtocolFeature, Req, requestName, u64Payload, VRING_IDX_MASK, VRING_NOFD_MASK,
  FLAG_NEED_REPLY, type Message, type MemRegionDesc,
} from '../protocol.js';

export const OFFERED_PROTOCOL_FEATURES = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG | ProtocolFeature.RESET_DEVICE;

export interface BackendOptions {
  device: VirtioDevice;
  /** Names the device in log lines. */
  name?: string;
  logger: Logger;
  /**
   * Rings the front end runs through this back end (default: all the device has).
   * QEMU's vhost-user-vsock keeps the event queue (index 2) to itself: 2.
   */
  activeQueues?: number;
  /**
   * Offer the CONFIG protocol feature (GET/SET_CONFIG). QEMU's vhost-user-vsock needs
   * it (it reads guest_cid from us); other front ends warn when it is offered needlessly.
   */
  config?: boolean;
  /** A device threw something other than VIRTQUEUE_INVALID (a bug). */
  onInternalError?: (err: unknown) => void;
}

interface Vring {
  num: number;
  /** Guest-physical ring addresses once SET_VRING_ADDR came. */
  addr: { desc: number; avail: number; used: number } | null;
  base: number;
  kick: number;
  call: number;
  err: number;
  enabled: boolean;
  started: boolean;
  poll: koffiNode.PollHandle | null;
  kickedEarly: boolean;
}

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

export class VhostUserBackend {
  readonly device: VirtioDevice;
  readonly #log: Logger;
  readonly #offered: bigint;
  readonly #activeQueues: number;
  readonly #offeredProtocol: bigint;
  readonly #memory = new SwappableMemory();
  readonly #session: TransportSession;
  #regions: readonly MemRegionDesc[] = [];
  #owner = false;
  #acked = 0n;
  #featuresSet = false;
  #protocol = 0n;
  #rings: Vring[];
  #closed = false;
  #buf8 = Buffer.alloc(8);

  constructor(opts: BackendOptions) {
    this.device = opts.device;
    // The guest (and QEMU) decide how often these lines come: one bucket per back end.
    this.#log = rateLimitedLogger(opts.logger.child({ device: opts.name ?? `vhost-user-${opts.device.deviceId}` }));
    this.#offered = offeredFeatures(opts.device) | F_PROTOCOL_FEATURES;
    this.#activeQueues = opts.activeQueues ?? opts.device.queueSizes.length;
    if (this.#activeQueues < 1 || this.#activeQueues > opts.device.queueSizes.length) {
      throw new TsiboxError('INVALID_ARGUMENT', `activeQueues must be 1..${opts.device.queueSizes.length}`);
    }
    this.#offeredProtocol = opts.config === true ? OFFERED_PROTOCOL_FEATURES : OFFERED_PROTOCOL_FEATURES & ~ProtocolFeature.CONFIG;
    this.#rings = opts.device.queueSizes.map(() => emptyRing());
    this.#session = new TransportSession({
      device: opts.device,
      memory: this.#memory,
      log: this.#log,
      onInternalError: opts.onInternalError,
      hooks: {
        signalUsed: (queue) => {
          const call = this.#rings[queue.index]?.call ?? -1;
          if (call >= 0) sys.write(call, ONE, 8);
        },
        // vhost-user has no back-end → front-end config notification without the
        // slave channel (not offered); the front end reads config when it needs it.
        configChanged: () => { /* not signalled */ },
        needsReset: (reason, queue) => { this.#needsReset(reason, queue); },
      },
    });
  }

  /** True while the device is activated (all its rings started and enabled). */
  get active(): boolean {
    return this.#session.live;
  }

  get offeredFeatures(): bigint {
    return this.#offered;
  }

  /** The memory the device sees (null until SET_MEM_TABLE). */
  get memory(): SwappableMemory {
    return this.#memory;
  }

  /**
   * Handles one message. Returns the reply payload (with the request it answers) or
   * null. Takes the descriptors it uses out of `msg.fds`; the caller closes the rest.
   * Throws ProtocolError when the message is malformed or out of order.
   */
  handle(msg: Message): Buffer | null {
    if (this.#closed) throw new ProtocolError('back end is closed');
    const reply = this.#dispatch(msg);
    if (reply !== null) return reply;
    if ((msg.flags & FLAG_NEED_REPLY) !== 0 && (this.#protocol & ProtocolFeature.REPLY_ACK) !== 0n) return u64Payload(0n);
    return null;
  }

  #dispatch(m: Message): Buffer | null {
    switch (m.request) {
      case Req.GET_FEATURES:
        return u64Payload(this.#offered);
      case Req.SET_FEATURES: {
        const f = decodeU64(m);
        if ((f & ~this.#offered) !== 0n) throw new ProtocolError(`SET_FEATURES: 0x${f.toString(16)} has bits never offered (0x${(f & ~this.#offered).toString(16)})`);
        if (this.#session.live && f !== this.#acked) throw new ProtocolError('SET_FEATURES: features changed while the device runs');
        this.#acked = f;
        this.#featuresSet = true;
        // Without PROTOCOL_FEATURES, rings are enabled as soon as they start.
        if ((f & F_PROTOCOL_FEATURES) === 0n) for (const r of this.#rings) r.enabled = true;
        return null;
      }
      case Req.GET_PROTOCOL_FEATURES:
        return u64Payload(this.#offeredProtocol);
      case Req.SET_PROTOCOL_FEATURES: {
        const f = decodeU64(m);
        if ((f & ~this.#offeredProtocol) !== 0n) throw new ProtocolError(`SET_PROTOCOL_FEATURES: 0x${f.toString(16)} has bits never offered`);
        this.#protocol = f;
        return null;
      }
      case Req.GET_QUEUE_NUM:
        return u64Payload(BigInt(this.#activeQueues));
      case Req.SET_OWNER:
        if (this.#owner) throw new ProtocolError('SET_OWNER: the session already has an owner');
        this.#owner = true;
        return null;
      case Req.RESET_OWNER:
      case Req.RESET_DEVICE:
        this.#resetAll(requestName(m.request));
        return null;
      case Req.SET_MEM_TABLE:
        this.#needOwner(m);
        this.#setMemTable(m);
        return null;
      case Req.SET_VRING_NUM: {
        const s = decodeVringState(m);
        const r = this.#stoppedRing(m, s.index);
        const max = this.device.queueSizes[s.index]!;
        if (s.num === 0 || s.num > max || (s.num & (s.num - 1)) !== 0) throw new ProtocolError(`SET_VRING_NUM: size ${s.num} is not a power of two in 1..${max}`);
        r.num = s.num;
        return null;
      }
      case Req.SET_VRING_ADDR: {
        const a = decodeVringAddr(m);
        const r = this.#stoppedRing(m, a.index);
        if (this.#memory.current === null) throw new ProtocolError('SET_VRING_ADDR before SET_MEM_TABLE');
        const desc = translate(this.#regions, a.desc);
        const avail = translate(this.#regions, a.avail);
        const used = translate(this.#regions, a.used);
        if (desc === null || avail === null || used === null) throw new ProtocolError(`SET_VRING_ADDR: ring ${a.index} addresses are not in any memory region`);
        r.addr = { desc, avail, used };
        return null;
      }
      case Req.SET_VRING_BASE: {
        const s = decodeVringState(m);
        const r = this.#stoppedRing(m, s.index);
        if (s.num > 0xffff) throw new ProtocolError(`SET_VRING_BASE: base ${s.num} is not a 16-bit index`);
        r.base = s.num;
        return null;
      }
      case Req.GET_VRING_BASE: {
        const s = decodeVringState(m);
        const r = this.#ring(m, s.index);
        const base = this.#session.queues[s.index]?.lastAvailIndex ?? r.base;
        this.#stopRing(s.index);
        return encodeVringState({ index: s.index, num: base });
      }
      case Req.SET_VRING_KICK: {
        const { index, fd } = this.#vringFd(m);
        const r = this.#ring(m, index);
        if (fd < 0) throw new ProtocolError(`SET_VRING_KICK: ring ${index} without a file descriptor (polling mode is not supported)`);
        if (r.num === 0 || r.addr === null) {
          closeFd(fd);
          throw new ProtocolError(`SET_VRING_KICK: ring ${index} has no size or addresses yet`);
        }
        if (!this.#featuresSet) {
          closeFd(fd);
          throw new ProtocolError('SET_VRING_KICK before SET_FEATURES');
        }
        this.#stopRing(index);
        this.#startRing(index, fd);
        return null;
      }
      case Req.SET_VRING_CALL: {
        const { index, fd } = this.#vringFd(m);
        const r = this.#ring(m, index);
        closeFd(r.call);
        r.call = fd;
        return null;
      }
      case Req.SET_VRING_ERR: {
        const { index, fd } = this.#vringFd(m);
        const r = this.#ring(m, index);
        closeFd(r.err);
        r.err = fd;
        return null;
      }
      case Req.SET_VRING_ENABLE: {
        const s = decodeVringState(m);
        const r = this.#ring(m, s.index);
        // QEMU's virtio-net enables its rings at realize time, before the guest picked
        // features (so before SET_FEATURES): allowed while features are not set yet.
        if (this.#featuresSet && (this.#acked & F_PROTOCOL_FEATURES) === 0n) throw new ProtocolError('SET_VRING_ENABLE without PROTOCOL_FEATURES negotiated');
        if (s.num > 1) throw new ProtocolError(`SET_VRING_ENABLE: value ${s.num} is not 0 or 1`);
        const enable = s.num === 1;
        if (r.enabled === enable) return null;
        r.enabled = enable;
        if (!enable) this.#deactivate(`ring ${s.index} disabled`);
        else this.#maybeActivate();
        return null;
      }
      case Req.GET_CONFIG: {
        if ((this.#protocol & ProtocolFeature.CONFIG) === 0n) throw new ProtocolError('GET_CONFIG without the CONFIG protocol feature');
        const c = decodeConfig(m);
        const data = Buffer.alloc(c.size);
        this.device.readConfig(c.offset, data);
        return encodeConfig({ ...c, data });
      }
      case Req.SET_CONFIG: {
        if ((this.#protocol & ProtocolFeature.CONFIG) === 0n) throw new ProtocolError('SET_CONFIG without the CONFIG protocol feature');
        const c = decodeConfig(m);
        this.device.writeConfig(c.offset, c.data);
        return null;
      }
      default:
        throw new ProtocolError(`${requestName(m.request)} is not supported`);
    }
  }

  #needOwner(m: Message): void {
    if (!this.#owner) throw new ProtocolError(`${requestName(m.request)} before SET_OWNER`);
  }

  #ring(m: Message, index: number): Vring {
    this.#needOwner(m);
    const r = index < this.#activeQueues ? this.#rings[index] : undefined;
    if (r === undefined) throw new ProtocolError(`${requestName(m.request)}: ring ${index} does not exist (${this.#activeQueues} rings)`);
    return r;
  }

  #stoppedRing(m: Message, index: number): Vring {
    const r = this.#ring(m, index);
    if (r.started) throw new ProtocolError(`${requestName(m.request)}: ring ${index} is running (stop it with GET_VRING_BASE first)`);
    return r;
  }

  #vringFd(m: Message): { index: number; fd: number } {
    const v = decodeU64(m);
    if ((v & ~(VRING_IDX_MASK | VRING_NOFD_MASK)) !== 0n) throw new ProtocolError(`${requestName(m.request)}: bad payload 0x${v.toString(16)}`);
    const index = Number(v & VRING_IDX_MASK);
    if ((v & VRING_NOFD_MASK) !== 0n) return { index, fd: -1 };
    const fd = m.fds.shift();
    if (fd === undefined) throw new ProtocolError(`${requestName(m.request)}: ring ${index} without the file descriptor the message promised`);
    return { index, fd };
  }

  #setMemTable(m: Message): void {
    const regions = decodeMemTable(m);
    const fds = m.fds.splice(0, m.fds.length);
    const { memory } = mapMemTable(regions, fds);
    // Rings keep guest-physical addresses, so they survive a new table; check they still fit.
    this.#memory.replace(memory);
    this.#regions = regions;
    for (const [i, r] of this.#rings.entries()) {
      if (r.started && r.addr !== null) {
        const problem = checkLayout({ size: r.num, descAddr: r.addr.desc, availAddr: r.addr.avail, usedAddr: r.addr.used }, this.device.queueSizes[i]!, this.#memory);
        if (problem !== null) throw new ProtocolError(`SET_MEM_TABLE: ring ${i} no longer fits: ${problem}`);
      }
    }
  }

  #startRing(index: number, kickFd: number): void {
    const r = this.#rings[index]!;
    const a = r.addr!;
    const problem = checkLayout({ size: r.num, descAddr: a.desc, availAddr: a.avail, usedAddr: a.used }, this.device.queueSizes[index]!, this.#memory);
    if (problem !== null) {
      closeFd(kickFd);
      throw new ProtocolError(`SET_VRING_KICK: ring ${index}: ${problem}`);
    }
    r.kick = kickFd;
    r.started = true;
    r.kickedEarly = false;
    r.poll = koffi.node.poll(kickFd, { readable: true }, () => { this.#onKick(index); });
    this.#maybeActivate();
  }

  #onKick(index: number): void {
    const r = this.#rings[index];
    if (r === undefined || r.kick < 0) return;
    sys.read(r.kick, this.#buf8, 8); // clears the eventfd counter
    if (!this.#session.live) {
      r.kickedEarly = true;
      return;
    }
    this.#session.notify(index);
  }

  #stopRing(index: number): void {
    const r = this.#rings[index]!;
    const q = this.#session.queues[index];
    if (q !== undefined && q !== null) r.base = q.lastAvailIndex;
    this.#deactivate(`ring ${index} stopped`);
    if (r.poll !== null) {
      r.poll.stop();
      r.poll.close();
      r.poll = null;
    }
    closeFd(r.kick);
    r.kick = -1;
    r.started = false;
  }

  #maybeActivate(): void {
    if (this.#session.live) return;
    const rings = this.#rings.slice(0, this.#activeQueues);
    if (!rings.every((r) => r.started && r.enabled)) return;
    const setups = this.#rings.map((r) => r.started && r.addr !== null
      ? { layout: { size: r.num, descAddr: r.addr.desc, availAddr: r.addr.avail, usedAddr: r.addr.used }, base: r.base }
      : null);
    this.#log.debug({ features: this.#acked.toString(16) }, 'device activated');
    if (!this.#session.start(setups, this.#acked & ~F_PROTOCOL_FEATURES)) return;
    // Kicks that came before activation (or while it was pending) are replayed once.
    for (const [i, r] of rings.entries()) {
      if (r.kickedEarly) {
        r.kickedEarly = false;
        this.#session.notify(i);
      }
    }
  }

  /**
   * vhost-user cannot set DEVICE_NEEDS_RESET in the front end without the slave
   * channel; the session stopped serving, and the front end hears of it through
   * every ring's error eventfd.
   */
  #needsReset(reason: string, queue: number | undefined): void {
    if (queue !== undefined) this.#log.warn({ queue, reason }, 'guest broke a virtqueue rule: device stopped until the guest resets it');
    for (const r of this.#rings) if (r.err >= 0) sys.write(r.err, ONE, 8);
  }

  #deactivate(why: string): void {
    if (!this.#session.live) return;
    this.#log.debug({ why }, 'device deactivated');
    this.#session.stop();
  }

  #resetAll(why: string): void {
    for (let i = 0; i < this.#rings.length; i++) this.#stopRing(i);
    for (const r of this.#rings) {
      closeFd(r.call);
      closeFd(r.err);
    }
    this.#rings = this.device.queueSizes.map(() => emptyRing());
    this.#memory.replace(null);
    this.#regions = [];
    this.#acked = 0n;
    this.#featuresSet = false;
    this.#protocol = 0n;
    this.#owner = why !== 'RESET_DEVICE' ? false : this.#owner;
  }

  /** Resets the device, unmaps guest memory and closes every descriptor (once). */
  close(): void {
    if (this.#closed) return;
    this.#resetAll('close');
    this.#closed = true;
  }
}

function emptyRing(): Vring {
  return { num: 0, addr: null, base: 0, kick: -1, call: -1, err: -1, enabled: false, started: false, poll: null, kickedEarly: false };
}
