// Fuzz target: random and mutated rings against the MMIO transport and real devices.
// Each iteration brings a device up through the registers with random features and
// queue sizes, posts valid traffic, then corrupts descriptors, ring indices and
// registers the way a hostile guest could, and kicks. It fails when an exception
// escapes (other than the typed VIRTQUEUE_INVALID), when a device throws inside the
// transport, when anything asks for memory outside guest RAM, or when bytes just
// outside guest RAM change.
import { TsiboxError } from '../../../src/errors.js';
import { ConsoleDevice } from '../../../src/virtio/console/device.js';
import { Desc, Feature, Reg } from '../../../src/virtio/constants.js';
import type { VirtioDevice } from '../../../src/virtio/device.js';
import { MmioTransport } from '../../../src/virtio/mmio.js';
import { RngDevice } from '../../../src/virtio/rng.js';
import { CountingInterrupt, SoftwareDriver, INDIRECT_MAX, type DriverQueue } from './driver.js';
import { NullDevice } from './null-device.js';
import { guardedMemory } from './guarded-memory.js';
import type { GuestMemory } from '../../../src/memory/guest-memory.js';
import type { FuzzTarget } from '../fuzz-target.js';
import { randomBytes, type Prng } from '../prng.js';

const RAM = 1 << 20;

interface Rig {
  name: string;
  device: VirtioDevice;
  transport: MmioTransport;
}

export function virtqueueTarget(): FuzzTarget {
  const { memory, checked, violations, guardsIntact } = guardedMemory(RAM);
  const internal: unknown[] = [];
  const irq = new CountingInterrupt();
  const rigs: Rig[] = [
    ['rng', new RngDevice({ queueSize: 32 })],
    ['null', new NullDevice({ queueSize: 16, queues: 2 })],
    ['console', new ConsoleDevice({ queueSize: 8 })],
  ].map(([name, device]) => ({
    name: name as string,
    device: device as VirtioDevice,
    transport: new MmioTransport({ device: device as VirtioDevice, memory: checked, interrupt: irq, onInternalError: (e) => internal.push(e) }),
  }));
  // Drain console output so its streams never hold memory across iterations.
  const con = rigs[2]!.device as ConsoleDevice;
  for (const p of con.ports) p.output.resume();

  return {
    iterate(rng) {
      violations.length = 0;
      internal.length = 0;
      const rig = rng.pick(rigs);
      try {
        drive(rng, rig, memory);
      } catch (err) {
        if (!(err instanceof TsiboxError && err.code === 'VIRTQUEUE_INVALID')) {
          return `${rig.name}: escaped exception: ${err instanceof Error ? err.stack ?? err.message : String(err)}`;
        }
      }
      if (internal.length > 0) {
        const e = internal[0];
        return `${rig.name}: device threw inside the transport: ${e instanceof Error ? e.stack ?? e.message : String(e)}`;
      }
      if (violations.length > 0) return `${rig.name}: access outside guest RAM: ${violations[0]}`;
      if (!guardsIntact()) return `${rig.name}: bytes outside guest RAM changed`;
      return null;
    },
    close() {
      for (const rig of rigs) rig.transport.reset();
      memory.close();
    },
  };
}

function drive(rng: Prng, rig: Rig, memory: GuestMemory): void {
  const driver = new SoftwareDriver(rig.transport, memory, { arenaBase: 0x1000, arenaSize: RAM - 0x1000, kick: rng.chance(0.5) ? 'register' : 'direct' });
  // Random features; VERSION_1 almost always (else FEATURES_OK is refused).
  let features = BigInt(rng.u32()) | (BigInt(rng.u32()) << 32n);
  if (rng.chance(0.95)) features |= Feature.VERSION_1;
  try {
    driver.negotiate(features);
  } catch {
    driver.writeReg(Reg.Status, 0);
    return;
  }
  const count = rig.device.queueSizes.length;
  const queues: DriverQueue[] = [];
  for (let i = 0; i < count; i++) {
    if (rng.chance(0.1)) continue;
    const max = rig.device.queueSizes[i]!;
    const size = rng.chance(0.05) ? rng.below(max * 2 + 1) : 1 << rng.below(Math.log2(max) + 1);
    try {
      queues.push(driver.setupQueue(i, { size, slotSize: 64 }));
    } catch {
      // Arena exhausted or refused size: leave the queue disabled.
    }
  }
  if (rng.chance(0.05)) randomRegisterWrites(rng, driver);
  driver.driverOk();

  const rounds = 1 + rng.below(3);
  for (let r = 0; r < rounds; r++) {
    for (const q of queues) postValid(rng, q);
    for (const q of queues) if (rng.chance(0.5)) mutate(rng, q, memory);
    if (rng.chance(0.05)) randomRegisterWrites(rng, driver);
    for (let k = 0; k < 3; k++) {
      const index = rng.chance(0.9) && queues.length > 0 ? rng.pick(queues).index : rng.below(0x10000);
      driver.kick(index);
    }
    for (const q of queues) if (rng.chance(0.3)) q.setUsedEvent(rng.u32());
  }
  if (rng.chance(0.5)) driver.ackInterrupt();
}

function postValid(rng: Prng, q: DriverQueue): void {
  if (q.size === 0) return;
  const n = rng.below(4);
  for (let i = 0; i < n; i++) {
    const outs = rng.below(3);
    const ins = rng.below(3);
    if (outs + ins === 0) continue;
    const out = Array.from({ length: outs }, () => randomBytes(rng, 1 + rng.below(12)));
    const inLens = Array.from({ length: ins }, () => 1 + rng.below(12));
    try {
      if (q.add(out, inLens, { indirect: rng.chance(0.3) && outs + ins <= INDIRECT_MAX }) === null) return;
    } catch {
      return;
    }
  }
}

/** Values a hostile guest would try first. */
function nasty(rng: Prng, size: number): number {
  return rng.pick([0, 1, size - 1, size, size + 1, 0xffff, 0x7fff, 0x8000, RAM - 1, RAM, RAM - 16, 0xffff_ffff, rng.u32()]);
}

function mutate(rng: Prng, q: DriverQueue, memory: GuestMemory): void {
  const a = q.addrs;
  if (a.size === 0) return;
  const edits = 1 + rng.below(4);
  for (let e = 0; e < edits; e++) {
    switch (rng.below(8)) {
      case 0: { // a whole random descriptor
        const i = rng.below(a.size);
        const addr = rng.chance(0.5) ? q.slot(rng.below(a.size)) : rng.chance(0.5) ? nasty(rng, a.size) : (BigInt(rng.u32()) << 32n) | BigInt(rng.u32());
        q.writeDesc(i, addr, rng.chance(0.5) ? rng.below(64) : nasty(rng, a.size), rng.below(8), rng.chance(0.7) ? rng.below(a.size) : nasty(rng, a.size));
        break;
      }
      case 1: // one field of a descriptor
        memory.writeU16(a.desc + Desc.SIZE * rng.below(a.size) + rng.pick([8, 12, 14]), nasty(rng, a.size) & 0xffff);
        break;
      case 2: // avail idx
        q.setAvailIdx(rng.chance(0.5) ? memory.readU16(a.avail + 2) + rng.below(a.size + 3) : nasty(rng, a.size));
        break;
      case 3: // an avail ring slot
        memory.writeU16(a.avail + 4 + 2 * rng.below(a.size), nasty(rng, a.size) & 0xffff);
        break;
      case 4: // a byte in an indirect table
        memory.writeU8(a.indirect + rng.below(a.size * INDIRECT_MAX * Desc.SIZE), rng.below(256));
        break;
      case 5: // avail flags
        memory.writeU16(a.avail, rng.below(4));
        break;
      case 6: // publish a random head
        q.publish(rng.chance(0.8) ? rng.below(a.size) : nasty(rng, a.size) & 0xffff);
        break;
      default: // random bytes anywhere in the descriptor table
        memory.writeU8(a.desc + rng.below(a.size * Desc.SIZE), rng.below(256));
    }
  }
}

function randomRegisterWrites(rng: Prng, driver: SoftwareDriver): void {
  const regs = [Reg.QueueSel, Reg.QueueNum, Reg.QueueReady, Reg.QueueDescLow, Reg.QueueDescHigh, Reg.QueueDriverLow,
    Reg.QueueDeviceLow, Reg.Status, Reg.InterruptAck, Reg.DriverFeatures, Reg.DriverFeaturesSel, Reg.DeviceFeaturesSel, 0x1fc, 0x104];
  for (let i = 0; i < 3; i++) driver.writeReg(rng.pick(regs), rng.chance(0.5) ? rng.below(16) : rng.u32());
  driver.readReg(rng.pick(regs));
}

