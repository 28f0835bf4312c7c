// Plays the Linux virtio_console driver over the software driver: MULTIPORT
// negotiation, control handshake, per-port receive buffers, writes and reads.
import { Feature } from '../../src/virtio/constants.js';
import { ConsoleDevice } from '../../src/virtio/console/index.js';
import { ConsoleFeature, ControlEvent, decodeControl, encodeControl, portRxQueue } from '../../src/virtio/console/control.js';
import { createHarness, type Harness } from '../support/virtio/harness.js';
import type { DriverQueue } from '../support/virtio/driver.js';

export interface GuestPort {
  id: number;
  name: string | null;
  console: boolean;
  hostOpen: boolean;
  received: Buffer[];
}

export class ConsoleGuest {
  readonly h: Harness<ConsoleDevice>;
  readonly queues: DriverQueue[] = [];
  readonly ports = new Map<number, GuestPort>();
  readonly controlLog: Array<{ id: number; event: number; value: number }> = [];

  constructor(device: ConsoleDevice, features: bigint = Feature.VERSION_1 | Feature.RING_EVENT_IDX | ConsoleFeature.MULTIPORT) {
    this.h = createHarness(device, { memorySize: 16 * 1024 * 1024 });
    const d = this.h.driver;
    const agreed = d.negotiate(features);
    const nq = (agreed & ConsoleFeature.MULTIPORT) !== 0n ? device.queueSizes.length : 2;
    for (let i = 0; i < nq; i++) this.queues.push(d.setupQueue(i, { size: 16, slotSize: 512 }));
    d.driverOk();
    if (nq > 2) {
      this.#fillRx(2);
      this.#sendControl(0xffffffff, ControlEvent.DEVICE_READY, 1);
    } else {
      this.ports.set(0, { id: 0, name: null, console: true, hostOpen: true, received: [] });
      this.#fillRx(0);
    }
    this.pump();
  }

  close(): void {
    this.h.close();
  }

  #fillRx(q: number): void {
    const queue = this.queues[q]!;
    while (queue.freeDescriptors > 0) queue.add([], [256]);
    queue.kick();
  }

  #sendControl(id: number, event: number, value: number): void {
    this.queues[3]!.add([encodeControl({ id, event, value })], []);
    this.queues[3]!.kick();
  }

  /** Processes everything the device returned, like the guest's interrupt handler. */
  pump(): void {
    for (let round = 0; round < 100; round++) {
      let work = 0;
      if (this.queues.length > 2) {
        for (const u of this.queues[2]!.reap()) {
          work++;
          this.#onControl(Buffer.from(u.data));
        }
        if (work > 0) this.#fillRx(2);
        this.queues[3]!.reap();
      }
      for (const p of this.ports.values()) {
        const rx = this.queues[portRxQueue(p.id)]!;
        const got = rx.reap();
        for (const u of got) p.received.push(Buffer.from(u.data));
        if (got.length > 0) { work++; this.#fillRx(portRxQueue(p.id)); }
        this.queues[portRxQueue(p.id) + 1]!.reap();
      }
      if (work === 0) return;
    }
  }

  #onControl(buf: Buffer): void {
    const msg = decodeControl(buf)!;
    this.controlLog.push(msg);
    switch (msg.event) {
      case ControlEvent.DEVICE_ADD:
        this.ports.set(msg.id, { id: msg.id, name: null, console: false, hostOpen: false, received: [] });
        this.#fillRx(portRxQueue(msg.id));
        this.#sendControl(msg.id, ControlEvent.PORT_READY, 1);
        break;
      case ControlEvent.CONSOLE_PORT:
        this.ports.get(msg.id)!.console = true;
        this.#sendControl(msg.id, ControlEvent.PORT_OPEN, 1);
        break;
      case ControlEvent.PORT_NAME:
        this.ports.get(msg.id)!.name = buf.subarray(8).toString();
        break;
      case ControlEvent.PORT_OPEN:
        this.ports.get(msg.id)!.hostOpen = msg.value === 1;
        break;
    }
  }

  portByName(name: string): GuestPort {
    for (const p of this.ports.values()) if (p.name === name) return p;
    throw new Error(`no port ${name}`);
  }

  /** A guest process opens /dev/vportNpM. */
  open(id: number): void {
    this.#sendControl(id, ControlEvent.PORT_OPEN, 1);
    this.pump();
  }

  close_(id: number): void {
    this.#sendControl(id, ControlEvent.PORT_OPEN, 0);
    this.pump();
  }

  /** The guest writes to port `id`. Returns false if no descriptor was free. */
  write(id: number, data: string | Uint8Array): boolean {
    const tx = this.queues[portRxQueue(id) + 1]!;
    tx.reap();
    const ok = tx.add([typeof data === 'string' ? Buffer.from(data) : data], []) !== null;
    tx.kick();
    this.pump();
    return ok;
  }

  /** Everything received on port `id` so far. */
  read(id: number): string {
    const p = this.ports.get(id)!;
    const s = Buffer.concat(p.received).toString();
    p.received = [];
    return s;
  }
}
