// virtio-console (device id 3) with MULTIPORT. Port 0 is the console (hvc0); the
// named ports carry the workload's stdio and init's exit status. The control
// protocol follows the Linux driver: DEVICE_READY → DEVICE_ADD per port → PORT_READY
// → (CONSOLE_PORT | PORT_NAME) + PORT_OPEN; the guest sends PORT_OPEN when it opens.
import { EventEmitter } from 'node:events';
import { DeviceId } from '../constants.js';
import { readConfigBytes, type DeviceContext, type VirtioDevice } from '../device.js';
import type { Virtqueue } from '../queue.js';
import {
  CONTROL_HEADER_SIZE, CONTROL_RX_QUEUE, CONTROL_TX_QUEUE, ConsoleFeature, ControlEvent,
  decodeControl, encodeControl, portRxQueue,
} from './control.js';
import { ConsolePort, type PortHost } from './port.js';
import { ControlOutbox, MAX_PENDING_CONTROL } from './outbox.js';
import { ExitStatusParser } from './status.js';

/** Names of the ports tsibox creates, in port-id order after port 0 (hvc0). */
export const PortName = {
  STDIN: 'tsibox.stdin',
  STDOUT: 'tsibox.stdout',
  STDERR: 'tsibox.stderr',
  STATUS: 'tsibox.status',
} as const;

export const DEFAULT_PORT_NAMES: readonly string[] = [PortName.STDIN, PortName.STDOUT, PortName.STDERR, PortName.STATUS];

export interface ConsoleOptions {
  /** Named ports after port 0 (default: stdin, stdout, stderr, status). */
  ports?: readonly string[];
  queueSize?: number;
  /** Console size reported in config space (VIRTIO_CONSOLE_F_SIZE). */
  cols?: number;
  rows?: number;
}

export interface ConsoleEvents {
  /** Guest init reported the workload's exit status on tsibox.status. */
  'exit-status': [status: number];
}

const MAX_CONTROL_PAYLOAD = 4096;

export class ConsoleDevice extends EventEmitter<ConsoleEvents> implements VirtioDevice, PortHost {
  readonly deviceId = DeviceId.CONSOLE;
  readonly features = ConsoleFeature.MULTIPORT | ConsoleFeature.SIZE;
  readonly queueSizes: readonly number[];
  readonly ports: readonly ConsolePort[];
  #config = new Uint8Array(12);
  #ctx: DeviceContext | null = null;
  #multiport = false;
  /** Control messages waiting for a control-rx buffer from the guest (bounded). */
  readonly #controlOut: ControlOutbox;
  #exitStatus: number | null = null;
  /** Re-entrancy guard: finishing a write can synchronously queue the next chunk. */
  #moving = new Set<number>();

  constructor(opts: ConsoleOptions = {}) {
    super();
    const names = ['', ...(opts.ports ?? DEFAULT_PORT_NAMES)];
    const size = opts.queueSize ?? 128;
    this.queueSizes = new Array<number>(2 * (names.length + 1)).fill(size);
    this.ports = names.map((name, id) => new ConsolePort(id, name, this, { alwaysDrain: id === 0 }));
    // About 3 distinct (port, event) keys per port ever wait at once; the cap is a backstop.
    this.#controlOut = new ControlOutbox(Math.max(MAX_PENDING_CONTROL, 4 * names.length));
    const cfg = new DataView(this.#config.buffer);
    cfg.setUint16(0, opts.cols ?? 80, true);
    cfg.setUint16(2, opts.rows ?? 25, true);
    cfg.setUint32(4, names.length, true);
    const status = this.port(PortName.STATUS);
    if (status !== undefined) {
      const parser = new ExitStatusParser(
        (code) => {
          this.#exitStatus = code;
          this.emit('exit-status', code);
        },
        (text) => { this.#ctx?.log.debug({ text }, 'unparsable line on the status port'); },
      );
      status.output.on('data', (b: Buffer) => { parser.push(b); });
    }
  }

  /** The port called `name` ('' is hvc0). */
  port(name: string): ConsolePort | undefined {
    return this.ports.find((p) => p.name === name);
  }

  /** Control messages waiting for the guest to post control-rx buffers. */
  get pendingControl(): number {
    return this.#controlOut.size;
  }

  /** Control messages dropped because too many distinct ones were waiting. */
  get droppedControl(): number {
    return this.#controlOut.dropped;
  }

  /** The exit status init reported, or null. */
  get exitStatus(): number | null {
    return this.#exitStatus;
  }

  // ---- VirtioDevice ----

  readConfig(offset: number, data: Uint8Array): void {
    readConfigBytes(this.#config, offset, data);
  }

  writeConfig(): void {
    // emerg_wr is not offered; cols/rows/max_nr_ports are read-only.
  }

  activate(ctx: DeviceContext): void {
    this.#ctx = ctx;
    this.#multiport = (ctx.features & ConsoleFeature.MULTIPORT) !== 0n;
    this.#controlOut.clear();
    this.#moving.clear();
    // Without MULTIPORT only port 0 exists, and it is open from the start.
    if (!this.#multiport) this.ports[0]!.setGuestOpen(true);
  }

  reset(): void {
    this.#ctx = null;
    this.#controlOut.clear();
    this.#moving.clear();
    for (const p of this.ports) p.detach();
  }

  queueNotify(index: number): void {
    if (index === CONTROL_RX_QUEUE && this.#multiport) this.#flushControl();
    else if (index === CONTROL_TX_QUEUE && this.#multiport) this.#readControl();
    else {
      const port = this.#portOfQueue(index);
      if (port === undefined) return;
      if (index === portRxQueue(port.id)) this.#flushInput(port);
      else this.#drainOutput(port);
    }
  }

  // ---- PortHost ----

  wake(port: ConsolePort): void {
    if (this.#ctx === null) return;
    this.#flushInput(port);
    this.#drainOutput(port);
  }

  setHostOpen(port: ConsolePort, open: boolean): void {
    if (this.#ctx !== null && this.#multiport) this.#sendControl(port.id, ControlEvent.PORT_OPEN, open ? 1 : 0);
  }

  // ---- data ----

  #queue(index: number): Virtqueue | null {
    return this.#ctx?.queues[index] ?? null;
  }

  #portOfQueue(index: number): ConsolePort | undefined {
    if (index < 2) return this.ports[0];
    if (!this.#multiport) return undefined;
    return this.ports[(index >> 1) - 1];
  }

  /** Host → guest: fill the port's receive buffers with pending input. */
  #flushInput(port: ConsolePort): void {
    const index = portRxQueue(port.id);
    const q = this.#queue(index);
    if (q === null || !port.guestOpen || !port.hasInput || this.#moving.has(index)) return;
    this.#moving.add(index);
    let used = 0;
    while (port.hasInput) {
      const chain = q.pop();
      if (chain === null) break;
      let written = 0;
      for (const buf of chain.writable) {
        written += port.takeInput(buf);
        if (!port.hasInput) break;
      }
      q.addUsed(chain.head, written);
      used++;
    }
    this.#moving.delete(index);
    if (used > 0) this.#ctx!.signalUsed(q);
  }

  /** Guest → host: take the port's transmit buffers while the consumer wants more. */
  #drainOutput(port: ConsolePort): void {
    const index = portRxQueue(port.id) + 1;
    const q = this.#queue(index);
    if (q === null || this.#moving.has(index)) return;
    this.#moving.add(index);
    let used = 0;
    while (port.acceptsOutput) {
      const chain = q.pop();
      if (chain === null) break;
      for (const buf of chain.readable) if (buf.length > 0) port.deliver(Buffer.from(buf));
      q.addUsed(chain.head, 0);
      used++;
    }
    this.#moving.delete(index);
    if (used > 0) this.#ctx!.signalUsed(q);
  }

  // ---- control ----

  #sendControl(id: number, event: number, value: number, payload?: Uint8Array): void {
    if (!this.#controlOut.put(id, event, encodeControl({ id, event, value }, payload))) {
      this.#ctx?.log.debug({ id, event, dropped: this.#controlOut.dropped }, 'control queue full: message dropped');
    }
    this.#flushControl();
  }

  #flushControl(): void {
    const q = this.#queue(CONTROL_RX_QUEUE);
    if (q === null) return;
    let used = 0;
    while (this.#controlOut.size > 0) {
      const chain = q.pop();
      if (chain === null) break;
      const msg = this.#controlOut.take()!;
      // Linux posts one page per buffer; a message that does not fit is dropped.
      const dest = chain.writable[0];
      if (dest === undefined || dest.length < msg.length) {
        this.#ctx!.log.debug({ need: msg.length }, 'control buffer too small: message dropped');
        q.addUsed(chain.head, 0);
      } else {
        dest.set(msg);
        q.addUsed(chain.head, msg.length);
      }
      used++;
    }
    if (used > 0) this.#ctx!.signalUsed(q);
  }

  #readControl(): void {
    const q = this.#queue(CONTROL_TX_QUEUE);
    if (q === null) return;
    let used = 0;
    const messages: Uint8Array[] = [];
    for (let chain = q.pop(); chain !== null; chain = q.pop()) {
      const first = chain.readable[0];
      if (first !== undefined) messages.push(first.slice(0, Math.min(first.length, CONTROL_HEADER_SIZE + MAX_CONTROL_PAYLOAD)));
      q.addUsed(chain.head, 0);
      used++;
    }
    if (used > 0) this.#ctx!.signalUsed(q);
    for (const m of messages) this.#handleControl(m);
  }

  #handleControl(bytes: Uint8Array): void {
    const ctx = this.#ctx;
    const msg = decodeControl(bytes);
    if (ctx === null) return;
    if (msg === null) {
      ctx.log.debug({ len: bytes.length }, 'short control message ignored');
      return;
    }
    switch (msg.event) {
      case ControlEvent.DEVICE_READY:
        if (msg.value !== 1) {
          ctx.log.warn('guest console driver failed to initialise');
          return;
        }
        for (const p of this.ports) this.#sendControl(p.id, ControlEvent.DEVICE_ADD, 0);
        return;
      case ControlEvent.PORT_READY: {
        const port = this.ports[msg.id];
        if (port === undefined || msg.value !== 1) {
          ctx.log.debug({ id: msg.id, value: msg.value }, 'PORT_READY for an unknown or failed port');
          return;
        }
        if (port.id === 0) this.#sendControl(0, ControlEvent.CONSOLE_PORT, 1);
        else this.#sendControl(port.id, ControlEvent.PORT_NAME, 0, Buffer.from(port.name));
        this.#sendControl(port.id, ControlEvent.PORT_OPEN, port.hostOpen ? 1 : 0);
        return;
      }
      case ControlEvent.PORT_OPEN: {
        const port = this.ports[msg.id];
        if (port === undefined) return;
        port.setGuestOpen(msg.value === 1);
        this.wake(port);
        return;
      }
      default:
        ctx.log.debug({ event: msg.event }, 'unexpected control event from the guest');
    }
  }
}
