// The device lifecycle every transport of ours runs for a VirtioDevice, whatever carries
// the driver's requests: virtio-mmio registers (mmio.ts, virtio 1.2 §4.2) or vhost-user
// messages (src/engine/vhost-user/backend/backend.ts). Shared here: the features
// offered, activating the device with its queues and a DeviceContext, routing kicks,
// resetting it, and stopping a broken one (virtio 1.2 §2.1.2 DEVICE_NEEDS_RESET). How
// an interrupt or "needs reset" reaches the driver is the transport's (TransportHooks);
// decoding registers or messages stays in each transport.
import { TsiboxError } from '../errors.js';
import { Feature } from './constants.js';
import type { DeviceContext, VirtioDevice } from './device.js';
import type { Logger } from './virtio-logger.js';
import type { VirtioMemory } from './memory.js';
import { Virtqueue, type QueueLayout } from './queue.js';

/** Features a transport itself implements for every device (split rings only). */
export const TRANSPORT_FEATURES = Feature.VERSION_1 | Feature.RING_EVENT_IDX | Feature.RING_INDIRECT_DESC;

/**
 * The feature bits (virtio 1.2 §6) a transport offers for `device`: the device's own,
 * less packed rings and platform access (not implemented, never offered), plus
 * TRANSPORT_FEATURES.
 */
export function offeredFeatures(device: VirtioDevice): bigint {
  return (device.features & ~(Feature.RING_PACKED | Feature.ACCESS_PLATFORM)) | TRANSPORT_FEATURES;
}

/** One ring the driver set up, as `start` takes it. */
export interface RingSetup {
  readonly layout: QueueLayout;
  /** Avail index to resume at (vhost-user SET_VRING_BASE); 0 or absent for a fresh ring. */
  readonly base?: number;
}

/** What differs between transports: how the driver hears from the device. */
export interface TransportHooks {
  /** Raise the used-buffer interrupt: the device is live, not failed, and the driver wants one for `queue`. */
  signalUsed(queue: Virtqueue): void;
  /** The live device's config space changed. */
  configChanged(): void;
  /**
   * The device broke (first time since the last `stop`): every queue is already
   * stopped; tell the driver (DEVICE_NEEDS_RESET, an error eventfd). `queue` is set
   * when a virtqueue rule was broken on that queue.
   */
  needsReset(reason: string, queue: number | undefined): void;
}

export interface TransportSessionOptions {
  device: VirtioDevice;
  /** The memory rings and buffers live in (checked accessors). */
  memory: VirtioMemory;
  log: Logger;
  hooks: TransportHooks;
  /** Called with any error a device threw that is not VIRTQUEUE_INVALID (a device bug). */
  onInternalError?: ((err: unknown) => void) | undefined;
}

export class TransportSession {
  readonly device: VirtioDevice;
  readonly #memory: VirtioMemory;
  readonly #log: Logger;
  readonly #hooks: TransportHooks;
  readonly #onInternalError: ((err: unknown) => void) | undefined;
  #queues: Array<Virtqueue | null>;
  #live = false;
  #failed: string | null = null;
  /** Bumped on every start and stop, so a stale DeviceContext cannot touch a new session. */
  #activation = 0;

  constructor(opts: TransportSessionOptions) {
    this.device = opts.device;
    this.#memory = opts.memory;
    this.#log = opts.log;
    this.#hooks = opts.hooks;
    this.#onInternalError = opts.onInternalError;
    this.#queues = opts.device.queueSizes.map(() => null);
  }

  /** True from `start` to `stop`: the device is activated. */
  get live(): boolean {
    return this.#live;
  }

  /** One entry per device queue: the live Virtqueue, or null (disabled, or not live). */
  get queues(): ReadonlyArray<Virtqueue | null> {
    return this.#queues;
  }

  /** Why the device needs a reset (set by `fail`, cleared by `stop`), or null. */
  get failed(): string | null {
    return this.#failed;
  }

  /**
   * Activates the device: one Virtqueue per non-null entry of `rings` (index = queue
   * index), EVENT_IDX and INDIRECT_DESC as `features` says, and a DeviceContext that
   * carries `features`. Returns false when device.activate threw (the device is then
   * failed). INVALID_STATE while already live (a transport bug).
   */
  start(rings: ReadonlyArray<RingSetup | null>, features: bigint): boolean {
    if (this.#live) throw new TsiboxError('INVALID_STATE', 'transport session started twice without a stop');
    const flags = { eventIdx: (features & Feature.RING_EVENT_IDX) !== 0n, indirect: (features & Feature.RING_INDIRECT_DESC) !== 0n };
    this.#queues = this.device.queueSizes.map((_, i) => {
      const r = rings[i];
      if (r === undefined || r === null) return null;
      const q = new Virtqueue(i, r.layout, flags, this.#memory, (reason) => { this.fail(reason, i); });
      if (r.base !== undefined && r.base !== 0) q.resumeAt(r.base);
      return q;
    });
    this.#live = true;
    try {
      this.device.activate(this.#context(features));
    } catch (err) {
      this.#deviceThrew(err, 'activate');
      return false;
    }
    return true;
  }

  /** The driver kicked queue `index` (the transport checked it may). Never throws. */
  notify(index: number): void {
    try {
      this.device.queueNotify(index);
    } catch (err) {
      this.#deviceThrew(err, `queue ${index} notify`);
    }
  }

  /**
   * The driver or the device broke a rule: every queue stops (Virtqueue.invalidate) and
   * the transport's `needsReset` hook runs, once until the next `stop`.
   */
  fail(reason: string, queue?: number): void {
    if (this.#failed !== null) return;
    this.#failed = reason;
    for (const q of this.#queues) if (q !== null && q.broken === null) q.invalidate(reason);
    this.#hooks.needsReset(reason, queue);
  }

  /**
   * Ends the session (the driver reset the device, or the transport closes): contexts
   * handed out go stale, device.reset() runs if the device was live (unless
   * `resetDevice` is false), the queues close without reporting, `failed` clears.
   */
  stop(resetDevice = true): void {
    const wasLive = this.#live;
    this.#live = false;
    this.#activation++;
    if (wasLive && resetDevice) {
      try {
        this.device.reset();
      } catch (err) {
        this.#log.error({ err }, 'device reset threw');
        this.#onInternalError?.(err);
      }
    }
    for (const q of this.#queues) q?.close();
    this.#queues = this.device.queueSizes.map(() => null);
    this.#failed = null;
  }

  #context(features: bigint): DeviceContext {
    const activation = ++this.#activation;
    const current = (): boolean => activation === this.#activation && this.#live;
    return {
      memory: this.#memory,
      queues: this.#queues,
      features,
      log: this.#log,
      signalUsed: (queue) => {
        if (current() && this.#failed === null && queue.needsInterrupt()) this.#hooks.signalUsed(queue);
      },
      configChanged: () => { if (current()) this.#hooks.configChanged(); },
      fail: (reason) => { if (current()) this.fail(reason); },
    };
  }

  /** VIRTQUEUE_INVALID is the guest's fault; anything else is also a device bug. */
  #deviceThrew(err: unknown, where: string): void {
    const typed = err instanceof TsiboxError && err.code === 'VIRTQUEUE_INVALID';
    if (!typed) {
      this.#log.error({ err, where }, 'device threw');
      this.#onInternalError?.(err);
    }
    this.fail(`${where}: ${err instanceof Error ? err.message : String(err)}`);
  }
}
