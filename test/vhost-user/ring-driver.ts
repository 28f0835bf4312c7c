// The guest driver side for vhost-user front-end tests, with no guest: the software
// driver's DriverQueue lays out split rings in shared (memfd) guest RAM; a kick is a
// write to the ring's kick eventfd (what KVM's ioeventfd will do), and completion is
// waited for on the call eventfd (what KVM's irqfd will turn into an interrupt).
import { DriverQueue, SoftwareDriver, type UsedBuffer } from '../support/virtio/driver.js';
import { ringSizes } from '../../src/virtio/queue.js';
import { EventFd, EventFdWatcher } from '../../src/vmm/eventfd.js';
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import type { VringLayout } from '../../src/engine/vhost-user/frontend/frontend.js';

export interface Ring {
  queue: DriverQueue;
  layout: VringLayout;
  kick: EventFd;
  call: EventFd;
  err: EventFd;
  /** Call-eventfd signals seen so far. */
  calls(): number;
  /** Reaps used buffers, waiting on the call eventfd until at least `n` came back (bounded). */
  waitUsed(n: number, timeoutMs: number): Promise<UsedBuffer[]>;
  close(): void;
}

export class RingDriver {
  readonly memory: GuestMemory;
  readonly #driver: SoftwareDriver;
  readonly #kicks = new Map<number, EventFd>();

  constructor(memory: GuestMemory, arenaBase = 0x10000) {
    this.memory = memory;
    const transport = {
      read: (_o: number, data: Uint8Array): void => { data.fill(0); },
      write: (): void => { /* no registers: vhost-user has no MMIO here */ },
      notify: (index: number): void => { this.#kicks.get(index)?.signal(); },
    };
    this.#driver = new SoftwareDriver(transport, memory, { arenaBase, kick: 'direct' });
  }

  /** Lays out ring `index` (zeroed), with `size` entries and a data slot of `slotSize` bytes per descriptor. */
  ring(index: number, size: number, slotSize = 4096): Ring {
    const d = this.#driver;
    const sizes = ringSizes(size);
    const desc = d.alloc(sizes.desc, 16);
    const avail = d.alloc(sizes.avail, 2);
    const used = d.alloc(sizes.used, 4);
    const data = d.alloc(size * slotSize, 16);
    const indirect = d.alloc(size * 16 * 16, 16);
    this.memory.fill(desc, sizes.desc, 0);
    this.memory.fill(avail, sizes.avail, 0);
    this.memory.fill(used, sizes.used, 0);
    const queue = new DriverQueue(d, index, { size, desc, avail, used, data, slotSize, indirect, eventIdx: false });
    const kick = new EventFd();
    const call = new EventFd();
    const err = new EventFd();
    this.#kicks.set(index, kick);
    let calls = 0;
    let wake: (() => void) | null = null;
    const watcher = new EventFdWatcher(call, (n) => { calls += Number(n); wake?.(); });
    watcher.unref();
    const waitUsed = async (n: number, timeoutMs: number): Promise<UsedBuffer[]> => {
      const out: UsedBuffer[] = [];
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        out.push(...queue.reap());
        if (out.length >= n) return out;
        const left = deadline - Date.now();
        if (left <= 0) throw new Error(`ring ${index}: ${out.length}/${n} buffers used after ${timeoutMs} ms (used idx ${queue.usedIdx()}, ${calls} calls)`);
        // Woken by the call eventfd; the short poll covers a back end that suppresses calls.
        await new Promise<void>((res) => {
          const timer = setTimeout(() => { wake = null; res(); }, Math.min(left, 50));
          wake = () => { clearTimeout(timer); wake = null; res(); };
        });
      }
    };
    return {
      queue,
      layout: { size, desc, avail, used },
      kick,
      call,
      err,
      calls: () => calls,
      waitUsed,
      close: () => { watcher.stop(); kick.close(); call.close(); err.close(); this.#kicks.delete(index); },
    };
  }
}
