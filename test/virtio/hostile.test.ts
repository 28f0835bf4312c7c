// A malicious guest writes whatever it likes into its rings. Every case must end in
// DEVICE_NEEDS_RESET with a reason, a config interrupt, no exception, and no chain
// reaching the device.
import t from 'tap';
import { Desc, Feature, Interrupt, Status } from '../../src/virtio/constants.js';
import { createHarness } from '../support/virtio/harness.js';
import type { DriverQueue } from '../support/virtio/driver.js';
import type { GuestMemory } from '../../src/memory/guest-memory.js';
import { RecordingDevice } from './recording-device.js';

const { NEXT, WRITE, INDIRECT } = Desc;
const GiB = 1024 * 1024 * 1024;

interface Case {
  name: string;
  reason: RegExp;
  features?: bigint;
  memorySize?: number;
  /** Write the hostile ring contents; the test kicks afterwards. */
  program: (q: DriverQueue, ram: number, mem: GuestMemory) => void;
}

const cases: Case[] = [
  { name: 'descriptor loop', reason: /loop/, program: (q) => {
    q.writeDesc(0, q.slot(0), 8, NEXT, 1);
    q.writeDesc(1, q.slot(1), 8, NEXT, 0);
    q.publish(0);
  } },
  { name: 'self loop', reason: /loop/, program: (q) => {
    q.writeDesc(3, q.slot(3), 8, NEXT, 3);
    q.publish(3);
  } },
  { name: 'chain longer than the queue (all descriptors then back)', reason: /loop/, program: (q) => {
    for (let i = 0; i < q.size; i++) q.writeDesc(i, q.slot(i), 1, NEXT, (i + 1) % q.size);
    q.publish(0);
  } },
  { name: 'next out of range', reason: /next 9 is outside/, program: (q) => {
    q.writeDesc(0, q.slot(0), 8, NEXT, 9);
    q.publish(0);
  } },
  { name: 'head out of range', reason: /head 8/, program: (q) => { q.publish(8); } },
  { name: 'head far out of range', reason: /head 65535/, program: (q) => { q.publish(0xffff); } },
  { name: 'avail idx jumps past the queue size', reason: /more than the queue size/, program: (q) => {
    q.writeDesc(0, q.slot(0), 8, 0, 0);
    q.setAvailIdx(9);
  } },
  { name: 'avail idx goes backwards', reason: /more than the queue size/, program: (q) => { q.setAvailIdx(0xffff); } },
  { name: 'buffer outside RAM', reason: /outside RAM/, program: (q, ram) => {
    q.writeDesc(0, ram, 8, 0, 0);
    q.publish(0);
  } },
  { name: 'buffer straddles end of RAM', reason: /outside RAM/, program: (q, ram) => {
    q.writeDesc(0, ram - 4, 8, WRITE, 0);
    q.publish(0);
  } },
  { name: 'length overflows the address space', reason: /outside RAM/, program: (q) => {
    q.writeDesc(0, q.slot(0), 0xffffffff, 0, 0);
    q.publish(0);
  } },
  { name: 'address above 2^53', reason: /not RAM/, program: (q) => {
    q.writeDesc(0, 0xffff_ffff_ffff_f000n, 8, 0, 0);
    q.publish(0);
  } },
  { name: 'address in the 2^32..2^53 range', reason: /outside RAM/, program: (q) => {
    q.writeDesc(0, 0x1_0000_0000n, 8, 0, 0);
    q.publish(0);
  } },
  { name: 'total chain length over 4 GiB', reason: /longer than 4 GiB/, memorySize: GiB, program: (q) => {
    for (let i = 0; i < 5; i++) q.writeDesc(i, 0, GiB - 1, i < 4 ? NEXT : 0, i + 1);
    q.publish(0);
  } },
  { name: 'readable after writable', reason: /readable after a writable/, program: (q) => {
    q.writeDesc(0, q.slot(0), 8, WRITE | NEXT, 1);
    q.writeDesc(1, q.slot(1), 8, 0, 0);
    q.publish(0);
  } },
  { name: 'indirect inside indirect', reason: /inside an indirect table/, program: (q, _ram, mem) => {
    // Entry 0 of the indirect table is itself INDIRECT.
    const table = q.addrs.indirect;
    mem.writeU32(table, table + 64);
    mem.writeU32(table + 4, 0);
    mem.writeU32(table + 8, 16);
    mem.writeU16(table + 12, INDIRECT);
    mem.writeU16(table + 14, 0);
    q.writeDesc(0, table, 16, INDIRECT, 0);
    q.publish(0);
  } },
  { name: 'loop inside an indirect table', reason: /loop/, program: (q, _ram, mem) => {
    const table = q.addrs.indirect;
    for (let k = 0; k < 2; k++) {
      mem.writeU32(table + 16 * k, q.slot(k));
      mem.writeU32(table + 16 * k + 4, 0);
      mem.writeU32(table + 16 * k + 8, 4);
      mem.writeU16(table + 16 * k + 12, NEXT);
      mem.writeU16(table + 16 * k + 14, 1 - k);
    }
    q.writeDesc(0, table, 32, INDIRECT, 0);
    q.publish(0);
  } },
  { name: 'indirect and next together', reason: /both INDIRECT and NEXT/, program: (q) => {
    q.writeDesc(0, q.addrs.indirect, 16, INDIRECT | NEXT, 1);
    q.publish(0);
  } },
  { name: 'indirect length not a multiple of 16', reason: /not a multiple of 16/, program: (q) => {
    q.writeDesc(0, q.addrs.indirect, 20, INDIRECT, 0);
    q.publish(0);
  } },
  { name: 'indirect length zero', reason: /not a multiple of 16/, program: (q) => {
    q.writeDesc(0, q.addrs.indirect, 0, INDIRECT, 0);
    q.publish(0);
  } },
  { name: 'indirect table outside RAM', reason: /indirect table .* outside RAM/, program: (q, ram) => {
    q.writeDesc(0, ram - 16, 32, INDIRECT, 0);
    q.publish(0);
  } },
];

for (const c of cases) {
  t.test(c.name, (t) => {
    const dev = new RecordingDevice(8);
    const h = createHarness(dev, c.memorySize !== undefined ? { memorySize: c.memorySize } : {});
    t.teardown(h.close);
    h.driver.negotiate(c.features ?? (Feature.VERSION_1 | Feature.RING_INDIRECT_DESC | Feature.RING_EVENT_IDX));
    const q = h.driver.setupQueue(0);
    h.driver.driverOk();
    c.program(q, h.memory.size, h.memory);
    t.doesNotThrow(() => q.kick(true));
    t.match(h.transport.needsResetReason, c.reason, 'reason');
    t.ok(h.driver.status & Status.DEVICE_NEEDS_RESET, 'DEVICE_NEEDS_RESET');
    t.equal(h.driver.ackInterrupt() & Interrupt.CONFIG_CHANGE, Interrupt.CONFIG_CHANGE, 'config interrupt');
    t.equal(dev.seen.length, 0, 'device saw no chain');
    // A reset brings it back.
    h.driver.negotiate();
    const q2 = h.driver.setupQueue(0);
    h.driver.driverOk();
    q2.add([Buffer.from('ok')], [2]);
    q2.kick();
    t.equal(q2.reap().length, 1, 'works after reset');
    t.end();
  });
}

t.test('a valid chain before the bad one is served; nothing after', (t) => {
  const dev = new RecordingDevice(8);
  const h = createHarness(dev);
  t.teardown(h.close);
  h.driver.negotiate();
  const q = h.driver.setupQueue(0);
  h.driver.driverOk();
  q.add([Buffer.from('a')], [1]);
  q.writeDesc(5, q.slot(5), 1, NEXT, 5);
  q.publish(5);
  q.add([Buffer.from('b')], [1]);
  q.kick(true);
  t.equal(dev.seen.length, 1);
  t.match(h.transport.needsResetReason, /loop/);
  t.end();
});

t.test('an indirect table only 8-byte aligned is taken (Linux kmalloc hands out such tables)', (t) => {
  const dev = new RecordingDevice(8);
  const h = createHarness(dev);
  t.teardown(h.close);
  h.driver.negotiate(Feature.VERSION_1 | Feature.RING_INDIRECT_DESC | Feature.RING_EVENT_IDX);
  const q = h.driver.setupQueue(0);
  h.driver.driverOk();
  const table = q.addrs.indirect + 8;
  const data = q.slot(0);
  h.memory.write(data, Buffer.from('aligned-8'));
  // One readable descriptor in the table: 9 bytes at `data`.
  h.memory.writeU32(table, data);
  h.memory.writeU32(table + 4, 0);
  h.memory.writeU32(table + 8, 9);
  h.memory.writeU16(table + 12, 0);
  h.memory.writeU16(table + 14, 0);
  q.writeDesc(0, table, 16, INDIRECT, 0);
  q.publish(0);
  q.kick();
  t.equal(dev.seen.length, 1, 'the device got the chain');
  t.equal(Buffer.from(dev.seen[0]!.readable[0]!).toString(), 'aligned-8');
  t.end();
});
