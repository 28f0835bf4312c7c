// virtio-mmio transport, version 2 (virtio 1.2 §4.2). It is an MmioRegisterWindow (the
// KVM engine maps its 0x200 byte window on the MMIO bus) and exposes `notify(queue)`
// for ioeventfd wake-ups; a QueueNotify register write takes the same path. This file
// decodes the registers and runs the status state machine; the device lifecycle
// (features offered, activation, kicks, reset, failure) is the TransportSession's.
import { Feature, Interrupt, MMIO_MAGIC, MMIO_VERSION, Reg, Status, VENDOR_ID } from './constants.js';
import type { InterruptLine, VirtioDevice } from './device.js';
import { rateLimitedLogger } from '../log-rate.js';
import { virtioLogger, type Logger } from './virtio-logger.js';
import type { VirtioMemory } from './memory.js';
import { checkLayout } from './queue.js';
import { offeredFeatures, TransportSession } from './transport-session.js';

/**
 * A device window on an MMIO bus: register accesses at offsets into the window, data
 * little-endian. The VMM's BusDevice has this shape; declared here so virtio needs
 * nothing of the VMM.
 */
export interface MmioRegisterWindow {
  /** Fill `data` (1, 2, 4 or 8 bytes, little-endian) with the value at `offset`. */
  read(offset: number, data: Uint8Array): void;
  /** Take the little-endian value in `data` written at `offset`. */
  write(offset: number, data: Uint8Array): void;
}

/**
 * Where the driver is in device initialisation (virtio 1.2 §3.1.1). Status bits are
 * what the guest reads; the phase is what we act on.
 */
export type TransportPhase = 'reset' | 'acknowledged' | 'driver' | 'features-ok' | 'live' | 'failed';

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

interface QueueRegs {
  size: number;
  ready: boolean;
  desc: number;
  avail: number;
  used: number;
}

export class MmioTransport implements MmioRegisterWindow {
  readonly device: VirtioDevice;
  readonly #memory: VirtioMemory;
  readonly #interrupt: InterruptLine;
  readonly #log: Logger;
  readonly #offered: bigint;
  readonly #session: TransportSession;

  #phase: TransportPhase = 'reset';
  #status = 0;
  #deviceFeaturesSel = 0;
  #driverFeaturesSel = 0;
  #driverFeatures = 0n;
  #queueSel = 0;
  #queueRegs: QueueRegs[];
  #interruptStatus = 0;
  #configGeneration = 0;

  constructor(opts: MmioTransportOptions) {
    this.device = opts.device;
    this.#memory = opts.memory;
    this.#interrupt = opts.interrupt;
    // The guest decides how often these lines come: one bucket per transport.
    this.#log = rateLimitedLogger((opts.logger ?? virtioLogger()).child({ device: opts.name ?? `virtio-${opts.device.deviceId}` }));
    this.#offered = offeredFeatures(opts.device);
    this.#queueRegs = opts.device.queueSizes.map(() => emptyQueueRegs());
    this.#session = new TransportSession({
      device: opts.device,
      memory: opts.memory,
      log: this.#log,
      onInternalError: opts.onInternalError,
      hooks: {
        signalUsed: () => { this.#raise(Interrupt.USED_BUFFER); },
        configChanged: () => {
          this.#configGeneration = (this.#configGeneration + 1) >>> 0;
          this.#raise(Interrupt.CONFIG_CHANGE);
        },
        needsReset: (reason) => { this.#needsReset(reason); },
      },
    });
  }

  get phase(): TransportPhase {
    return this.#phase;
  }

  /** The status byte as the guest reads it. */
  get status(): number {
    return this.#status;
  }

  /** Why the device needs a reset, or null. */
  get needsResetReason(): string | null {
    return this.#session.failed;
  }

  /** Features agreed with the driver (valid once FEATURES_OK is set). */
  get negotiatedFeatures(): bigint {
    return this.#driverFeatures;
  }

  // ---- MmioRegisterWindow ----

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset >= Reg.Config) {
      this.device.readConfig(offset - Reg.Config, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) {
      this.#log.debug({ offset, len: data.length }, 'register read that is not 32-bit aligned: reads 0');
      return;
    }
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, this.#readRegister(offset), true);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= Reg.Config) {
      this.device.writeConfig(offset - Reg.Config, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) {
      this.#log.debug({ offset, len: data.length }, 'register write that is not 32-bit aligned: ignored');
      return;
    }
    this.#writeRegister(offset, new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true));
  }

  /**
   * The driver kicked queue `index`. The KVM engine calls this when the queue's
   * ioeventfd fires; a QueueNotify write comes here too. Never throws.
   */
  notify(index: number): void {
    if (this.#phase !== 'live' || this.#session.failed !== null) return;
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
    this.#reset();
  }

  // ---- registers ----

  #readRegister(offset: number): number {
    const qr = this.#queueRegs[this.#queueSel];
    switch (offset) {
      case Reg.MagicValue: return MMIO_MAGIC;
      case Reg.Version: return MMIO_VERSION;
      case Reg.DeviceId: return this.device.deviceId;
      case Reg.VendorId: return VENDOR_ID;
      case Reg.DeviceFeatures:
        return this.#deviceFeaturesSel > 1 ? 0 : Number((this.#offered >> BigInt(32 * this.#deviceFeaturesSel)) & 0xffff_ffffn);
      case Reg.QueueNumMax: return qr === undefined ? 0 : this.device.queueSizes[this.#queueSel]!;
      case Reg.QueueReady: return qr?.ready === true ? 1 : 0;
      case Reg.InterruptStatus: return this.#interruptStatus;
      case Reg.Status: return this.#status;
      case Reg.ConfigGeneration: return this.#configGeneration;
      case Reg.ShmLenLow: case Reg.ShmLenHigh: case Reg.ShmBaseLow: case Reg.ShmBaseHigh:
        return 0xffff_ffff; // no shared memory regions
      default: return 0;
    }
  }

  #writeRegister(offset: number, value: number): void {
    switch (offset) {
      case Reg.DeviceFeaturesSel: this.#deviceFeaturesSel = value; return;
      case Reg.DriverFeaturesSel: this.#driverFeaturesSel = value; return;
      case Reg.DriverFeatures: this.#writeDriverFeatures(value); return;
      case Reg.QueueSel: this.#queueSel = value; return;
      case Reg.QueueNum: this.#writeQueue((q) => { q.size = value; }); return;
      case Reg.QueueDescLow: this.#writeQueue((q) => { q.desc = setLow(q.desc, value); }); return;
      case Reg.QueueDescHigh: this.#writeQueue((q) => { q.desc = setHigh(q.desc, value); }); return;
      case Reg.QueueDriverLow: this.#writeQueue((q) => { q.avail = setLow(q.avail, value); }); return;
      case Reg.QueueDriverHigh: this.#writeQueue((q) => { q.avail = setHigh(q.avail, value); }); return;
      case Reg.QueueDeviceLow: this.#writeQueue((q) => { q.used = setLow(q.used, value); }); return;
      case Reg.QueueDeviceHigh: this.#writeQueue((q) => { q.used = setHigh(q.used, value); }); return;
      case Reg.QueueReady: this.#writeQueueReady(value); return;
      case Reg.QueueNotify: this.notify(value & 0xffff); return;
      case Reg.InterruptAck: this.#interruptStatus &= ~value; return;
      case Reg.Status: this.#writeStatus(value & 0xff); return;
      default:
        this.#log.debug({ offset, value }, 'write to a read-only or unknown register: ignored');
    }
  }

  #writeDriverFeatures(value: number): void {
    if (this.#phase !== 'driver') {
      this.#log.debug({ phase: this.#phase }, 'driver features written outside negotiation: ignored');
      return;
    }
    if (this.#driverFeaturesSel > 1) return;
    const shift = BigInt(32 * this.#driverFeaturesSel);
    this.#driverFeatures = (this.#driverFeatures & ~(0xffff_ffffn << shift)) | (BigInt(value >>> 0) << shift);
  }

  /** Queue registers may change only between FEATURES_OK and DRIVER_OK, while not ready. */
  #writeQueue(update: (q: QueueRegs) => void): void {
    const q = this.#queueRegs[this.#queueSel];
    if (q === undefined || this.#phase !== 'features-ok' || q.ready) {
      this.#log.debug({ queue: this.#queueSel, phase: this.#phase }, 'queue register write now is not allowed: ignored');
      return;
    }
    update(q);
  }

  #writeQueueReady(value: number): void {
    const index = this.#queueSel;
    const q = this.#queueRegs[index];
    if (q === undefined || this.#phase !== 'features-ok') return;
    if (value === 0) {
      q.ready = false;
      return;
    }
    const layout = { size: q.size, descAddr: q.desc, availAddr: q.avail, usedAddr: q.used };
    const problem = checkLayout(layout, this.device.queueSizes[index]!, this.#memory);
    if (problem !== null) {
      this.#session.fail(`queue ${index}: ${problem}`);
      return;
    }
    q.ready = true;
  }

  #writeStatus(value: number): void {
    if (value === 0) {
      this.#reset();
      return;
    }
    // The driver only ever adds bits (it keeps what it read). DEVICE_NEEDS_RESET is ours.
    const current = this.#status & ~Status.DEVICE_NEEDS_RESET;
    if ((value & current) !== current) {
      this.#log.debug({ status: this.#status, value }, 'status write clears bits: ignored');
      return;
    }
    const added = value & ~current & ~Status.DEVICE_NEEDS_RESET;
    if (added & Status.FAILED) {
      this.#status |= Status.FAILED;
      this.#phase = 'failed';
      return;
    }
    if (this.#phase === 'failed') return;
    if (added & Status.ACKNOWLEDGE) this.#advance('reset', 'acknowledged', Status.ACKNOWLEDGE);
    if (added & Status.DRIVER) this.#advance('acknowledged', 'driver', Status.DRIVER);
    if (added & Status.FEATURES_OK) this.#featuresOk();
    if (added & Status.DRIVER_OK) this.#driverOk();
  }

  #advance(from: TransportPhase, to: TransportPhase, bit: number): void {
    if (this.#phase !== from) {
      this.#log.debug({ phase: this.#phase, bit }, 'status bit out of order: ignored');
      return;
    }
    this.#phase = to;
    this.#status |= bit;
  }

  #featuresOk(): void {
    if (this.#phase !== 'driver') return;
    const wanted = this.#driverFeatures;
    if ((wanted & ~this.#offered) !== 0n) {
      this.#log.debug({ wanted: wanted.toString(16) }, 'driver accepted features we did not offer: FEATURES_OK refused');
      return;
    }
    if ((wanted & Feature.VERSION_1) === 0n) {
      this.#log.debug('driver did not accept VERSION_1 (legacy drivers are not supported): FEATURES_OK refused');
      return;
    }
    this.#phase = 'features-ok';
    this.#status |= Status.FEATURES_OK;
  }

  #driverOk(): void {
    if (this.#phase !== 'features-ok' || this.#session.failed !== null) return;
    this.#phase = 'live';
    this.#status |= Status.DRIVER_OK;
    const rings = this.#queueRegs.map((q) => q.ready
      ? { layout: { size: q.size, descAddr: q.desc, availAddr: q.avail, usedAddr: q.used } }
      : null);
    this.#session.start(rings, this.#driverFeatures);
  }

  #raise(bits: number): void {
    this.#interruptStatus |= bits;
    this.#interrupt.trigger();
  }

  /** The guest broke the rules (the session stopped the queues): DEVICE_NEEDS_RESET. */
  #needsReset(reason: string): void {
    this.#log.warn({ reason }, 'device needs reset');
    this.#status |= Status.DEVICE_NEEDS_RESET;
    if (this.#phase === 'live') this.#raise(Interrupt.CONFIG_CHANGE);
  }

  #reset(): void {
    // A device that was activated is reset even when the driver set FAILED after
    // DRIVER_OK: otherwise it would keep what it holds (vsock connections, host sockets).
    this.#session.stop();
    this.#phase = 'reset';
    this.#status = 0;
    this.#deviceFeaturesSel = 0;
    this.#driverFeaturesSel = 0;
    this.#driverFeatures = 0n;
    this.#queueSel = 0;
    this.#queueRegs = this.device.queueSizes.map(() => emptyQueueRegs());
    this.#interruptStatus = 0;
  }
}

function emptyQueueRegs(): QueueRegs {
  return { size: 0, ready: false, desc: 0, avail: 0, used: 0 };
}

// Ring addresses are kept as numbers: the high word is stored in full and checked
// against RAM (numbers are exact up to 2^53, far beyond any RAM) at QueueReady.
function setLow(addr: number, low: number): number {
  return Math.floor(addr / 0x1_0000_0000) * 0x1_0000_0000 + (low >>> 0);
}

function setHigh(addr: number, high: number): number {
  return (high >>> 0) * 0x1_0000_0000 + (addr % 0x1_0000_0000);
}
