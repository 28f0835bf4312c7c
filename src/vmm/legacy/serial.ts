// An 8250/16550-compatible UART, enough for Linux's 8250 driver and for polled output:
// transmit only (bytes go to a sink), scratch/line/modem registers, THRE interrupts.
// Receive is not wired: interactive stdio goes over virtio-console.

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;

const IER_THRI = 0x02;
const IIR_NO_INT = 0x01;
const IIR_THRI = 0x02;
const IIR_FIFO_BITS = 0xc0;
const LCR_DLAB = 0x80;
const MCR_LOOP = 0x10;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const MSR_DEFAULT = 0xb0; // DCD, DSR, CTS

export interface SerialSinks {
  /** Receives each transmitted byte. */
  output(byte: number): void;
  /** Pulses the UART's interrupt line. */
  interrupt?(): void;
}

export class Serial8250 {
  #ier = 0;
  #lcr = 0x03;
  #mcr = 0x08;
  #scr = 0;
  #dll = 0x0c;
  #dlm = 0;
  #fifo = false;
  #thriPending = false;
  readonly #sinks: SerialSinks;

  constructor(sinks: SerialSinks) {
    this.#sinks = sinks;
  }

  read(offset: number): number {
    const dlab = (this.#lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case 0: return dlab ? this.#dll : 0;
      case 1: return dlab ? this.#dlm : this.#ier;
      case 2: {
        const fifo = this.#fifo ? IIR_FIFO_BITS : 0;
        if (this.#thriPending && (this.#ier & IER_THRI)) {
          this.#thriPending = false; // reading IIR clears a THRE interrupt
          return IIR_THRI | fifo;
        }
        return IIR_NO_INT | fifo;
      }
      case 3: return this.#lcr;
      case 4: return this.#mcr;
      case 5: return LSR_THRE | LSR_TEMT;
      case 6: return (this.#mcr & MCR_LOOP) ? ((this.#mcr & 0x0f) << 4) : MSR_DEFAULT;
      case 7: return this.#scr;
      default: return 0xff;
    }
  }

  write(offset: number, value: number): void {
    const dlab = (this.#lcr & LCR_DLAB) !== 0;
    switch (offset) {
      case 0:
        if (dlab) { this.#dll = value; return; }
        if (!(this.#mcr & MCR_LOOP)) this.#sinks.output(value);
        this.#raiseThri();
        return;
      case 1:
        if (dlab) { this.#dlm = value; return; }
        {
          const enabling = (value & IER_THRI) !== 0 && (this.#ier & IER_THRI) === 0;
          this.#ier = value & 0x0f;
          // The transmitter is always empty, so enabling THRI fires at once.
          if (enabling) this.#raiseThri();
        }
        return;
      case 2: this.#fifo = (value & 1) !== 0; return;
      case 3: this.#lcr = value; return;
      case 4: this.#mcr = value & 0x1f; return;
      case 7: this.#scr = value; return;
      default: return;
    }
  }

  #raiseThri(): void {
    if (!(this.#ier & IER_THRI)) return;
    this.#thriPending = true;
    this.#sinks.interrupt?.();
  }
}
