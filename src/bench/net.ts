// bench net-stream / net-connect: the virtio-net path end to end — a real guest (the
// sandbox's engine: QEMU TCG on hosts without native ring 0), our NetDevice over
// vhost-user, the policy filter, and passt or gvproxy (--net) — against loopback TCP in
// this process, in the same run. Times are taken on the host:
//  - guest→host: `head -c N /dev/zero | tsibox-tcp HOST PORT` in the guest; from the
//    first byte at the host server to the N-th;
//  - host→guest: `wget -O /dev/null http://HOST:PORT/` of N bytes; from the request to
//    the guest closing the connection after the last byte;
//  - net-connect: a guest shell loop of `wget http://HOST:PORT/` (connect, GET, a 1-byte
//    body, close), each connection a new guest process; accepts per second between the
//    first and the last accept.
// Under TCG the guest's CPU (and a process per connect) bounds what is measured.
import { createServer as createHttpServer } from 'node:http';
import { connect as netConnect, type AddressInfo } from 'node:net';
import { TsiboxError } from '../errors.js';
import { guestToolsArchive } from '../guest/tools.js';
import { Policy } from '../policy/index.js';
import { Sandbox } from '../sandbox.js';
import { machineInfo } from './machine.js';
import type { BenchDefinition, BenchOptions, BenchResult } from './registry.js';
import { median, round } from './stats.js';
import { listen, loopback } from './loopback.js';

type NetMode = 'passt' | 'gvproxy';
/** The host's 127.0.0.1 as the guest reaches it in each mode. */
const HOST_ALIAS: Record<NetMode, string> = { passt: '10.0.2.2', gvproxy: '192.168.127.254' };

function netMode(o: BenchOptions): NetMode {
  const n = o.net ?? 'gvproxy';
  if (n !== 'passt' && n !== 'gvproxy') throw new TsiboxError('NOT_SUPPORTED', `the net benches measure --net passt or gvproxy (got ${n})`);
  return n;
}

function network(mode: NetMode, port: number): { mode: NetMode; policy: Policy } {
  return { mode, policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: '127.0.0.1', ports: port }] }) };
}

const gbit = (bytes: number, s: number): number => (bytes * 8) / s / 1e9;

/** One sandbox: upload then download of `bytes`; Gbit/s each way. */
async function guestStream(mode: NetMode, bytes: number, tools: Buffer, engine: string | undefined): Promise<{ up: number; down: number }> {
  let got = 0;
  let first = 0;
  let upSeconds = 0;
  const sink = await listen((s) => {
    s.on('data', (d: Buffer) => {
      if (got === 0) first = performance.now();
      got += d.length;
      if (got >= bytes && upSeconds === 0) {
        upSeconds = (performance.now() - first) / 1000;
        s.end(); // the whole upload is here: close our side too (passt mishandles a lingering half-close)
      }
    });
  });
  let downSeconds = 0;
  const chunk = Buffer.alloc(256 * 1024, 0x45);
  const http = createHttpServer((req, res) => {
    const t0 = performance.now();
    res.setHeader('content-length', String(bytes));
    req.socket.once('close', () => { downSeconds = (performance.now() - t0) / 1000; });
    let sent = 0;
    const pump = (): void => {
      while (sent < bytes) {
        const n = Math.min(chunk.length, bytes - sent);
        sent += n;
        if (!res.write(n === chunk.length ? chunk : chunk.subarray(0, n))) return;
      }
      res.end();
    };
    res.on('drain', pump);
    pump();
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const httpPort = (http.address() as AddressInfo).port;
  const host = HOST_ALIAS[mode];
  try {
    const policy = new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: '127.0.0.1', ports: [Math.min(sink.port, httpPort), Math.max(sink.port, httpPort)] }] });
    const r = await Sandbox.run({
      argv: ['sh', '-c', `head -c ${bytes} /dev/zero | tsibox-tcp ${host} ${sink.port} >/dev/null; wget -q -O /dev/null http://${host}:${httpPort}/`],
      extraArchives: [tools], timeoutMs: 600_000, memoryMiB: 256,
      ...(engine === 'kvm' || engine === 'qemu' ? { engine } : {}),
      network: { mode, policy },
    });
    if (r.exitCode !== 0) throw new TsiboxError('VM_ERROR', `net-stream guest failed (${r.exitCode}): ${r.stderr?.toString().slice(-500)}`);
    await new Promise((res) => setTimeout(res, 50)); // the close event of the download
    if (upSeconds === 0 || downSeconds === 0) throw new TsiboxError('VM_ERROR', `net-stream: a transfer did not complete (host got ${got} of ${bytes} bytes)`);
    return { up: gbit(bytes, upSeconds), down: gbit(bytes, downSeconds) };
  } finally {
    await sink.close();
    await new Promise<void>((r) => { http.close(() => { r(); }); http.closeAllConnections(); });
  }
}

export const netStreamBench: BenchDefinition = {
  name: 'net-stream',
  summary: 'bulk TCP through a real guest, virtio-net, the frame filter and passt/gvproxy (--net), both ways, Gbit/s, vs loopback TCP',
  defaultIterations: 64,
  defaultRuns: 3,
  async run(opts): Promise<BenchResult[]> {
    const mode = netMode(opts);
    const bytes = opts.iterations * 1024 * 1024;
    const tools = await guestToolsArchive();
    const up: number[] = [];
    const down: number[] = [];
    const base: number[] = [];
    for (let i = 0; i < opts.runs; i++) {
      base.push(gbit(bytes, await loopback(bytes)));
      const r = await guestStream(mode, bytes, tools, opts.engine);
      up.push(r.up);
      down.push(r.down);
      opts.progress?.(`net-stream (${mode}) run ${i + 1}/${opts.runs}: guest→host ${round(r.up, 3)}, host→guest ${round(r.down, 3)}, loopback ${round(base[i]!, 2)} Gbit/s`);
    }
    const b = median(base);
    return (['guest-to-host', 'host-to-guest'] as const).map((variant) => {
      const samples = variant === 'guest-to-host' ? up : down;
      const v = median(samples);
      return {
        bench: 'net-stream', net: mode, variant, value: round(v, 3), unit: 'Gbit/s', baseline: round(b, 2), ratio: round(v / b, 4),
        lowerIsBetter: false, iterations: opts.iterations, runs: opts.runs, bytes,
        samples: samples.map((x) => round(x, 3)), baselineSamples: base.map((x) => round(x, 2)),
        baselineName: 'loopback TCP between two sockets of this process',
        method: `${opts.iterations} MiB; guest→host: head | tsibox-tcp, timed first to last byte at the host; host→guest: busybox wget of an HTTP body, timed request to close; one sandbox per run; median`,
        machine: machineInfo(),
      };
    });
  },
};

export const netConnectBench: BenchDefinition = {
  name: 'net-connect',
  summary: 'TCP connects per second from a real guest through virtio-net and passt/gvproxy (--net), vs direct loopback connects',
  defaultIterations: 200,
  defaultRuns: 3,
  async run(opts): Promise<BenchResult[]> {
    const mode = netMode(opts);
    const tools = await guestToolsArchive();
    let accepts: number[] = [];
    // HTTP with a 1-byte body: busybox wget never half-closes (passt mishandles that).
    const http = createHttpServer({ keepAlive: false }, (_req, res) => { res.setHeader('connection', 'close'); res.end('x'); });
    http.on('connection', () => { accepts.push(performance.now()); });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    const srv = { port: (http.address() as AddressInfo).port, close: () => new Promise<void>((r) => { http.closeAllConnections(); http.close(() => { r(); }); }) };
    const ours: number[] = [];
    const theirs: number[] = [];
    const n = opts.iterations;
    try {
      for (let i = 0; i < opts.runs; i++) {
        const t0 = performance.now();
        for (let k = 0; k < n; k++) {
          await new Promise<void>((resolve, reject) => {
            const c = netConnect({ port: srv.port, host: '127.0.0.1' }, () => { c.write('GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n'); });
            c.resume();
            c.once('end', () => { c.destroy(); resolve(); });
            c.once('error', reject);
          });
        }
        theirs.push(n / ((performance.now() - t0) / 1000));
        accepts = [];
        const r = await Sandbox.run({
          argv: ['sh', '-c', `i=0; while [ $i -lt ${n} ]; do wget -q -O /dev/null http://${HOST_ALIAS[mode]}:${srv.port}/ || exit 1; i=$((i+1)); done`],
          extraArchives: [tools], timeoutMs: 600_000,
          ...(opts.engine === 'kvm' || opts.engine === 'qemu' ? { engine: opts.engine } : {}),
          network: network(mode, srv.port),
        });
        if (r.exitCode !== 0 || accepts.length < 2) throw new TsiboxError('VM_ERROR', `net-connect guest failed (${r.exitCode}, ${accepts.length} accepts): ${r.stderr?.toString().slice(-500)}`);
        ours.push((accepts.length - 1) / ((accepts[accepts.length - 1]! - accepts[0]!) / 1000));
        opts.progress?.(`net-connect (${mode}) run ${i + 1}/${opts.runs}: guest ${round(ours[i]!)} conn/s, direct ${round(theirs[i]!)} conn/s`);
      }
    } finally {
      await srv.close();
    }
    const v = median(ours);
    const b = median(theirs);
    return [{
      bench: 'net-connect', net: mode, value: round(v), unit: 'conn/s', baseline: round(b), ratio: round(v / b, 4), lowerIsBetter: false,
      iterations: n, runs: opts.runs, samples: ours.map((x) => round(x)), baselineSamples: theirs.map((x) => round(x)),
      baselineName: 'direct net.connect + the same HTTP request to the same loopback server from this process, one at a time',
      method: `${n} sequential connections from a guest shell loop (one busybox wget process each: connect, GET, 1-byte body, close), rate between the first and last accept; median over runs`,
      machine: machineInfo(),
    }];
  },
};
