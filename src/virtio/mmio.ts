// virtio-mmio transport, version 2 (virtio 1.2 §4.2) for our own devices. It is an
// MmioRegisterWindow (the KVM engine maps its 0x200 byte window on the MMIO bus) and
// exposes `notify(queue)` for ioeventfd wake-ups; a QueueNotify register write takes the
// same path. The registers and the status order (§3.1.1) are MmioRegisters'
// (mmio-registers.ts, shared with the vhost-user front end); the device lifecycle
// (features offered, activation, kicks, reset, failure) is the TransportSession's. This
// file joins the two.
import { Interrupt } from './constants.js';
import type { InterruptLine, VirtioDevice } from './device.js';
import { rateLimitedLogger } from '../log-rate.js';
import { virtioLogger, type Logger } from './virtio-logger.js';
import type { VirtioMemory } from './memory.js';
import { MmioRegisters, type MmioRegisterWindow, type TransportPhase } from './mmio-registers.js';
import { offeredFeatures, TransportSession } from './transport-session.js';

export type { MmioRegisterWindow, TransportPhase } from './mmio-registers.js';

export interface MmioTransportOptions {
  device: VirtioDevice;
  memory: VirtioMemory;
  interrupt: InterruptLine;
  /** Names the device in log lines. */
  name?: string;
  logger?: Logger;
  /**
   * Called with any error a device threw that is not the typed VIRTQUEUE_INVALID
   * (a device bug). The device is put in DEVICE_NEEDS_RESET either way.
   */
  onInternalError?: (err: unknown) => void;
}

export class MmioTransport implements MmioRegisterWindow {
  readonly device: VirtioDevice;
  readonly #log: Logger;
  readonly #session: TransportSession;
  readonly #regs: MmioRegisters;

  constructor(opts: MmioTransportOptions) {
    this.device = opts.device;
    // The guest decides how often these lines come: one bucket per transport.
    this.#log = rateLimitedLogger((opts.logger ?? virtioLogger()).child({ device: opts.name ?? `virtio-${opts.device.deviceId}` }));
    this.#session = new TransportSession({
      device: opts.device,
      memory: opts.memory,
      log: this.#log,
      onInternalError: opts.onInternalError,
      hooks: {
        signalUsed: () => { this.#regs.raise(Interrupt.USED_BUFFER); },
        configChanged: () => {
          this.#regs.bumpConfigGeneration();
          this.#regs.raise(Interrupt.CONFIG_CHANGE);
        },
        // The guest broke the rules (the session stopped the queues): DEVICE_NEEDS_RESET.
        needsReset: (reason) => {
          this.#log.warn({ reason }, 'device needs reset');
          this.#regs.needsReset();
        },
      },
    });
    this.#regs = new MmioRegisters({
      deviceId: opts.device.deviceId,
      offeredFeatures: offeredFeatures(opts.device),
      queueMax: opts.device.queueSizes,
      memory: opts.memory,
      interrupt: opts.interrupt,
      log: this.#log,
      hooks: {
        readConfig: (offset, data) => { this.device.readConfig(offset, data); },
        writeConfig: (offset, data) => { this.device.writeConfig(offset, data); },
        queueNotify: (index) => { this.notify(index); },
        ringRefused: (reason) => { this.#session.fail(reason); },
        driverOk: (features, rings) => { this.#session.start(rings.map((layout) => (layout === null ? null : { layout })), features); },
        // A device that was activated is reset even when the driver set FAILED after
        // DRIVER_OK: otherwise it would keep what it holds (vsock connections, host sockets).
        reset: () => { this.#session.stop(); },
      },
    });
  }

  get phase(): TransportPhase {
    return this.#regs.phase;
  }

  /** The status byte as the guest reads it. */
  get status(): number {
    return this.#regs.status;
  }

  /** Why the device needs a reset, or null. */
  get needsResetReason(): string | null {
    return this.#session.failed;
  }

  /** Features agreed with the driver (valid once FEATURES_OK is set). */
  get negotiatedFeatures(): bigint {
    return this.#regs.driverFeatures;
  }

  // ---- MmioRegisterWindow ----

  read(offset: number, data: Uint8Array): void {
    this.#regs.read(offset, data);
  }

  write(offset: number, data: Uint8Array): void {
    this.#regs.write(offset, data);
  }

  /**
   * The driver kicked queue `index`. The KVM engine calls this when the queue's
   * ioeventfd fires; a QueueNotify write comes here too. Never throws.
   */
  notify(index: number): void {
    if (this.#regs.phase !== 'live' || this.#session.failed !== null) return;
    const q = this.#session.queues[index];
    if (q === undefined || q === null) {
      this.#log.debug({ queue: index }, 'notify for a queue that is not live: ignored');
      return;
    }
    this.#session.notify(index);
  }

  /**
   * Resets the device as if the driver wrote 0 to Status. The VMM calls this before
   * it unmaps guest memory, so no device path (a stream callback, a timer) can reach
   * the rings afterwards.
   */
  reset(): void {
    this.#regs.reset();
  }
}
