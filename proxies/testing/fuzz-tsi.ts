// Fuzz target `tsi`: a hostile guest against the vsock device and the TSI host. Each
// iteration sends random and mutated vsock packets (lying headers, wrong types, ops
// out of order, payload lengths past the buffers) and mutated TSI messages on the
// control, stream and datagram ports, then lets the device answer. The policy denies
// everything and the port map is empty, so no host network traffic can happen.
// Fails when an exception escapes, the device throws inside the transport, anything
// touches memory outside guest RAM, bytes outside guest RAM change, or the device
// holds more than its bounds (connections, queued bytes).
import { Feature } from '../../src/virtio/constants.js';
import { MmioTransport } from '../../src/virtio/mmio.js';
import { CountingInterrupt, SoftwareDriver, type DriverQueue } from '../../src/virtio/testing/driver.js';
import type { FuzzTarget, Prng } from '../../src/virtio/testing/fuzz-virtqueue.js';
import { guardedMemory, randomBytes } from '../../src/virtio/testing/guarded-memory.js';
import { EVENT_QUEUE, RX_QUEUE, TX_QUEUE, VsockDevice } from '../../src/virtio/vsock/device.js';
import { HEADER_SIZE, Op, VsockFeature, encodeHeader, type PacketHeader } from '../../src/virtio/vsock/header.js';
import { Policy } from '../../src/policy/index.js';
import { PortMap } from '../../src/portmap/index.js';
import { TsiHost } from '../tsi.js';
import {
  TsiOp, TsiPort, encodeConnect, encodeDgram, encodeDgramOpen, encodeHello, encodeListen, encodeSeqResult, header,
} from '../protocol.js';

const RAM = 8 << 20;
const MAX_CONNECTIONS = 64;
/** Driver resets (and a fresh negotiation) every this many iterations. */
const RESET_EVERY = 200;

export function tsiTarget(): FuzzTarget {
  const { memory, checked, violations, guardsIntact } = guardedMemory(RAM);
  const internal: unknown[] = [];
  const device = new VsockDevice({ queueSize: 64, maxConnections: MAX_CONNECTIONS, connectTimeoutMs: 60_000 });
  const host = new TsiHost({ device, policy: Policy.denyAll(), portMap: new PortMap(), timeoutMs: 60_000 });
  const transport = new MmioTransport({
    device, memory: checked, interrupt: new CountingInterrupt(), onInternalError: (e) => internal.push(e),
  });
  let driver: SoftwareDriver;
  let rx: DriverQueue;
  let tx: DriverQueue;
  let iteration = 0;
  const ports: number[] = [];

  const setup = (rng: Prng): void => {
    driver = new SoftwareDriver(transport, memory, { kick: 'direct' });
    const want = Feature.VERSION_1 | (rng.chance(0.5) ? Feature.RING_EVENT_IDX : 0n) | (rng.chance(0.8) ? VsockFeature.SEQPACKET : 0n);
    driver.negotiate(want);
    rx = driver.setupQueue(RX_QUEUE, { size: 64, slotSize: HEADER_SIZE + 4096 });
    tx = driver.setupQueue(TX_QUEUE, { size: 64, slotSize: HEADER_SIZE + 70_000 });
    const ev = driver.setupQueue(EVENT_QUEUE, { size: 8, slotSize: 16 });
    driver.driverOk();
    while (ev.add([], [8]) !== null) { /* fill */ }
    ev.kick(true);
    ports.length = 0;
  };

  return {
    iterate(rng: Prng): string | null {
      violations.length = 0;
      internal.length = 0;
      try {
        if (iteration % RESET_EVERY === 0) setup(rng);
        iteration++;
        // Keep some rx buffers posted (sometimes tiny ones).
        while (rx.freeDescriptors > 0 && rng.chance(0.9)) rx.add([], [rng.chance(0.05) ? rng.below(HEADER_SIZE + 1) + 1 : HEADER_SIZE + 4096]);
        if (rng.chance(0.5)) {
          for (const p of session(rng)) if (tx.freeDescriptors > 0) tx.add(p, []);
        } else {
          const n = 1 + rng.below(6);
          for (let i = 0; i < n; i++) {
            if (tx.freeDescriptors === 0) break;
            tx.add(packet(rng, ports), []);
          }
        }
        tx.kick(true);
        tx.reapCount();
        if (rng.chance(0.7)) driver.transport.notify(RX_QUEUE);
        rx.reapCount();
        if (rng.chance(0.01)) device.resetTransport();
      } catch (e) {
        return `exception: ${e instanceof Error ? e.stack ?? e.message : String(e)}`;
      }
      if (internal.length > 0) {
        const e = internal[0];
        return `device threw: ${e instanceof Error ? e.stack ?? e.message : String(e)}`;
      }
      if (violations.length > 0) return `access outside guest RAM: ${violations[0]}`;
      if (!guardsIntact()) return 'bytes outside guest RAM changed';
      const st = device.stats();
      if (st.connections > MAX_CONNECTIONS) return `connections ${st.connections} over the limit ${MAX_CONNECTIONS}`;
      if (st.bufferedToGuest > MAX_CONNECTIONS * 300 * 1024) return `device holds ${st.bufferedToGuest} bytes for the guest`;
      return null;
    },
    close(): void {
      host.close();
      transport.reset();
      memory.close();
    },
  };
}

const SERVICE_PORTS = [TsiPort.CONTROL, TsiPort.STREAM, TsiPort.DGRAM, 1, 0xffff_ffff];

/** One guest packet: header + payload, mostly plausible, often wrong in one field. */
function packet(rng: Prng, ports: number[]): Uint8Array[] {
  const srcPort = ports.length > 0 && rng.chance(0.7) ? rng.pick(ports) : 1000 + rng.below(64);
  if (!ports.includes(srcPort) && ports.length < 64) ports.push(srcPort);
  const payload = rng.chance(0.6) ? tsiMessage(rng) : randomBytes(rng, rng.below(200));
  const op = rng.chance(0.85) ? rng.pick([Op.REQUEST, Op.RW, Op.RW, Op.RW, Op.SHUTDOWN, Op.CREDIT_UPDATE, Op.CREDIT_REQUEST, Op.RST, Op.RESPONSE]) : rng.below(16);
  const h: PacketHeader = {
    srcCid: rng.chance(0.97) ? 3n : BigInt(rng.below(8)),
    dstCid: rng.chance(0.97) ? 2n : BigInt(rng.below(8)),
    srcPort,
    dstPort: rng.chance(0.9) ? rng.pick(SERVICE_PORTS) : rng.u32(),
    len: op === Op.RW ? payload.length : 0,
    type: rng.chance(0.9) ? rng.pick([1, 1, 2]) : rng.below(5),
    op,
    flags: rng.chance(0.8) ? rng.below(4) : rng.u32(),
    bufAlloc: rng.chance(0.8) ? 256 * 1024 : rng.u32(),
    fwdCnt: rng.chance(0.8) ? 0 : rng.u32(),
  };
  if (rng.chance(0.05)) h.len = rng.chance(0.5) ? rng.u32() : payload.length + 1 + rng.below(100);
  const hdr = new Uint8Array(HEADER_SIZE);
  encodeHeader(h, hdr);
  if (rng.chance(0.02)) return [hdr.subarray(0, rng.below(HEADER_SIZE))];
  return op === Op.RW || rng.chance(0.1) ? [hdr, payload] : [hdr];
}

let sessionPort = 20000;

/** A plausible conversation: REQUEST to a TSI service, then 1-3 messages, maybe a close. */
function session(rng: Prng): Uint8Array[][] {
  const srcPort = sessionPort++;
  if (sessionPort > 60000) sessionPort = 20000;
  const dstPort = rng.pick([TsiPort.CONTROL, TsiPort.STREAM, TsiPort.DGRAM]);
  const type = dstPort === TsiPort.STREAM || rng.chance(0.3) ? 1 : 2;
  const mk = (op: number, payload: Uint8Array | null, flags = 0): Uint8Array[] => {
    const hdr = new Uint8Array(HEADER_SIZE);
    encodeHeader({ srcCid: 3n, dstCid: 2n, srcPort, dstPort, len: payload?.length ?? 0, type, op, flags, bufAlloc: 256 * 1024, fwdCnt: 0 }, hdr);
    return payload === null ? [hdr] : [hdr, payload];
  };
  const out = [mk(Op.REQUEST, null)];
  if (dstPort === TsiPort.CONTROL && rng.chance(0.7)) out.push(mk(Op.RW, encodeHello(1), 1));
  const n = 1 + rng.below(3);
  for (let i = 0; i < n; i++) out.push(mk(Op.RW, tsiMessage(rng), type === 2 ? 1 : 0));
  if (rng.chance(0.3)) out.push(mk(Op.SHUTDOWN, null, 1 + rng.below(3)));
  if (rng.chance(0.2)) out.push(mk(Op.RST, null));
  return out;
}

/** A valid TSI message, then maybe mutated. */
function tsiMessage(rng: Prng): Uint8Array {
  const v4 = { family: 'ipv4' as const, address: `127.0.0.${rng.below(3)}`, port: rng.below(65536) };
  const v6 = { family: 'ipv6' as const, address: '::1', port: rng.below(65536) };
  let m: Buffer;
  switch (rng.below(8)) {
    case 0: m = encodeConnect(rng.chance(0.5) ? v4 : v6); break;
    case 1: m = encodeConnect({ family: 'unix', path: `/tmp/${'x'.repeat(rng.below(120))}` }); break;
    case 2: m = encodeHello(rng.u32(), rng.below(3), rng.below(3)); break;
    case 3: m = encodeListen({ seq: rng.u32(), sockType: rng.below(3), backlog: rng.below(200), vsockPort: rng.u32(), bind: rng.chance(0.5) ? v4 : v6 }); break;
    case 4: m = encodeSeqResult(TsiOp.UNLISTEN, rng.u32(), 0, rng.below(4)); break;
    case 5: m = encodeDgramOpen(rng.chance(0.5) ? v4 : v6); break;
    case 6: m = encodeDgram(rng.chance(0.5) ? v4 : v6, randomBytes(rng, rng.below(300))); break;
    default: m = header(rng.below(40), 8 + rng.below(64)); break;
  }
  if (rng.chance(0.4)) {
    const flips = 1 + rng.below(4);
    for (let i = 0; i < flips; i++) m[rng.below(m.length)] = rng.below(256);
  }
  if (rng.chance(0.1)) m = m.subarray(0, rng.below(m.length));
  if (m.length >= 8 && rng.chance(0.05)) m.writeUInt32LE(rng.u32(), 4);
  return m;
}

