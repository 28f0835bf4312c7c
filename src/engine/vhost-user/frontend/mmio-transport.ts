// A virtio-mmio window (virtio 1.2 §4.2.2) whose device is an external vhost-user back
// end (virtiofsd, qemu-storage-daemon). Register accesses exit to Node as for our
// in-process devices (src/virtio/mmio.ts) and are decoded by the same MmioRegisters
// (src/virtio/mmio-registers.ts, with the status order of virtio 1.2 §3.1.1); this file
// holds its hooks: what the back end gets, config space, the sticky VRING bit. The data
// path does not exit: every queue's kick fd is a KVM ioeventfd on QueueNotify that only
// the back end reads, and every ring's call fd is the device's irqfd. On DRIVER_OK the negotiated features, the memory
// table and the rings go to the back end; on reset the rings are stopped.
//
// Config space is a copy read from the back end once (GET_CONFIG) or made by us; the
// driver reads it here. A driver write to a field the kind declares writable (virtio-blk
// `writeback`) changes the copy at once (Linux reads it back right after writing) and
// goes to the back end as SET_CONFIG; a refusal restores the old bytes. Each change
// bumps ConfigGeneration. The back end cannot announce config changes (that needs the
// back-end request channel, not negotiated), so the copy is otherwise fixed.
//
// InterruptStatus: the back end's interrupts reach the guest through the irqfd without
// this process seeing them, yet Linux's vm_interrupt (drivers/virtio/virtio_mmio.c,
// 6.1) only walks the virtqueues when the VRING bit is set. So while DRIVER_OK is set
// the VRING bit reads as set ("sticky"). A spurious walk is harmless: vring_interrupt
// (virtio_ring.c, 6.1) returns IRQ_NONE at once when the ring has no new used entries
// (`if (!more_used(vq)) return IRQ_NONE;`) and calls no callback; Linux disables an
// IRQ only when ~99.9% of 100 000 interrupts go unhandled. The read of InterruptStatus
// is an MMIO exit in every virtio-mmio interrupt anyway, so this costs nothing extra,
// where relaying each call through a Node watcher would add a main-loop wake-up per
// interrupt.
import { TsiboxError } from '../../../errors.js';
import { rateLimitedLogger } from '../../../log-rate.js';
import type { BusDevice } from '../../../vmm/bus.js';
import type { GuestMemory } from '../../../memory/guest-memory.js';
import type { Logger } from '../../../virtio/virtio-logger.js';
import type { QueueLayout } from '../../../virtio/queue.js';
import { Feature, Interrupt, Status } from '../../../virtio/constants.js';
import { MmioRegisters } from '../../../virtio/mmio-registers.js';
import type { VhostUserFrontend } from './frontend.js';

/**
 * Transport features this window can carry for a back end: the same split-ring
 * features our own MmioTransport implements. Packed rings, ACCESS_PLATFORM,
 * NOTIFICATION_DATA (the notify value would no longer match the ioeventfd's datamatch)
 * and the vhost-only bits (30 PROTOCOL_FEATURES, 26 LOG_ALL) are never offered.
 */
export const VHOST_USER_TRANSPORT_FEATURES = Feature.VERSION_1 | Feature.RING_EVENT_IDX | Feature.RING_INDIRECT_DESC;
/** Device-specific feature bits 0..23 (virtio 1.2 §6). */
export const DEVICE_FEATURE_BITS = (1n << 24n) - 1n;

export interface VhostUserMmioOptions {
  /** Connected and handshaken (handshake()); the transport closes it in close(). */
  frontend: VhostUserFrontend;
  /** Guest RAM from GuestMemory.shared() (SET_MEM_TABLE needs its memfd). */
  memory: GuestMemory;
  /** virtio device ID (virtio-fs 26, virtio-blk 2). */
  deviceId: number;
  /** GET_FEATURES of the back end (bit 30 included or not: vhost-only bits are dropped). */
  backendFeatures: bigint;
  /** Device-specific bits (0..23) we let through; default all the back end offers. */
  deviceFeatureMask?: bigint;
  /** Largest ring the driver may pick (QueueNumMax), a power of two ≤ 1024 (libvhost-user's limit). */
  queueSize: number;
  /** One eventfd per queue, each a KVM ioeventfd on this window's QueueNotify (datamatch = index). */
  kickFds: readonly number[];
  /** The device's irqfd: every ring's call fd. */
  callFd: number;
  /** Raises the device's interrupt (config change, DEVICE_NEEDS_RESET). */
  interrupt: { trigger(): void };
  /** Config space bytes as the driver reads them (copied; see configWritable for writes). */
  config: Uint8Array;
  /**
   * Config fields the driver may write, each only once it negotiated `feature` (e.g.
   * virtio-blk `writeback`, 1 byte at 32, with CONFIG_WCE); written bytes go to the back
   * end as SET_CONFIG. Writes anywhere else are ignored. Default none.
   */
  configWritable?: readonly ConfigField[];
  /** Names the device in log lines and errors. */
  name: string;
  logger: Logger;
  /** The back end refused a request or went away (always DEVICE_ERROR); the device is DEVICE_NEEDS_RESET. */
  onError?: (err: TsiboxError) => void;
}

/** A byte range of config space (offset and size in bytes) tied to a feature bit. */
export interface ConfigField { offset: number; size: number; feature: bigint }

export class VhostUserMmioTransport implements BusDevice {
  readonly #o: VhostUserMmioOptions;
  readonly #offered: bigint;
  readonly #log: Logger;
  readonly #regs: MmioRegisters;
  readonly #config: Uint8Array;
  /** Rings handed to the back end in this session (stopped on reset). */
  #started = new Set<number>();
  /** Back-end work in order: a reset's stops run after the starts it follows. */
  #ops: Promise<void> = Promise.resolve();
  /** Requests queued for the back end and not finished yet (bounded: MAX_PENDING_OPS). */
  #pending = 0;
  #error: TsiboxError | null = null;
  #closed = false;

  constructor(opts: VhostUserMmioOptions) {
    if (opts.kickFds.length === 0) throw new TsiboxError('INVALID_ARGUMENT', `${opts.name}: a device needs at least one queue`);
    if (!Number.isInteger(opts.queueSize) || opts.queueSize < 1 || opts.queueSize > 1024 || (opts.queueSize & (opts.queueSize - 1)) !== 0) {
      throw new TsiboxError('INVALID_ARGUMENT', `${opts.name}: queue size ${opts.queueSize} is not a power of two in 1..1024`);
    }
    this.#o = opts;
    this.#log = opts.logger.child({ device: opts.name });
    this.#offered = opts.backendFeatures & (VHOST_USER_TRANSPORT_FEATURES | (DEVICE_FEATURE_BITS & (opts.deviceFeatureMask ?? DEVICE_FEATURE_BITS)));
    if ((this.#offered & Feature.VERSION_1) === 0n) {
      throw new TsiboxError('DEVICE_ERROR', `${opts.name}: the back end does not offer VERSION_1 (legacy devices are not supported)`);
    }
    this.#config = Uint8Array.from(opts.config);
    this.#regs = new MmioRegisters({
      deviceId: opts.deviceId,
      offeredFeatures: this.#offered,
      queueMax: opts.kickFds.map(() => opts.queueSize),
      memory: opts.memory,
      interrupt: opts.interrupt,
      // The guest decides how often the decoder's lines come.
      log: rateLimitedLogger(this.#log),
      hooks: {
        readConfig: (from, data) => { if (from < this.#config.length) data.set(this.#config.subarray(from, from + data.length)); },
        writeConfig: (from, data) => { this.#writeConfig(from, data); },
        // QueueNotify only gets here for a width or value the ioeventfd did not match:
        // the back end never sees it, as a real device would not either.
        queueNotify: () => undefined,
        ringRefused: (reason) => { this.#needsReset(reason); },
        driverOk: (features, rings) => { if (this.#error === null) this.#driverOk(features, rings); },
        reset: () => { this.#reset(); },
        // Sticky VRING while DRIVER_OK: see the comment at the top of this file.
        interruptStatus: (pending) => ((this.#regs.status & Status.DRIVER_OK) !== 0 ? Interrupt.USED_BUFFER : 0) | pending,
      },
    });
    opts.frontend.on('close', (err) => { if (err !== null) this.#fail(err); });
  }

  /** Features offered to the driver (DeviceFeatures). */
  get offeredFeatures(): bigint {
    return this.#offered;
  }

  /** The status byte as the guest reads it. */
  get status(): number {
    return this.#regs.status;
  }

  /** Resolves when every back-end request issued so far has finished (tests). */
  settled(): Promise<void> {
    return this.#ops;
  }

  read(offset: number, data: Uint8Array): void {
    this.#regs.read(offset, data);
  }

  write(offset: number, data: Uint8Array): void {
    this.#regs.write(offset, data);
  }

  /** Closes the connection (the back end sees end of stream). Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#o.frontend.close();
  }

  /** A driver write into config space: applied and sent on when it lies inside a negotiated writable field. */
  #writeConfig(from: number, data: Uint8Array): void {
    const negotiated = (this.#regs.status & Status.FEATURES_OK) !== 0;
    const field = this.#o.configWritable?.find((f) => from >= f.offset && from + data.length <= f.offset + f.size);
    if (field === undefined || !negotiated || (this.#regs.driverFeatures & field.feature) === 0n || from + data.length > this.#config.length) {
      this.#log.debug({ offset: from, size: data.length }, 'config write ignored');
      return;
    }
    const wrote = Uint8Array.from(data);
    const old = this.#config.slice(from, from + wrote.length);
    this.#config.set(wrote, from);
    this.#regs.bumpConfigGeneration();
    const f = this.#o.frontend;
    this.#enqueue(async () => {
      try {
        await f.setConfig(from, wrote);
      } catch (err) {
        if (f.closed) throw err;
        // Refused, the connection fine: the field keeps its old value (unless written again since).
        // debug, not warn: the guest can repeat this at will.
        this.#log.debug({ offset: from, size: wrote.length, reason: err instanceof Error ? err.message : String(err) }, 'the back end refused a config write');
        if (this.#config.subarray(from, from + wrote.length).every((b, i) => b === wrote[i])) {
          this.#config.set(old, from);
          this.#regs.bumpConfigGeneration();
        }
      }
    });
  }

  /** Hands the negotiated features, the memory table and every ready ring to the back end. */
  #driverOk(features: bigint, layouts: ReadonlyArray<QueueLayout | null>): void {
    const rings = layouts.flatMap((l, i) => (l === null ? [] : [{ i, layout: { size: l.size, desc: l.descAddr, avail: l.availAddr, used: l.usedAddr } }]));
    for (const r of rings) this.#started.add(r.i);
    const f = this.#o.frontend;
    this.#enqueue(async () => {
      await f.setFeatures(features);
      await f.setMemTable(this.#o.memory);
      for (const r of rings) await f.startVring(r.i, r.layout, { kick: this.#o.kickFds[r.i]!, call: this.#o.callFd });
      this.#log.debug({ features: features.toString(16), rings: rings.map((r) => r.i) }, 'vhost-user rings started');
    });
  }

  /** The driver reset the device (the registers clear after): stop the rings the back end has. */
  #reset(): void {
    const started = [...this.#started];
    this.#started.clear();
    if (started.length > 0 && this.#error === null) {
      const f = this.#o.frontend;
      // GET_VRING_BASE stops each ring; the next session starts again at index 0.
      this.#enqueue(async () => { for (const i of started) await f.stopVring(i); });
    }
  }

  #enqueue(work: () => Promise<void>): void {
    // The guest drives this queue (resets, DRIVER_OK, config writes) faster than a slow
    // back end may answer: past the bound the device fails instead of growing memory.
    if (this.#pending >= MAX_PENDING_OPS) {
      this.#fail(new TsiboxError('DEVICE_ERROR',
        `${this.#o.name}: the guest queued more than ${MAX_PENDING_OPS} requests for the vhost-user back end (resets or config writes faster than it answers)`));
      return;
    }
    this.#pending++;
    this.#ops = this.#ops.then(work).catch((err: unknown) => {
      if (!this.#closed) this.#fail(err);
    }).finally(() => { this.#pending--; });
  }

  /** The back end failed: DEVICE_NEEDS_RESET, a config interrupt, and onError once. */
  #fail(err: unknown): void {
    if (this.#error !== null || this.#closed) return;
    const e = err instanceof TsiboxError && err.code === 'DEVICE_ERROR' ? err
      : new TsiboxError('DEVICE_ERROR', `${this.#o.name}: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    this.#error = e;
    this.#log.warn({ reason: e.message }, 'vhost-user device failed');
    this.#needsReset(e.message);
    this.#o.onError?.(e);
  }

  #needsReset(reason: string): void {
    if (this.#regs.needsReset()) this.#log.debug({ reason }, 'device needs reset');
  }
}

/** Back-end requests a guest may have outstanding at once (each reset or DRIVER_OK is one). */
export const MAX_PENDING_OPS = 64;
