// The bodies of `tsibox bench tsi-stream` and `tsi-connect` (registered in
// src/bench/tsi.ts, loaded at run time): TSI through the real vsock device and proxies,
// with the guest played by the software driver (GuestVsock + TsiGuest) in this process,
// against plain loopback TCP between two sockets of this process in the same run.
import { connect as netConnect } from 'node:net';
import { Policy } from '../../../src/policy/index.js';
import { TsiHost } from '../../../proxies/tsi.js';
import { CHUNK, listen, loopback, timeTransfer } from '../../../src/bench/loopback.js';
import { machineInfo } from '../../../src/bench/machine.js';
import type { BenchDefinition, BenchResult } from '../../../src/bench/registry.js';
import { median, round } from '../../../src/bench/stats.js';
import { GuestVsock } from '../vsock/guest.js';
import { TsiGuest } from '../tsi/tsi-guest.js';

/** Limits that never refuse in these benches (still evaluated per connect). */
const BENCH_LIMITS = { connectionsPerSecond: 1_000_000, maxConnections: 1_000_000 } as const;

interface Rig { vsock: GuestVsock; host: TsiHost; guest: TsiGuest; close(): void }

async function tsiRig(): Promise<Rig> {
  const vsock = new GuestVsock({ memorySize: 128 * 1024 * 1024, deviceOptions: { bufAlloc: 1024 * 1024, highWater: 1024 * 1024 }, bufAlloc: 1024 * 1024 });
  // The per-sandbox connect-rate and connection limits (proxies/limits.ts, 1000/s and
  // 512 by default) would cap what tsi-connect measures: raise them to the maximum
  // resolveLimits accepts. They are still checked on every connect.
  const host = new TsiHost({
    device: vsock.device, policy: new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: '127.0.0.0/8' }] }),
    limits: BENCH_LIMITS,
  });
  const guest = new TsiGuest(vsock);
  await guest.hello();
  return { vsock, host, guest, close: () => { guest.close(); host.close(); vsock.close(); } };
}

async function tsiUpload(bytes: number): Promise<number> {
  let got = 0;
  let finish: (() => void) | null = null;
  const sink = await listen((s) => { s.on('data', (d: Buffer) => { got += d.length; if (got >= bytes) finish?.(); }); });
  const r = await tsiRig();
  try {
    const s = await r.guest.connect({ family: 'ipv4', address: '127.0.0.1', port: sink.port });
    const chunk = Buffer.alloc(CHUNK, 0x42);
    return await timeTransfer(bytes, (done) => {
      finish = done;
      let sent = 0;
      const pump = (): void => {
        while (sent < bytes && s.socket.queuedOut < 4 * CHUNK) {
          void s.write(chunk);
          sent += chunk.length;
        }
      };
      s.socket.on('writable', pump);
      pump();
    });
  } finally {
    r.close();
    await sink.close();
  }
}

async function tsiDownload(bytes: number): Promise<number> {
  const chunk = Buffer.alloc(CHUNK, 0x43);
  const src = await listen((s) => {
    let sent = 0;
    const pump = (): void => { while (sent < bytes) { sent += chunk.length; if (!s.write(chunk)) return; } s.end(); };
    s.on('drain', pump);
    pump();
  });
  const r = await tsiRig();
  try {
    return await timeTransfer(bytes, (done) => {
      let got = 0;
      void r.guest.connect({ family: 'ipv4', address: '127.0.0.1', port: src.port }).then((s) => {
        s.on('data', (d) => { got += d.length; if (got >= bytes) done(); });
      });
    });
  } finally {
    r.close();
    await src.close();
  }
}

const gbit = (bytes: number, s: number): number => (bytes * 8) / s / 1e9;

/** tsi-stream: guest→host and host→guest bulk TCP, one row each. */
export const runTsiStream: BenchDefinition['run'] = async ({ iterations, runs, progress }): Promise<BenchResult[]> => {
  const bytes = iterations * 1024 * 1024;
  const up: number[] = [];
  const down: number[] = [];
  const base: number[] = [];
  for (let i = 0; i < runs; i++) {
    base.push(gbit(bytes, await loopback(bytes)));
    up.push(gbit(bytes, await tsiUpload(bytes)));
    down.push(gbit(bytes, await tsiDownload(bytes)));
    progress?.(`tsi-stream run ${i + 1}/${runs}: guest→host ${round(up[i]!, 2)}, host→guest ${round(down[i]!, 2)}, loopback ${round(base[i]!, 2)} Gbit/s`);
  }
  const b = median(base);
  return (['guest-to-host', 'host-to-guest'] as const).map((variant) => {
    const v = median(variant === 'guest-to-host' ? up : down);
    return {
      bench: 'tsi-stream', variant, value: round(v, 2), unit: 'Gbit/s', baseline: round(b, 2), ratio: round(v / b, 3),
      lowerIsBetter: false, iterations, runs, bytes,
      samples: (variant === 'guest-to-host' ? up : down).map((x) => round(x, 2)), baselineSamples: base.map((x) => round(x, 2)),
      baselineName: 'loopback TCP between two sockets of this process',
      method: `${iterations} MiB in ${CHUNK / 1024} KiB writes; guest = software driver (GuestVsock) in this process; 1 MiB buf_alloc; median over runs`,
      machine: machineInfo(),
    };
  });
};

async function connectRate(count: number, concurrency: number, one: () => Promise<void>): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < count) {
      next++;
      await one();
    }
  }));
  return count / ((performance.now() - t0) / 1000);
}

/** tsi-connect: connect, 1 byte each way, close; connections per second. */
export const runTsiConnect: BenchDefinition['run'] = async ({ iterations, runs, progress }): Promise<BenchResult[]> => {
  const concurrency = 16;
  const srv = await listen((s) => { s.once('data', (d: Buffer) => { s.end(d); }); });
  const ours: number[] = [];
  const theirs: number[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      theirs.push(await connectRate(iterations, concurrency, () => new Promise<void>((resolve, reject) => {
        const c = netConnect({ port: srv.port, host: '127.0.0.1' }, () => { c.write('x'); });
        c.once('data', () => { c.destroy(); resolve(); });
        c.once('error', reject);
      })));
      const r = await tsiRig();
      try {
        ours.push(await connectRate(iterations, concurrency, async () => {
          const s = await r.guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port });
          const got = new Promise<void>((resolve) => s.once('data', () => resolve()));
          await s.write(Buffer.from('x'));
          await got;
          s.close();
        }));
      } finally {
        r.close();
      }
      progress?.(`tsi-connect run ${i + 1}/${runs}: TSI ${round(ours[i]!)} conn/s, direct ${round(theirs[i]!)} conn/s`);
    }
  } finally {
    await srv.close();
  }
  const v = median(ours);
  const b = median(theirs);
  return [{
    bench: 'tsi-connect', value: round(v), unit: 'conn/s', baseline: round(b), ratio: round(v / b, 3), lowerIsBetter: false,
    iterations, runs, concurrency, samples: ours.map((x) => round(x)), baselineSamples: theirs.map((x) => round(x)),
    baselineName: 'direct net.connect to the same loopback server from this process',
    method: `${iterations} connections, ${concurrency} in flight; each: connect, send 1 byte, read the echo, close; `
      + `TSI limits raised to connectionsPerSecond ${BENCH_LIMITS.connectionsPerSecond}, maxConnections ${BENCH_LIMITS.maxConnections} `
      + `(the 1000/s default would cap the measurement; the checks still run per connect); median over runs`,
    machine: machineInfo(),
  }];
};
