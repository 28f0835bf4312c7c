// virtio-net through the software driver: header stripping/zeroing, config, both
// directions of backpressure, hostile chains (short, header-only, oversized,
// readable rx buffers) and a random stress with a checksum.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { DeviceId, Feature } from '../../src/virtio/constants.js';
import type { DeviceContext, VirtioDevice } from '../../src/virtio/device.js';
import {
  ETH_HEADER_SIZE, LEGACY_NET_HDR_SIZE, MAX_FRAME_SIZE, NET_HDR_SIZE, NetDevice, NetFeature, RX_QUEUE, TX_QUEUE, parseMac, randomMac,
  type FrameBackend, type FramePort,
} from '../../src/virtio/net/index.js';
import { createHarness } from '../support/virtio/harness.js';

/** A backend that records what the guest sent and lets the test deliver frames. */
class TestBackend implements FrameBackend {
  port!: FramePort;
  sent: Buffer[] = [];
  /** send() returns false once this many frames are held (Infinity: never full). */
  capacity = Infinity;
  paused = false;
  pauses = 0;
  resumes = 0;
  closedCalls = 0;
  attach(port: FramePort): void { this.port = port; }
  send(frame: Uint8Array): boolean {
    this.sent.push(Buffer.from(frame));
    return this.sent.length < this.capacity;
  }
  pause(): void { this.paused = true; this.pauses++; }
  resume(): void { this.paused = false; this.resumes++; }
  close(): void { this.closedCalls++; }
}

function frame(len: number, fill?: number): Buffer {
  const f = fill === undefined ? randomBytes(len) : Buffer.alloc(len, fill);
  f.set([0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00], 0);
  return f;
}

function withHdr(f: Uint8Array, hdr = Buffer.alloc(NET_HDR_SIZE)): Buffer {
  return Buffer.concat([hdr, f]);
}

function setup(opts: { queueSize?: number; rxQueueLimit?: number; rxHighWater?: number; mac?: string; slotSize?: number } = {}) {
  const backend = new TestBackend();
  const dev = new NetDevice({ backend, ...opts });
  const h = createHarness(dev, { memorySize: 16 * 1024 * 1024 });
  const features = h.driver.negotiate();
  const rx = h.driver.setupQueue(RX_QUEUE, { size: opts.queueSize ?? 16, slotSize: opts.slotSize ?? 2048 });
  const tx = h.driver.setupQueue(TX_QUEUE, { size: opts.queueSize ?? 16, slotSize: opts.slotSize ?? 2048 });
  h.driver.driverOk();
  return { backend, dev, h, rx, tx, features };
}

t.test('identity, features and config', (t) => {
  const { dev, h, features } = setup({ mac: '52:54:00:12:34:56' });
  t.teardown(h.close);
  t.equal(dev.deviceId, DeviceId.NET);
  t.equal(features & NetFeature.MAC, NetFeature.MAC);
  t.equal(features & NetFeature.STATUS, NetFeature.STATUS);
  t.equal(features & Feature.VERSION_1, Feature.VERSION_1);
  t.equal(features & (NetFeature.MRG_RXBUF | NetFeature.CTRL_VQ | NetFeature.MQ | NetFeature.CSUM | NetFeature.GUEST_CSUM), 0n, 'no offloads, no mergeable buffers, no control queue');
  t.same([...h.driver.readConfig(0, 6)], [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
  t.same([...h.driver.readConfig(6, 2)], [1, 0], 'link up');
  t.same([...h.driver.readConfig(8, 4)], [0, 0, 0, 0], 'past the config reads 0');
  h.driver.transport.write(0x100, new Uint8Array([1, 2, 3]));
  t.same([...h.driver.readConfig(0, 3)], [0x52, 0x54, 0], 'config writes are ignored');
  t.equal(dev.queueSizes.length, 2);
  t.end();
});

t.test('MAC parsing', (t) => {
  t.throws(() => parseMac('01:00:00:00:00:01'), /multicast/);
  t.throws(() => parseMac('zz:00:00:00:00:01'), /not aa:bb/);
  for (let i = 0; i < 20; i++) {
    const m = parseMac(randomMac());
    t.equal(m[0]! & 3, 2, 'unicast, locally administered');
  }
  t.end();
});

t.test('tx strips the header; chains split anywhere; one interrupt per batch', (t) => {
  const { backend, h, tx } = setup();
  t.teardown(h.close);
  const f1 = frame(60);
  const f2 = frame(1514);
  const f3 = frame(100);
  tx.add([withHdr(f1)], []);
  const w2 = withHdr(f2);
  tx.add([w2.subarray(0, 12), w2.subarray(12)], []); // Linux's layout without can_push
  const w3 = withHdr(f3);
  tx.add([w3.subarray(0, 5), w3.subarray(5, 30), w3.subarray(30, 31), w3.subarray(31)], [], { indirect: true });
  tx.kick();
  t.same(backend.sent.map((b) => b.toString('hex')), [f1, f2, f3].map((b) => b.toString('hex')));
  const used = tx.reap();
  t.equal(used.length, 3);
  t.ok(used.every((u) => u.len === 0), 'tx buffers come back with 0 bytes written');
  t.equal(h.irq.count, 1);
  t.end();
});

t.test('rx writes a zeroed header with num_buffers 1 then the frame; frames wait for buffers', (t) => {
  const { backend, dev, h, rx } = setup();
  t.teardown(h.close);
  const f1 = frame(42);
  const f2 = frame(1514);
  backend.port.deliver(f1); // no buffers posted yet: held
  t.equal(dev.stats().rxQueued, 1);
  rx.add([], [2048]);
  rx.add([], [7, 5, 20, 2000], { indirect: true }); // header split across buffers
  rx.kick();
  const used = rx.reap();
  t.equal(used.length, 1, 'the held frame went out when the buffers came');
  const hdr = Buffer.alloc(NET_HDR_SIZE);
  hdr[10] = 1;
  t.equal(used[0]!.len, NET_HDR_SIZE + f1.length);
  t.same(Buffer.from(used[0]!.data).toString('hex'), withHdr(f1, hdr).toString('hex'));
  backend.port.deliver(f2);
  const used2 = rx.reap();
  t.equal(used2[0]!.len, NET_HDR_SIZE + f2.length);
  t.same(Buffer.from(used2[0]!.data).toString('hex'), withHdr(f2, hdr).toString('hex'));
  t.equal(dev.stats().rxFrames, 2);
  t.equal(dev.stats().rxBytes, f1.length + f2.length);
  t.end();
});

t.test('rx backpressure: pause above the high-water mark, drop past the limit, resume when drained', (t) => {
  const { backend, dev, h, rx } = setup({ rxQueueLimit: 8, rxHighWater: 4 });
  t.teardown(h.close);
  const frames = Array.from({ length: 12 }, (_, i) => frame(64, i));
  for (const f of frames.slice(0, 3)) backend.port.deliver(f);
  t.equal(backend.paused, false);
  backend.port.deliver(frames[3]!);
  t.equal(backend.paused, true, 'paused at 4 held frames');
  for (const f of frames.slice(4)) backend.port.deliver(f); // a backend that ignores pause
  t.equal(dev.stats().rxQueued, 8);
  t.equal(dev.stats().rxDropped, 4, 'frames past the limit are dropped and counted');
  for (let i = 0; i < 6; i++) rx.add([], [128]);
  rx.kick();
  t.equal(rx.reap().length, 6);
  t.equal(backend.paused, false, 'resumed at the low-water mark');
  t.equal(backend.resumes, 1);
  for (let i = 0; i < 4; i++) rx.add([], [128]);
  rx.kick();
  const rest = rx.reap();
  t.equal(rest.length, 2, 'only the held frames are used; the other buffers stay posted');
  t.same(Buffer.from(rest[1]!.data.subarray(NET_HDR_SIZE)).toString('hex'), frames[7]!.toString('hex'), 'order kept');
  t.equal(rx.inFlight, 2);
  t.end();
});

t.test('tx backpressure: stop taking buffers while the backend is full', (t) => {
  const { backend, dev, h, tx } = setup();
  t.teardown(h.close);
  backend.capacity = 3;
  for (let i = 0; i < 6; i++) tx.add([withHdr(frame(80, i))], []);
  tx.kick();
  t.equal(backend.sent.length, 3, 'stopped when send() said full');
  t.equal(dev.stats().txBlocked, true);
  t.equal(tx.reap().length, 3);
  backend.capacity = Infinity;
  tx.kick(true); // a kick while blocked does nothing
  t.equal(backend.sent.length, 3);
  backend.port.writable();
  t.equal(backend.sent.length, 6, 'writable() resumes the queue');
  t.equal(tx.reap().length, 3);
  t.same(backend.sent.map((b) => b[14]), [0, 1, 2, 3, 4, 5], 'in order');
  t.end();
});

t.test('hostile tx chains are dropped and counted, the device keeps working', (t) => {
  const { backend, dev, h, tx } = setup({ slotSize: 80 * 1024, queueSize: 16 });
  t.teardown(h.close);
  tx.add([Buffer.alloc(5)], []); // shorter than the header
  tx.add([Buffer.alloc(NET_HDR_SIZE)], []); // header only
  tx.add([withHdr(Buffer.alloc(ETH_HEADER_SIZE - 1))], []); // runt
  tx.add([], [64]); // writable only
  tx.add([withHdr(frame(MAX_FRAME_SIZE + 1))], []); // oversized
  const ok = frame(MAX_FRAME_SIZE);
  tx.add([withHdr(ok)], [16]); // largest frame, with a stray writable buffer (ignored)
  tx.kick();
  t.equal(dev.stats().txDropped, 5);
  t.equal(backend.sent.length, 1);
  t.equal(backend.sent[0]!.length, MAX_FRAME_SIZE);
  t.equal(tx.reap().length, 6, 'every chain is returned');
  t.equal(h.driver.status & 0x40, 0, 'no DEVICE_NEEDS_RESET for droppable input');
  t.end();
});

t.test('hostile rx chains: too small for any frame are returned empty; a frame too big is dropped', (t) => {
  const { backend, dev, h, rx } = setup();
  t.teardown(h.close);
  rx.add([], [NET_HDR_SIZE]); // header only
  rx.add([Buffer.alloc(100)], []); // readable only
  rx.add([], [NET_HDR_SIZE + 100]);
  rx.add([], [2048]);
  rx.kick();
  backend.port.deliver(frame(500)); // does not fit the third buffer
  backend.port.deliver(frame(60));
  backend.port.deliver(Buffer.alloc(3)); // malformed from the backend
  const used = rx.reap();
  t.same(used.map((u) => u.len), [0, 0, NET_HDR_SIZE + 60]);
  const s = dev.stats();
  t.equal(s.rxBadChains, 2);
  t.equal(s.rxTooBig, 1);
  t.equal(s.rxDropped, 1);
  t.equal(s.rxFrames, 1);
  t.equal(rx.inFlight, 1, 'the 2048-byte buffer is still posted');
  t.end();
});

t.test('a broken ring (loop) stops the device with a reason, no throw', (t) => {
  const { backend, h, tx } = setup();
  t.teardown(h.close);
  tx.writeDesc(0, tx.slot(0), 64, 1, 1);
  tx.writeDesc(1, tx.slot(1), 64, 1, 0);
  tx.publish(0);
  t.doesNotThrow(() => { tx.kick(true); });
  t.equal(backend.sent.length, 0);
  t.equal(h.driver.status & 0x40, 0x40, 'DEVICE_NEEDS_RESET');
  t.end();
});

t.test('backend gone: guest frames are dropped, nothing blocks', (t) => {
  const { backend, dev, h, tx } = setup();
  t.teardown(h.close);
  backend.capacity = 1;
  tx.add([withHdr(frame(64))], []);
  tx.add([withHdr(frame(64))], []);
  tx.kick();
  t.equal(dev.stats().txBlocked, true);
  backend.port.closed('peer went away');
  t.equal(dev.stats().txBlocked, false);
  t.equal(tx.reap().length, 2);
  t.equal(dev.stats().txDropped, 1);
  t.end();
});

t.test('frames held across a driver reset reach the new driver', (t) => {
  const { backend, h } = setup();
  t.teardown(h.close);
  backend.port.deliver(frame(64, 7));
  h.driver.negotiate();
  const rx = h.driver.setupQueue(RX_QUEUE, { size: 8 });
  h.driver.setupQueue(TX_QUEUE, { size: 8 });
  h.driver.driverOk();
  rx.add([], [2048]);
  rx.kick();
  const [u] = rx.reap();
  t.equal(u!.data[NET_HDR_SIZE + 14], 7);
  t.end();
});

t.test('stress: random frames both ways with random chain layouts, checksums match', (t) => {
  const { backend, dev, h, rx, tx } = setup({ queueSize: 64, slotSize: 4096, rxQueueLimit: 1000, rxHighWater: 1000 });
  t.teardown(h.close);
  const sentHash = createHash('sha256');
  const gotHash = createHash('sha256');
  const delivered = createHash('sha256');
  const received = createHash('sha256');
  let rxFrames = 0;
  let seed = 12345;
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  for (let round = 0; round < 200; round++) {
    // guest → backend
    const n = 1 + rnd(8);
    for (let i = 0; i < n; i++) {
      const f = frame(ETH_HEADER_SIZE + rnd(1500));
      sentHash.update(f);
      const w = withHdr(f);
      const cuts = [...new Set(Array.from({ length: rnd(4) }, () => 1 + rnd(w.length - 1)))].sort((a, b) => a - b);
      const parts: Buffer[] = [];
      let at = 0;
      for (const c of cuts) { parts.push(w.subarray(at, c)); at = c; }
      parts.push(w.subarray(at));
      tx.add(parts, [], { indirect: rnd(2) === 1 });
    }
    tx.kick();
    tx.reap();
    // backend → guest
    const m = rnd(6);
    for (let i = 0; i < m; i++) {
      const f = frame(ETH_HEADER_SIZE + rnd(1500));
      delivered.update(f);
      backend.port.deliver(f);
    }
    while (rx.freeDescriptors > 2 && rnd(3) !== 0) rx.add([], [1024, 1024]);
    rx.kick();
    for (const u of rx.reap()) {
      received.update(u.data.subarray(NET_HDR_SIZE));
      rxFrames++;
    }
  }
  while (dev.stats().rxQueued > 0) {
    while (rx.freeDescriptors >= 2) rx.add([], [1024, 1024]);
    rx.kick();
    for (const u of rx.reap()) { received.update(u.data.subarray(NET_HDR_SIZE)); rxFrames++; }
  }
  for (const f of backend.sent) gotHash.update(f);
  t.equal(gotHash.digest('hex'), sentHash.digest('hex'), 'tx checksum');
  t.equal(received.digest('hex'), delivered.digest('hex'), 'rx checksum');
  t.equal(dev.stats().rxDropped + dev.stats().rxTooBig + dev.stats().txDropped, 0);
  t.ok(rxFrames > 100);
  t.end();
});

t.test('a legacy driver (no VERSION_1, as behind QEMU virtio-mmio) uses the 10-byte header', (t) => {
  const backend = new TestBackend();
  const inner = new NetDevice({ backend });
  // The MMIO transport insists on VERSION_1; present the device a context without it.
  const legacy: VirtioDevice = {
    deviceId: inner.deviceId, features: inner.features, queueSizes: inner.queueSizes,
    readConfig: (o, d) => { inner.readConfig(o, d); }, writeConfig: () => {},
    activate: (ctx) => { inner.activate(Object.create(ctx, { features: { value: ctx.features & ~Feature.VERSION_1 } }) as DeviceContext); },
    queueNotify: (i) => { inner.queueNotify(i); }, reset: () => { inner.reset(); },
  };
  const h = createHarness(legacy);
  t.teardown(h.close);
  h.driver.negotiate();
  const rx = h.driver.setupQueue(RX_QUEUE, { size: 8 });
  const tx = h.driver.setupQueue(TX_QUEUE, { size: 8 });
  h.driver.driverOk();
  const f = frame(60);
  tx.add([Buffer.concat([Buffer.alloc(LEGACY_NET_HDR_SIZE), f])], []);
  tx.kick();
  t.equal(backend.sent[0]!.toString('hex'), f.toString('hex'));
  rx.add([], [1024]);
  rx.kick();
  backend.port.deliver(f);
  const [u] = rx.reap();
  t.equal(u!.len, LEGACY_NET_HDR_SIZE + 60);
  t.equal(Buffer.from(u!.data).toString('hex'), '00'.repeat(LEGACY_NET_HDR_SIZE) + f.toString('hex'), 'zeroed header, no num_buffers');
  t.end();
});
