// The virtio-mmio register file, version 2 (virtio 1.2 §4.2.2), decoded once for every
// virtio-mmio window we serve: our own devices (mmio.ts, through a TransportSession) and
// external vhost-user back ends (src/engine/vhost-user/frontend/mmio-transport.ts).
// Here: the register state (feature select windows, driver features, queue select, each
// queue's size, ring addresses and ready flag, status, interrupt status, config
// generation) and the status order of virtio 1.2 §3.1.1, the same for every device.
// What the device behind the window does (config space, going live, reset, what
// InterruptStatus reads) is the transport's, through MmioRegisterHooks.
import { Feature, Interrupt, MMIO_MAGIC, MMIO_VERSION, Reg, Status, VENDOR_ID } from './constants.js';
import type { InterruptLine } from './device.js';
import type { Logger } from './virtio-logger.js';
import type { VirtioMemory } from './memory.js';
import { checkLayout, type QueueLayout } from './queue.js';

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

/** What differs between the devices behind a window: called by MmioRegisters. */
export interface MmioRegisterHooks {
  /** Config space read: `offset` from the start of config space (window 0x100), `data` zeroed. */
  readConfig(offset: number, data: Uint8Array): void;
  /** Config space write: `offset` from the start of config space, any width. */
  writeConfig(offset: number, data: Uint8Array): void;
  /** A 32-bit QueueNotify write with queue `index` (value & 0xffff). */
  queueNotify(index: number): void;
  /**
   * The driver set QueueReady on a ring that does not fit (checkLayout's `reason`,
   * prefixed "queue N: "); the ring stays not ready. Typically: needsReset().
   */
  ringRefused(reason: string): void;
  /**
   * DRIVER_OK was accepted: the phase is already 'live' and the bit set. `rings` has one
   * entry per queue: its layout when the driver set it ready, else null.
   */
  driverOk(features: bigint, rings: ReadonlyArray<QueueLayout | null>): void;
  /** The driver wrote 0 to Status (or the owner called reset()): stop the device. Registers clear after. */
  reset(): void;
  /** InterruptStatus as the guest reads it, given the bits raised and not acked; default those bits. */
  interruptStatus?(pending: number): number;
}

export interface MmioRegistersOptions {
  /** DeviceId (virtio 1.2 §5). */
  deviceId: number;
  /** DeviceFeatures; FEATURES_OK is refused for anything else, or without VERSION_1. */
  offeredFeatures: bigint;
  /** QueueNumMax of each queue, one entry per queue; a QueueSel past the end reads 0. */
  queueMax: readonly number[];
  /** Guest RAM, where each ring set ready must lie (checkLayout). */
  memory: VirtioMemory;
  /** Raised by raise() (and so by needsReset() while live). */
  interrupt: InterruptLine;
  /** Debug lines for accesses ignored; the guest decides how often (pass a rate-limited one). */
  log: Logger;
  hooks: MmioRegisterHooks;
}

interface QueueRegs { size: number; ready: boolean; descAddr: number; availAddr: number; usedAddr: number }

/** The virtio-mmio registers of one device window (virtio 1.2 §4.2.2, status order §3.1.1). */
export class MmioRegisters implements MmioRegisterWindow {
  readonly #o: MmioRegistersOptions;
  readonly #log: Logger;
  readonly #hooks: MmioRegisterHooks;
  #phase: TransportPhase = 'reset';
  #status = 0;
  #deviceFeaturesSel = 0;
  #driverFeaturesSel = 0;
  #driverFeatures = 0n;
  #queueSel = 0;
  #queues: QueueRegs[];
  #interruptStatus = 0;
  #configGeneration = 0;

  constructor(opts: MmioRegistersOptions) {
    this.#o = opts;
    this.#log = opts.log;
    this.#hooks = opts.hooks;
    this.#queues = opts.queueMax.map(() => emptyQueue());
  }

  get phase(): TransportPhase {
    return this.#phase;
  }

  /** The status byte as the guest reads it. */
  get status(): number {
    return this.#status;
  }

  /** Features the driver wrote (agreed once FEATURES_OK is set). */
  get driverFeatures(): bigint {
    return this.#driverFeatures;
  }

  // ---- MmioRegisterWindow ----

  read(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset >= Reg.Config) {
      this.#hooks.readConfig(offset - Reg.Config, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) {
      this.#log.debug({ offset, len: data.length }, 'register read that is not 32-bit aligned: reads 0');
      return;
    }
    new DataView(data.buffer, data.byteOffset, 4).setUint32(0, this.#readRegister(offset) >>> 0, true);
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= Reg.Config) {
      this.#hooks.writeConfig(offset - Reg.Config, data);
      return;
    }
    if (data.length !== 4 || offset % 4 !== 0) {
      this.#log.debug({ offset, len: data.length }, 'register write that is not 32-bit aligned: ignored');
      return;
    }
    this.#writeRegister(offset, new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true));
  }

  // ---- for the transport ----

  /** Sets `bits` in InterruptStatus (until the driver acks them) and triggers the interrupt. */
  raise(bits: number): void {
    this.#interruptStatus |= bits;
    this.#o.interrupt.trigger();
  }

  /** Config space changed: the next ConfigGeneration read differs (virtio 1.2 §4.2.2). */
  bumpConfigGeneration(): void {
    this.#configGeneration = (this.#configGeneration + 1) >>> 0;
  }

  /**
   * Sets DEVICE_NEEDS_RESET (virtio 1.2 §2.1.2) and, while live, raises a config change
   * interrupt. False when it was set already (nothing done). DRIVER_OK is refused
   * while it is set; a reset clears it.
   */
  needsReset(): boolean {
    if ((this.#status & Status.DEVICE_NEEDS_RESET) !== 0) return false;
    this.#status |= Status.DEVICE_NEEDS_RESET;
    if (this.#phase === 'live') this.raise(Interrupt.CONFIG_CHANGE);
    return true;
  }

  /** As if the driver wrote 0 to Status: hooks.reset(), then every register but ConfigGeneration clears. */
  reset(): void {
    this.#hooks.reset();
    this.#phase = 'reset';
    this.#status = 0;
    this.#deviceFeaturesSel = 0;
    this.#driverFeaturesSel = 0;
    this.#driverFeatures = 0n;
    this.#queueSel = 0;
    this.#queues = this.#queues.map(() => emptyQueue());
    this.#interruptStatus = 0;
  }

  // ---- registers ----

  #readRegister(offset: number): number {
    const q = this.#queues[this.#queueSel];
    switch (offset) {
      case Reg.MagicValue: return MMIO_MAGIC;
      case Reg.Version: return MMIO_VERSION;
      case Reg.DeviceId: return this.#o.deviceId;
      case Reg.VendorId: return VENDOR_ID;
      case Reg.DeviceFeatures:
        return this.#deviceFeaturesSel > 1 ? 0 : Number((this.#o.offeredFeatures >> BigInt(32 * this.#deviceFeaturesSel)) & 0xffff_ffffn);
      case Reg.QueueNumMax: return q === undefined ? 0 : this.#o.queueMax[this.#queueSel]!;
      case Reg.QueueReady: return q?.ready === true ? 1 : 0;
      case Reg.InterruptStatus: return this.#hooks.interruptStatus?.(this.#interruptStatus) ?? this.#interruptStatus;
      case Reg.Status: return this.#status;
      case Reg.ConfigGeneration: return this.#configGeneration;
      case Reg.ShmLenLow: case Reg.ShmLenHigh: case Reg.ShmBaseLow: case Reg.ShmBaseHigh:
        return 0xffff_ffff; // no shared memory regions (no virtio-fs DAX window either)
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
      case Reg.QueueDescLow: this.#writeQueue((q) => { q.descAddr = setLow(q.descAddr, value); }); return;
      case Reg.QueueDescHigh: this.#writeQueue((q) => { q.descAddr = setHigh(q.descAddr, value); }); return;
      case Reg.QueueDriverLow: this.#writeQueue((q) => { q.availAddr = setLow(q.availAddr, value); }); return;
      case Reg.QueueDriverHigh: this.#writeQueue((q) => { q.availAddr = setHigh(q.availAddr, value); }); return;
      case Reg.QueueDeviceLow: this.#writeQueue((q) => { q.usedAddr = setLow(q.usedAddr, value); }); return;
      case Reg.QueueDeviceHigh: this.#writeQueue((q) => { q.usedAddr = setHigh(q.usedAddr, value); }); return;
      case Reg.QueueReady: this.#writeQueueReady(value); return;
      case Reg.QueueNotify: this.#hooks.queueNotify(value & 0xffff); return;
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
    const q = this.#queues[this.#queueSel];
    if (q === undefined || this.#phase !== 'features-ok' || q.ready) {
      this.#log.debug({ queue: this.#queueSel, phase: this.#phase }, 'queue register write now is not allowed: ignored');
      return;
    }
    update(q);
  }

  #writeQueueReady(value: number): void {
    const index = this.#queueSel;
    const q = this.#queues[index];
    if (q === undefined || this.#phase !== 'features-ok') return;
    if (value === 0) {
      q.ready = false;
      return;
    }
    const problem = checkLayout(layoutOf(q), this.#o.queueMax[index]!, this.#o.memory);
    if (problem !== null) {
      this.#hooks.ringRefused(`queue ${index}: ${problem}`);
      return;
    }
    q.ready = true;
  }

  #writeStatus(value: number): void {
    if (value === 0) {
      this.reset();
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

  /** Refused (the bit stays clear, §3.1.1): features we did not offer, or no VERSION_1. */
  #featuresOk(): void {
    if (this.#phase !== 'driver') {
      this.#log.debug({ phase: this.#phase }, 'FEATURES_OK out of order: ignored');
      return;
    }
    const wanted = this.#driverFeatures;
    if ((wanted & ~this.#o.offeredFeatures) !== 0n) {
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
    if (this.#phase !== 'features-ok' || (this.#status & Status.DEVICE_NEEDS_RESET) !== 0) return;
    this.#phase = 'live';
    this.#status |= Status.DRIVER_OK;
    this.#hooks.driverOk(this.#driverFeatures, this.#queues.map((q) => (q.ready ? layoutOf(q) : null)));
  }
}

function emptyQueue(): QueueRegs {
  return { size: 0, ready: false, descAddr: 0, availAddr: 0, usedAddr: 0 };
}

function layoutOf(q: QueueRegs): QueueLayout {
  return { size: q.size, descAddr: q.descAddr, availAddr: q.availAddr, usedAddr: q.usedAddr };
}

// Ring addresses are kept as numbers: the high word is stored in full and checked
// against RAM (numbers are exact up to 2^53, far beyond any RAM) at QueueReady.
function setLow(addr: number, low: number): number {
  return Math.floor(addr / 0x1_0000_0000) * 0x1_0000_0000 + (low >>> 0);
}

function setHigh(addr: number, high: number): number {
  return (high >>> 0) * 0x1_0000_0000 + (addr % 0x1_0000_0000);
}
