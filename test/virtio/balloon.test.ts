// virtio-balloon with free page reporting, driven by the software driver over real
// anonymous guest RAM: feature negotiation, pages really released on the host (RSS
// measured), hostile chains refused with nothing discarded, and the host's target.
import { readFileSync } from 'node:fs';
import t, { type Test } from 'tap';
import { BalloonDevice, BalloonFeature, BalloonQueue, checkRange } from '../../src/virtio/balloon/index.js';
import { Desc, Feature, Interrupt, Reg, Status } from '../../src/virtio/constants.js';
import { MmioTransport } from '../../src/virtio/mmio.js';
import { CountingInterrupt, SoftwareDriver, type DriverQueue } from '../support/virtio/driver.js';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import { MMIO_GAP_START } from '../../src/memory/layout.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const { NEXT, WRITE, INDIRECT } = Desc;
/** Rings and driver scratch live below this; the pages tests discard live above it. */
const ARENA_END = 8 * MiB;

interface Rig {
  device: BalloonDevice;
  memory: GuestMemory;
  driver: SoftwareDriver;
  irq: CountingInterrupt;
  transport: MmioTransport;
  internalErrors: unknown[];
}

function rig(t: Test, memorySize = 16 * MiB): Rig {
  const memory = GuestMemory.anonymous(memorySize);
  const device = new BalloonDevice({ memory });
  const irq = new CountingInterrupt();
  const internalErrors: unknown[] = [];
  const transport = new MmioTransport({ device, memory, interrupt: irq, onInternalError: (e) => internalErrors.push(e) });
  const driver = new SoftwareDriver(transport, memory, { arenaBase: 0x10000, arenaSize: ARENA_END - 0x10000 });
  t.teardown(() => { transport.reset(); memory.close(); });
  return { device, memory, driver, irq, transport, internalErrors };
}

/** Negotiates everything offered and sets up inflate, deflate and the reporting queue at `reporting`. */
function live(r: Rig, reporting: number = BalloonQueue.REPORTING_COMPACT): { inflate: DriverQueue; deflate: DriverQueue; report: DriverQueue } {
  r.driver.negotiate();
  const inflate = r.driver.setupQueue(BalloonQueue.INFLATE, { slotSize: 1024 });
  const deflate = r.driver.setupQueue(BalloonQueue.DEFLATE, { slotSize: 1024 });
  const report = r.driver.setupQueue(reporting, { slotSize: 256 });
  r.driver.driverOk();
  return { inflate, deflate, report };
}

/**
 * Resident bytes of the host mapping that holds guest RAM, from /proc/self/smaps: the
 * process's VmRSS also moves with the JS heap and the test runner, which once made a
 * 64 MiB touch look like 55 MiB.
 */
function guestRssBytes(mem: GuestMemory): number {
  const host = mem.regions[0]!.hostAddress;
  let inside = false;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const vma = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (vma !== null) {
      inside = BigInt(`0x${vma[1]}`) <= host && host < BigInt(`0x${vma[2]}`);
      continue;
    }
    const rss = inside ? /^Rss:\s+(\d+) kB$/.exec(line) : null;
    if (rss !== null) return Number(rss[1]) * 1024;
  }
  throw new Error('the guest RAM mapping is not in /proc/self/smaps');
}

/** Posts one chain of guest ranges (device-writable, as Linux posts reports) by hand. */
function postRanges(q: DriverQueue, ranges: ReadonlyArray<[number, number]>, flags: number = WRITE): void {
  ranges.forEach(([addr, len], k) => {
    const last = k === ranges.length - 1;
    q.writeDesc(k, addr, len, flags | (last ? 0 : NEXT), last ? 0 : k + 1);
  });
  q.publish(0);
  q.kick(true);
}

/** Posts a page frame number array (device-readable) as one chain. */
function postPfns(r: Rig, q: DriverQueue, pfns: readonly number[], byteLen = pfns.length * 4): void {
  const at = r.driver.alloc(Math.max(byteLen, 4), 4);
  const bytes = new Uint8Array(Math.max(byteLen, 4));
  const view = new DataView(bytes.buffer);
  pfns.forEach((p, i) => { if (4 * i + 4 <= bytes.length) view.setUint32(4 * i, p >>> 0, true); });
  r.memory.write(at, bytes);
  q.writeDesc(0, at, byteLen, 0, 0);
  q.publish(0);
  q.kick(true);
}

function needsReset(r: Rig): boolean {
  return (r.driver.status & Status.DEVICE_NEEDS_RESET) !== 0;
}

/** Every byte of [addr, addr+len) equals `value`. */
function allBytes(mem: GuestMemory, addr: number, len: number, value: number): boolean {
  const v = mem.slice(addr, len);
  for (let i = 0; i < v.length; i += 512) if (v[i] !== value) return false;
  return v[v.length - 1] === value;
}

t.test('features: VERSION_1, PAGE_REPORTING and DEFLATE_ON_OOM offered; no stats queue', (t) => {
  const r = rig(t);
  t.equal(r.driver.readReg(Reg.DeviceId), 5, 'device id 5 (§5.5.1)');
  const offered = r.driver.deviceFeatures();
  t.ok(offered & Feature.VERSION_1, 'VERSION_1');
  t.ok(offered & BalloonFeature.PAGE_REPORTING, 'PAGE_REPORTING (bit 5)');
  t.ok(offered & BalloonFeature.DEFLATE_ON_OOM, 'DEFLATE_ON_OOM');
  t.notOk(offered & BalloonFeature.STATS_VQ, 'no STATS_VQ');
  t.notOk(offered & BalloonFeature.MUST_TELL_HOST, 'no MUST_TELL_HOST');
  t.notOk(offered & BalloonFeature.FREE_PAGE_HINT, 'no FREE_PAGE_HINT');
  const agreed = r.driver.negotiate(Feature.VERSION_1 | BalloonFeature.PAGE_REPORTING | BalloonFeature.DEFLATE_ON_OOM);
  t.equal(agreed, Feature.VERSION_1 | BalloonFeature.PAGE_REPORTING | BalloonFeature.DEFLATE_ON_OOM);
  const max = (i: number): number => { r.driver.writeReg(Reg.QueueSel, i); return r.driver.readReg(Reg.QueueNumMax); };
  t.ok(max(0) > 0 && max(1) > 0, 'inflateq and deflateq');
  t.ok(max(2) >= 32, 'queue 2: reporting as Linux numbers it (at least PAGE_REPORTING_CAPACITY)');
  t.equal(max(3), 0, 'queue 3 (free_page_vq) does not exist');
  t.ok(max(4) >= 32, 'queue 4: reporting as §5.5.2 numbers it');
  t.equal(max(5), 0);
  t.test('a driver that also wants STATS_VQ is refused FEATURES_OK', (t) => {
    r.driver.reset();
    r.driver.addStatus(Status.ACKNOWLEDGE | Status.DRIVER);
    r.driver.writeDriverFeatures(Feature.VERSION_1 | BalloonFeature.STATS_VQ);
    r.driver.addStatus(Status.FEATURES_OK);
    t.equal(r.driver.status & Status.FEATURES_OK, 0);
    t.end();
  });
  t.end();
});

t.test('a reported 64 MiB range is released on the host (RSS drops) and reads back as zeros', (t) => {
  const size = 64 * MiB;
  const r = rig(t, ARENA_END + size + 1 * MiB);
  const { report } = live(r);
  const base = ARENA_END;
  const before = guestRssBytes(r.memory);
  r.memory.fill(base - PAGE, size + 2 * PAGE, 0xab); // every page touched, plus a sentinel page each side
  const touched = guestRssBytes(r.memory);
  t.ok(touched - before > size * 0.9, `touching 64 MiB raised RSS by ${((touched - before) / MiB).toFixed(1)} MiB`);
  // As Linux reports: runs of 4 MiB (order-10 blocks), 16 in one chain.
  const ranges: Array<[number, number]> = [];
  for (let a = base; a < base + size; a += 4 * MiB) ranges.push([a, 4 * MiB]);
  postRanges(report, ranges);
  t.equal(report.usedIdx(), 1, 'the report chain came back used');
  const after = guestRssBytes(r.memory);
  const released = touched - after;
  t.ok(released > size * 0.9, `reporting released ${(released / MiB).toFixed(1)} MiB of RSS (${(touched / MiB).toFixed(1)} → ${(after / MiB).toFixed(1)} MiB)`);
  t.comment(`guest RAM resident before touch ${(before / MiB).toFixed(1)} MiB, after touch ${(touched / MiB).toFixed(1)} MiB, after report ${(after / MiB).toFixed(1)} MiB`);
  t.ok(allBytes(r.memory, base, size, 0), 'reported pages read back as zeros');
  t.ok(allBytes(r.memory, base - PAGE, PAGE, 0xab), 'the page before the range is untouched');
  t.ok(allBytes(r.memory, base + size, PAGE, 0xab), 'the page after the range is untouched');
  t.equal(r.device.stats().reportedBytes, size);
  t.notOk(needsReset(r));
  t.ok(r.irq.count >= 1, 'used-buffer interrupt');
  t.same(r.internalErrors, []);
  t.end();
});

t.test('reporting works on queue 4 too (the spec numbering)', (t) => {
  const r = rig(t);
  const { report } = live(r, BalloonQueue.REPORTING);
  r.memory.fill(ARENA_END, 2 * MiB, 0x5a);
  postRanges(report, [[ARENA_END, 2 * MiB]]);
  t.equal(report.usedIdx(), 1);
  t.ok(allBytes(r.memory, ARENA_END, 2 * MiB, 0));
  t.equal(r.device.stats().reportedBytes, 2 * MiB);
  t.end();
});

t.test('inflate discards the named pages (sorted, duplicates merged); deflate gives them back', (t) => {
  const r = rig(t);
  const { inflate, deflate } = live(r);
  const first = ARENA_END / PAGE;
  r.memory.fill(ARENA_END, 16 * PAGE, 0x77);
  // Out of order, one duplicate, one gap (page 5 stays).
  const pfns = [first + 3, first + 1, first + 2, first, first + 4, first + 2, first + 6];
  postPfns(r, inflate, pfns);
  t.equal(inflate.usedIdx(), 1);
  t.ok(allBytes(r.memory, ARENA_END, 5 * PAGE, 0), 'pages 0..4 zeroed');
  t.ok(allBytes(r.memory, ARENA_END + 5 * PAGE, PAGE, 0x77), 'page 5 was not named: kept');
  t.ok(allBytes(r.memory, ARENA_END + 6 * PAGE, PAGE, 0), 'page 6 zeroed');
  t.ok(allBytes(r.memory, ARENA_END + 7 * PAGE, 9 * PAGE, 0x77), 'pages after kept');
  t.equal(r.device.stats().inflatedPages, 6);
  postPfns(r, deflate, pfns);
  t.equal(deflate.usedIdx(), 1);
  t.equal(r.device.stats().deflatedPages, 6);
  r.memory.fill(ARENA_END, PAGE, 1);
  t.ok(allBytes(r.memory, ARENA_END, PAGE, 1), 'a deflated page is usable again');
  t.notOk(needsReset(r));
  t.end();
});

t.test('setTarget: num_pages reads back and a live driver gets a config interrupt', (t) => {
  const r = rig(t);
  r.device.setTarget(100);
  t.equal(r.irq.count, 0, 'no interrupt before the driver is live');
  const cfg = (): DataView => { const b = r.driver.readConfig(0, 8); return new DataView(b.buffer); };
  t.equal(cfg().getUint32(0, true), 100, 'num_pages');
  live(r);
  const gen = r.driver.readReg(Reg.ConfigGeneration);
  r.driver.ackInterrupt();
  r.device.setTarget(4096);
  t.equal(r.irq.count, 1, 'one interrupt');
  t.equal(r.driver.ackInterrupt() & Interrupt.CONFIG_CHANGE, Interrupt.CONFIG_CHANGE, 'config change bit');
  t.not(r.driver.readReg(Reg.ConfigGeneration), gen, 'config generation moved');
  t.equal(cfg().getUint32(0, true), 4096);
  t.equal(r.device.targetPages, 4096);
  r.device.setTarget(4096);
  t.equal(r.irq.count, 1, 'the same target again: no interrupt');
  // The driver writes actual (one 32-bit write, or bytes); num_pages is read-only for it.
  r.driver.transport.write(Reg.Config + 4, new Uint8Array([0x10, 0x02, 0, 0]));
  r.driver.transport.write(Reg.Config + 0, new Uint8Array([9, 9, 9, 9]));
  t.equal(r.device.actualPages, 0x210);
  t.equal(cfg().getUint32(4, true), 0x210);
  t.equal(r.device.targetPages, 4096, 'num_pages not driver-writable');
  for (const bad of [-1, 1.5, 2 ** 32, Number.NaN]) {
    t.throws(() => r.device.setTarget(bad), { code: 'INVALID_ARGUMENT' }, `setTarget(${bad})`);
  }
  r.driver.reset();
  t.equal(r.device.actualPages, 0, 'driver reset empties actual');
  t.equal(r.device.targetPages, 4096, 'the host target survives a driver reset');
  t.end();
});

t.test('RAM above the MMIO hole: reports there work; the hole is refused', (t) => {
  const GiB = 1024 * MiB;
  const high = 4 * GiB; // RAM past 0xd000_0000 continues at 4 GiB
  const mk = (): Rig => rig(t, MMIO_GAP_START + 64 * MiB);
  t.test('a report at 4 GiB (the second region) is discarded', (t) => {
    const r = mk();
    const { report } = live(r);
    r.memory.fill(high, 2 * MiB, 0x33);
    postRanges(report, [[high, MiB], [MMIO_GAP_START - MiB, MiB]]);
    t.equal(report.usedIdx(), 1);
    t.ok(allBytes(r.memory, high, MiB, 0), 'first MiB at 4 GiB zeroed');
    t.ok(allBytes(r.memory, high + MiB, MiB, 0x33), 'the next MiB kept');
    t.notOk(needsReset(r));
    t.end();
  });
  t.test('inflating a page of the hole is refused', (t) => {
    const r = mk();
    const { inflate } = live(r);
    r.memory.fill(high, PAGE, 0x33);
    postPfns(r, inflate, [high / PAGE, MMIO_GAP_START / PAGE + 16]);
    t.ok(needsReset(r));
    t.match(r.transport.needsResetReason ?? '', /MMIO hole/);
    t.ok(allBytes(r.memory, high, PAGE, 0x33), 'the good page of the refused chain was kept');
    t.end();
  });
  t.test('pages on both sides of the hole are discarded', (t) => {
    const r = mk();
    const { inflate } = live(r);
    r.memory.fill(MMIO_GAP_START - PAGE, PAGE, 0x44);
    r.memory.fill(high, PAGE, 0x44);
    postPfns(r, inflate, [MMIO_GAP_START / PAGE - 1, high / PAGE]);
    t.notOk(needsReset(r));
    t.ok(allBytes(r.memory, MMIO_GAP_START - PAGE, PAGE, 0));
    t.ok(allBytes(r.memory, high, PAGE, 0));
    t.equal(r.device.stats().inflatedPages, 2);
    t.end();
  });
  t.end();
});

t.test('checkRange: alignment, emptiness, the MMIO hole, RAM bounds', (t) => {
  const everything = { contains: () => true };
  const nothing = { contains: () => false };
  t.equal(checkRange(everything, 0, PAGE), null);
  t.match(checkRange(everything, 1, PAGE), /aligned/);
  t.match(checkRange(everything, 0, PAGE + 1), /aligned/);
  t.match(checkRange(everything, 0, 0), /empty/);
  t.match(checkRange(everything, -PAGE, PAGE), /empty or not a number/);
  t.match(checkRange(everything, Number.MAX_SAFE_INTEGER, PAGE), /empty or not a number|aligned/);
  t.match(checkRange(everything, MMIO_GAP_START - PAGE, 2 * PAGE), /MMIO hole/, 'even if some RAM claimed it');
  t.match(checkRange(everything, MMIO_GAP_START + PAGE, PAGE), /MMIO hole/);
  t.match(checkRange(nothing, 0, PAGE), /outside guest RAM/);
  t.end();
});

interface HostileCase {
  name: string;
  reason: RegExp;
  /** Post the hostile chain; `sentinel` is a page range the case would wrongly discard. */
  post: (r: Rig, q: { inflate: DriverQueue; deflate: DriverQueue; report: DriverQueue }, ram: number) => void;
}

const SENT = ARENA_END; // 1 MiB of sentinel pages filled with 0xee before each case
const hostile: HostileCase[] = [
  { name: 'report: an unaligned range after a good one (nothing of the chain discarded)', reason: /not 4 KiB-aligned/, post: (_r, q) => {
    postRanges(q.report, [[SENT, 64 * 1024], [SENT + 64 * 1024 + 512, PAGE]]);
  } },
  { name: 'report: a length that is not whole pages', reason: /not 4 KiB-aligned/, post: (_r, q) => {
    postRanges(q.report, [[SENT, PAGE + 1]]);
  } },
  { name: 'report: readable empty buffer', reason: /empty/, post: (_r, q) => {
    postRanges(q.report, [[SENT, 0]], 0);
  } },
  { name: 'report: range beyond the end of RAM (the queue refuses it)', reason: /outside RAM/, post: (_r, q, ram) => {
    postRanges(q.report, [[SENT, PAGE], [ram - PAGE, 2 * PAGE]]);
  } },
  { name: 'report: length that wraps 32 bits', reason: /outside RAM/, post: (_r, q) => {
    postRanges(q.report, [[SENT, 0xffff_f000]]);
  } },
  { name: 'report: more buffers than one chain may carry', reason: /more than 256/, post: (r, q) => {
    const table = r.driver.alloc(300 * 16, 16);
    for (let k = 0; k < 300; k++) {
      const at = table + 16 * k;
      r.memory.writeU32(at, SENT + (k % 200) * PAGE);
      r.memory.writeU32(at + 4, 0);
      r.memory.writeU32(at + 8, PAGE);
      r.memory.writeU16(at + 12, WRITE | (k < 299 ? NEXT : 0));
      r.memory.writeU16(at + 14, k + 1);
    }
    q.report.writeDesc(0, table, 300 * 16, INDIRECT, 0);
    q.report.publish(0);
    q.report.kick(true);
  } },
  { name: 'inflate: page frame beyond RAM after good ones', reason: /outside guest RAM/, post: (r, q, ram) => {
    postPfns(r, q.inflate, [SENT / PAGE, SENT / PAGE + 1, ram / PAGE]);
  } },
  { name: 'inflate: page frame 0xffffffff (16 TiB)', reason: /outside guest RAM/, post: (r, q) => {
    postPfns(r, q.inflate, [SENT / PAGE, 0xffff_ffff]);
  } },
  { name: 'inflate: page frame in the MMIO hole', reason: /MMIO hole|outside guest RAM/, post: (r, q) => {
    postPfns(r, q.inflate, [SENT / PAGE, MMIO_GAP_START / PAGE]);
  } },
  { name: 'inflate: array not whole u32s', reason: /not a non-empty array of u32/, post: (r, q) => {
    postPfns(r, q.inflate, [SENT / PAGE], 3);
  } },
  { name: 'inflate: huge count', reason: /more than 16384/, post: (r, q) => {
    postPfns(r, q.inflate, Array.from({ length: 16385 }, (_, i) => SENT / PAGE + (i % 256)));
  } },
  { name: 'deflate: page frame beyond RAM', reason: /outside guest RAM/, post: (r, q, ram) => {
    postPfns(r, q.deflate, [ram / PAGE + 7]);
  } },
];

for (const c of hostile) {
  t.test(`hostile: ${c.name}`, (t) => {
    const ram = 16 * MiB;
    const r = rig(t, ram);
    const queues = live(r);
    r.memory.fill(SENT, MiB, 0xee);
    r.memory.fill(ram - PAGE, PAGE, 0xee);
    t.doesNotThrow(() => c.post(r, queues, ram));
    t.ok(needsReset(r), 'DEVICE_NEEDS_RESET');
    t.equal(r.driver.ackInterrupt() & Interrupt.CONFIG_CHANGE, Interrupt.CONFIG_CHANGE, 'config interrupt tells the driver');
    t.ok(allBytes(r.memory, SENT, MiB, 0xee), 'nothing discarded');
    t.ok(allBytes(r.memory, ram - PAGE, PAGE, 0xee), 'last page of RAM kept');
    t.equal(r.device.stats().inflatedPages + r.device.stats().reportedBytes, 0);
    t.same(r.internalErrors, [], 'no exception escaped the device');
    t.match(r.transport.needsResetReason ?? '', c.reason, 'the reason names the fault');
    t.end();
  });
}
