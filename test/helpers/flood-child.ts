// Run by test/tsi/flood.test.ts under `node --max-old-space-size=256`: a simulated
// guest floods every TSI port (control, stream, datagram) and the virtio-console
// control queue for DURATION ms, as hard as it can without being credited; then a
// normal connection must still be served. Prints one JSON line with the peaks.
// Everything targets 127.0.0.1 servers made here.
import { createServer, type Socket } from 'node:net';
import { createSocket } from 'node:dgram';
import { ControlEvent } from '../../src/virtio/console/index.js';
import { encodeControl } from '../../src/virtio/console/control.js';
import { Policy } from '../../src/policy/index.js';
import { PortMap } from '../../src/portmap/index.js';
import { GuestVsock, type GuestSocket } from '../support/vsock/guest.js';
import { TsiHost } from '../../proxies/tsi.js';
import { TsiGuest } from '../support/tsi/tsi-guest.js';
import { TsiPort, encodeConnect, encodeDgram, encodeDgramOpen, encodeHello, encodeListen, SOCK_STREAM } from '../../proxies/protocol.js';
import { consoleRig } from './console-rig.js';

const DURATION = Number(process.argv[2] ?? 10_000);
const deadline = performance.now() + DURATION;
const live = (): boolean => performance.now() < deadline;
const tick = (): Promise<void> => new Promise((r) => { setImmediate(r); });

const peaks = { heapUsed: 0, external: 0, rss: 0 };
const sample = (): void => {
  const m = process.memoryUsage();
  peaks.heapUsed = Math.max(peaks.heapUsed, m.heapUsed);
  peaks.external = Math.max(peaks.external, m.external);
  peaks.rss = Math.max(peaks.rss, m.rss);
};
const sampler = setInterval(sample, 50);

// Host side: a sink that never reads (the worst case for guest→host data), a denied
// server that must see nothing, a UDP sink.
const held = new Set<Socket>();
let deniedHits = 0;
const sink = createServer((s) => { held.add(s); s.pause(); s.on('error', () => {}); });
const denied = createServer((s) => { deniedHits++; s.destroy(); });
const echo = createServer((s) => { held.add(s); s.on('error', () => {}); s.pipe(s); });
const udpSink = createSocket('udp4');
await Promise.all([sink, denied, echo].map((srv) => new Promise<void>((r) => { srv.listen(0, '127.0.0.1', r); })));
await new Promise<void>((r) => { udpSink.bind(0, '127.0.0.1', r); });
const portOf = (srv: typeof sink): number => (srv.address() as { port: number }).port;

const vsock = new GuestVsock();
const portMap = new PortMap(['127.0.0.1:0:80']);
const host = new TsiHost({
  device: vsock.device,
  policy: new Policy({ default: 'deny', rules: [
    { action: 'allow', cidr: '127.0.0.1', ports: [portOf(sink), portOf(sink)] },
    { action: 'allow', cidr: '127.0.0.1', ports: [portOf(echo), portOf(echo)] },
    { action: 'allow', protocol: 'udp', cidr: '127.0.0.1', ports: [udpSink.address().port, udpSink.address().port] },
  ] }),
  portMap,
  timeoutMs: 1000,
});

/** Writes `msg` again and again until the deadline or until the host stops crediting us. */
async function pound(s: GuestSocket, msg: Buffer): Promise<number> {
  let n = 0;
  while (live() && s.state === 'connected') {
    const ok = await Promise.race([s.write(msg).then(() => true, () => false), new Promise<boolean>((r) => { setTimeout(() => { r(false); }, 250); })]);
    if (!ok) {
      await tick();
      if (s.queuedOut > 1024 * 1024) return n; // the host stopped crediting us: stop queueing in the simulator
      continue;
    }
    n++;
  }
  return n;
}

const opened: GuestSocket[] = [];
const counts = { hello: 0, listen: 0, denied: 0, sinkBytes: 0, dgram: 0, streams: 0, console: 0, refusedConnects: 0 };
const burst = (m: Buffer, k: number): Buffer => Buffer.concat(Array.from({ length: k }, () => m));

// 1. Control: a privileged session that reads nothing, floods HELLO and LISTEN; an unprivileged one too.
const control = async (): Promise<void> => {
  const s = await vsock.connect(TsiPort.CONTROL, 'seqpacket', { localPort: 1000, bufAlloc: 0 });
  const listens = burst(encodeListen({ seq: 1, sockType: SOCK_STREAM, backlog: 1, vsockPort: 7000, bind: { family: 'ipv4', address: '0.0.0.0', port: 80 } }), 32);
  counts.hello += 64 * await pound(s, burst(encodeHello(1), 64));
  counts.listen += 32 * await pound(s, listens);
  while (live()) {
    const u = await vsock.connect(TsiPort.CONTROL, 'seqpacket').catch(() => null);
    if (u !== null) void u.write(burst(encodeHello(2), 16)).catch(() => {});
    await new Promise((r) => { setTimeout(r, 5); });
  }
};

// 2. Stream: connects to a denied server as fast as possible, plus connections that push data into a sink that never reads.
const streams = async (): Promise<void> => {
  const deny = encodeConnect({ family: 'ipv4', address: '127.0.0.1', port: portOf(denied) });
  const unspecified = encodeConnect({ family: 'ipv4', address: '0.0.0.0', port: portOf(denied) });
  const toSink = encodeConnect({ family: 'ipv4', address: '127.0.0.1', port: portOf(sink) });
  const pushers: Promise<void>[] = [];
  while (live()) {
    const batch = Array.from({ length: 32 }, async (_, i) => {
      const s = await vsock.connect(TsiPort.STREAM).catch(() => null);
      if (s === null) { counts.refusedConnects++; return; }
      counts.streams++;
      opened.push(s);
      if (i === 0 && pushers.length < 64) {
        pushers.push((async () => {
          await s.write(toSink);
          counts.sinkBytes += 65536 * await pound(s, Buffer.alloc(65536, 1));
        })());
        return;
      }
      await s.write(i % 2 === 0 ? deny : unspecified).catch(() => {});
      counts.denied++;
      if (i % 3 === 0) s.reset(); // else the host ends it
    });
    await Promise.all(batch);
    await tick();
  }
  await Promise.all(pushers);
};

// 3. Datagrams: a socket that reads nothing sends denied datagrams; another floods the UDP sink.
const datagrams = async (): Promise<void> => {
  const deaf = await vsock.connect(TsiPort.DGRAM, 'seqpacket', { bufAlloc: 0 });
  await deaf.write(encodeDgramOpen({ family: 'ipv4', address: '0.0.0.0', port: 0 }));
  const loud = await vsock.connect(TsiPort.DGRAM, 'seqpacket');
  await loud.write(encodeDgramOpen({ family: 'ipv4', address: '0.0.0.0', port: 0 }));
  await Promise.all([
    (async () => { counts.dgram += 32 * await pound(deaf, burst(encodeDgram({ family: 'ipv4', address: '127.0.0.1', port: 9 }, Buffer.alloc(100)), 32)); })(),
    (async () => { counts.dgram += await pound(loud, encodeDgram({ family: 'ipv4', address: '127.0.0.1', port: udpSink.address().port }, Buffer.alloc(1400))); })(),
  ]);
};

// 4. Console: DEVICE_READY / PORT_READY without ever posting control-rx buffers.
const consoleFlood = async (): Promise<void> => {
  const { h, tx } = consoleRig({ memorySize: 4 * 1024 * 1024 });
  const msgs = [encodeControl({ id: 0xffffffff, event: ControlEvent.DEVICE_READY, value: 1 }), encodeControl({ id: 1, event: ControlEvent.PORT_READY, value: 1 })];
  while (live()) {
    for (let i = 0; i < 2000 && tx.freeDescriptors > 0; i++) tx.add([msgs[i & 1]!], []);
    tx.kick(true);
    counts.console += tx.reapCount();
    await tick();
  }
  h.close();
};

await Promise.all([control(), streams(), datagrams(), consoleFlood()]);
sample();
// The flooding processes exit: their sockets close.
for (const s of opened) s.reset();
await new Promise((r) => { setTimeout(r, 200); });

// Afterwards a normal guest is still served.
const guest = new TsiGuest(vsock);
await guest.hello(1001);
const s = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: portOf(echo) });
const reply = new Promise<string>((resolve) => { s.on('data', (d) => { resolve(d.toString()); }); });
await s.write(Buffer.from('still here'));
const served = await Promise.race([reply, new Promise<string>((r) => { setTimeout(() => { r('timeout'); }, 5000); })]);

clearInterval(sampler);
const MiB = (n: number): number => Math.round(n / 104857.6) / 10;
process.stdout.write(`${JSON.stringify({
  served, deniedHits, durationMs: DURATION,
  peakHeapUsedMiB: MiB(peaks.heapUsed), peakExternalMiB: MiB(peaks.external), peakRssMiB: MiB(peaks.rss),
  vsock: vsock.device.stats(), limitsRefused: host.limits.refused, counts,
})}\n`);
guest.close();
host.close();
vsock.close();
for (const h of held) h.destroy();
for (const srv of [sink, denied, echo]) srv.close();
udpSink.close();
process.exit(0);
