// Fuzz target `tsi`: a hostile guest against the vsock device and the TSI host. Each
// iteration sends random and mutated vsock packets (lying headers, wrong types, ops
// out of order, payload lengths past the buffers) and mutated TSI messages on the
// control, stream and datagram ports, then lets the device answer.
//  - mode 'deny': the policy denies everything and the port map is empty, so no host
//    network traffic can happen (parser and device).
//  - mode 'open': loopback servers of our own (one allowed TCP, UDP and unix echo, one
//    DENIED TCP and UDP server), a policy that allows only the allowed ones, a port
//    map whose listeners get real host clients, and the event loop runs between
//    iterations, so messages reach the proxies and real sockets.
// Fails when an exception escapes, the device throws inside the transport, anything
// touches memory outside guest RAM, bytes outside guest RAM change, the device or the
// proxies hold more than their bounds (connections, queued bytes, limits), or (open)
// a denied server is ever contacted.
import { Feature } from '../../../src/virtio/constants.js';
import { MmioTransport } from '../../../src/virtio/mmio.js';
import { CountingInterrupt, SoftwareDriver, type DriverQueue } from '../virtio/driver.js';
import type { FuzzTarget } from '../fuzz-target.js';
import { randomBytes, type Prng } from '../prng.js';
import { guardedMemory } from '../virtio/guarded-memory.js';
import { EVENT_QUEUE, RX_QUEUE, TX_QUEUE, VsockDevice } from '../../../src/virtio/vsock/device.js';
import { HEADER_SIZE, Op, VsockFeature, encodeHeader, type PacketHeader } from '../../../src/virtio/vsock/header.js';
import { Policy } from '../../../src/policy/index.js';
import { PortMap } from '../../../src/portmap/index.js';
import { TsiHost } from '../../../proxies/tsi.js';
import { openWorld, type OpenWorld } from './fuzz-tsi-world.js';
import {
  TsiOp, TsiPort, encodeConnect, encodeDgram, encodeDgramOpen, encodeHello, encodeListen, encodeSeqResult, header,
} from '../../../proxies/protocol.js';

const RAM = 8 << 20;
const MAX_CONNECTIONS = 64;
/** Driver resets (and a fresh negotiation) every this many iterations. */
const RESET_EVERY = 200;

/** Where generated messages point (the open mode's servers, or loopback ports nobody is told about). */
interface Targets {
  tcp: number[];
  udp: number[];
  unix: string[];
  guestPorts: number[];
}

const DENY_TARGETS: Targets = { tcp: [], udp: [], unix: [], guestPorts: [] };

export function tsiTarget(mode: string): FuzzTarget {
  if (mode !== 'deny' && mode !== 'open') throw new Error(`tsi fuzz mode ${mode}: use deny or open`);
  const { memory, checked, violations, guardsIntact } = guardedMemory(RAM);
  const internal: unknown[] = [];
  const device = new VsockDevice({ queueSize: 64, maxConnections: MAX_CONNECTIONS, connectTimeoutMs: 60_000 });
  let world: OpenWorld | null = null;
  let host: TsiHost | null = null;
  let targets = DENY_TARGETS;
  const start = async (): Promise<TsiHost> => {
    world = await openWorld();
    targets = world.targets;
    return new TsiHost({
      device, policy: world.policy, portMap: world.portMap, timeoutMs: 2000, unixSockets: true,
      limits: { maxConnections: 32, maxListeners: 8, maxUdpSockets: 16, connectionsPerSecond: 100_000 },
    });
  };
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

  const check = (): string | null => {
    if (internal.length > 0) {
      const e = internal[0];
      return `device threw: ${e instanceof Error ? e.stack ?? e.message : String(e)}`;
    }
    if (violations.length > 0) return `access outside guest RAM: ${violations[0]}`;
    if (!guardsIntact()) return 'bytes outside guest RAM changed';
    const st = device.stats();
    if (st.connections > MAX_CONNECTIONS) return `connections ${st.connections} over the limit ${MAX_CONNECTIONS}`;
    if (st.bufferedToGuest > MAX_CONNECTIONS * 300 * 1024) return `device holds ${st.bufferedToGuest} bytes for the guest`;
    if (host !== null) {
      const l = host.limits;
      if (l.connections > l.limits.maxConnections || host.stream.openSockets > l.limits.maxConnections) return `${host.stream.openSockets} host streams over the limit`;
      if (l.listeners > l.limits.maxListeners || host.listener.listeners > l.limits.maxListeners) return `${host.listener.listeners} listeners over the limit`;
      if (l.udpSockets > l.limits.maxUdpSockets || host.datagram.openSockets > l.limits.maxUdpSockets) return `${host.datagram.openSockets} UDP sockets over the limit`;
    }
    const w = world as OpenWorld | null;
    if (w !== null && w.deniedContacts() > 0) return `a denied server was contacted ${w.deniedContacts()} times`;
    return null;
  };

  const step = (rng: Prng): string | null => {
      violations.length = 0;
      internal.length = 0;
      try {
        if (iteration % RESET_EVERY === 0) setup(rng);
        iteration++;
        // Keep some rx buffers posted (sometimes tiny ones).
        while (rx.freeDescriptors > 0 && rng.chance(0.9)) rx.add([], [rng.chance(0.05) ? rng.below(HEADER_SIZE + 1) + 1 : HEADER_SIZE + 4096]);
        if (rng.chance(0.5)) {
          for (const p of session(rng, targets)) if (tx.freeDescriptors > 0) tx.add(p, []);
        } else {
          const n = 1 + rng.below(6);
          for (let i = 0; i < n; i++) {
            if (tx.freeDescriptors === 0) break;
            tx.add(packet(rng, ports, targets), []);
          }
        }
        if (world !== null && rng.chance(0.05)) (world as OpenWorld).poke(rng);
        tx.kick(true);
        tx.reapCount();
        if (rng.chance(0.7)) driver.transport.notify(RX_QUEUE);
        rx.reapCount();
        if (rng.chance(0.01)) device.resetTransport();
      } catch (e) {
        return `exception: ${e instanceof Error ? e.stack ?? e.message : String(e)}`;
      }
      return check();
  };

  if (mode === 'deny') {
    host = new TsiHost({ device, policy: Policy.denyAll(), portMap: new PortMap(), timeoutMs: 60_000 });
    return {
      iterate: step,
      close(): void {
        host?.close();
        transport.reset();
        memory.close();
      },
    };
  }
  return {
    async iterate(rng: Prng): Promise<string | null> {
      host ??= await start();
      const failure = step(rng);
      // Let host sockets connect, echo and close between guest bursts.
      await new Promise((r) => { setImmediate(r); });
      return failure ?? check();
    },
    describe(): string {
      if (host === null) return 'not started';
      const by = new Map<string, number>();
      for (const r of host.connections.recent) {
        const k = `${r.kind}/${r.decision}`;
        by.set(k, (by.get(k) ?? 0) + 1);
      }
      const refused = Object.entries(host.limits.refused).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ');
      return `last ${host.connections.recent.length} records: ${[...by].map(([k, n]) => `${k} ${n}`).join(', ')}; limits refused: ${refused || 'none'}`;
    },
    async finish(): Promise<string | null> {
      // Late host-side effects (connects in flight) must obey the policy too.
      await new Promise((r) => { setTimeout(r, 300); });
      return check();
    },
    async close(): Promise<void> {
      host?.close();
      transport.reset();
      memory.close();
      await (world as OpenWorld | null)?.close();
    },
  };
}

const SERVICE_PORTS = [TsiPort.CONTROL, TsiPort.STREAM, TsiPort.DGRAM, 1, 0xffff_ffff];

/** One guest packet: header + payload, mostly plausible, often wrong in one field. */
function packet(rng: Prng, ports: number[], targets: Targets): Uint8Array[] {
  const srcPort = ports.length > 0 && rng.chance(0.7) ? rng.pick(ports) : 1000 + rng.below(64);
  if (!ports.includes(srcPort) && ports.length < 64) ports.push(srcPort);
  const payload = rng.chance(0.6) ? tsiMessage(rng, targets) : randomBytes(rng, rng.below(200));
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
function session(rng: Prng, targets: Targets): Uint8Array[][] {
  let srcPort = sessionPort++;
  if (sessionPort > 60000) sessionPort = 20000;
  const dstPort = rng.pick([TsiPort.CONTROL, TsiPort.STREAM, TsiPort.DGRAM]);
  // Control sessions from a reserved port (as the guest kernel does), mostly.
  if (dstPort === TsiPort.CONTROL && rng.chance(0.8)) srcPort = 512 + rng.below(512);
  const type = dstPort === TsiPort.STREAM || rng.chance(0.3) ? 1 : 2;
  const mk = (op: number, payload: Uint8Array | null, flags = 0): Uint8Array[] => {
    const hdr = new Uint8Array(HEADER_SIZE);
    encodeHeader({ srcCid: 3n, dstCid: 2n, srcPort, dstPort, len: payload?.length ?? 0, type, op, flags, bufAlloc: 256 * 1024, fwdCnt: 0 }, hdr);
    return payload === null ? [hdr] : [hdr, payload];
  };
  const out = [mk(Op.REQUEST, null)];
  if (dstPort === TsiPort.CONTROL && rng.chance(0.7)) out.push(mk(Op.RW, encodeHello(1), 1));
  const n = 1 + rng.below(3);
  for (let i = 0; i < n; i++) out.push(mk(Op.RW, tsiMessage(rng, targets), type === 2 ? 1 : 0));
  if (rng.chance(0.3)) out.push(mk(Op.SHUTDOWN, null, 1 + rng.below(3)));
  if (rng.chance(0.2)) out.push(mk(Op.RST, null));
  return out;
}

/** A valid TSI message, then maybe mutated. */
function tsiMessage(rng: Prng, targets: Targets): Uint8Array {
  const port = (known: number[]): number => (known.length > 0 && rng.chance(0.8) ? rng.pick(known) : rng.below(65536));
  // In deny mode nothing is allowed; in open mode the ports are our own servers'.
  const tcpPort = port(targets.tcp);
  const udpPort = port(targets.udp);
  const v4 = (p: number) => ({ family: 'ipv4' as const, address: rng.chance(0.9) ? '127.0.0.1' : rng.pick(['0.0.0.0', '127.0.0.2', '0.1.2.3', '10.0.0.1']), port: p });
  const v6 = (p: number) => ({ family: 'ipv6' as const, address: rng.pick(['::1', '::ffff:127.0.0.1', '::', '::ffff:0.0.0.0']), port: p });
  const unixPath = targets.unix.length > 0 && rng.chance(0.7)
    ? rng.pick(targets.unix).replace(/\/([^/]*)$/, rng.chance(0.5) ? '/$1' : '/../$1')
    : `/tmp/${'x'.repeat(rng.below(120))}`;
  const guestPort = targets.guestPorts.length > 0 && rng.chance(0.8) ? rng.pick(targets.guestPorts) : rng.below(65536);
  let m: Buffer;
  switch (rng.below(8)) {
    case 0: m = encodeConnect(rng.chance(0.5) ? v4(tcpPort) : v6(tcpPort)); break;
    case 1: m = encodeConnect({ family: 'unix', path: unixPath }); break;
    case 2: m = encodeHello(rng.u32(), rng.below(3), rng.below(3)); break;
    case 3: m = encodeListen({ seq: rng.u32(), sockType: rng.chance(0.7) ? 1 : rng.below(3), backlog: rng.below(200), vsockPort: rng.chance(0.5) ? 7000 + rng.below(4) : rng.u32(), bind: rng.chance(0.5) ? v4(guestPort) : v6(guestPort) }); break;
    case 4: m = encodeSeqResult(TsiOp.UNLISTEN, rng.u32(), 0, rng.below(4)); break;
    case 5: m = encodeDgramOpen(rng.chance(0.5) ? v4(rng.chance(0.3) ? guestPort : 0) : v6(0)); break;
    case 6: m = encodeDgram(rng.chance(0.5) ? v4(udpPort) : v6(udpPort), randomBytes(rng, rng.below(300))); break;
    default: m = header(rng.below(40), 8 + rng.below(64)); break;
  }
  if (rng.chance(targets.tcp.length > 0 ? 0.2 : 0.4)) {
    const flips = 1 + rng.below(4);
    for (let i = 0; i < flips; i++) m[rng.below(m.length)] = rng.below(256);
  }
  if (rng.chance(0.1)) m = m.subarray(0, rng.below(m.length));
  if (m.length >= 8 && rng.chance(0.05)) m.writeUInt32LE(rng.u32(), 4);
  return m;
}

