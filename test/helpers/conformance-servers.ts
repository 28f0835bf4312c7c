// The loopback servers tsibox-sockprobe (native/guest-tools/tsibox-sockprobe.c) runs
// its scenarios against, one set per address family, and the probe's target argument
// for them. Used by test/e2e/tsi-conformance.test.ts.
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createInterface } from 'node:readline';

export interface ProbeServers {
  /** `v4=ADDR,echo=P,...` for the probe, with `address` replaced by the name the prober uses. */
  target(address: string): string;
  close(): Promise<void>;
}

async function listen(server: Server, host: string): Promise<number> {
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, host, resolve); });
  return (server.address() as AddressInfo).port;
}

async function freePort(host: string, type: 'tcp' | 'udp4' | 'udp6'): Promise<number> {
  if (type === 'tcp') {
    const s = createServer();
    const port = await listen(s, host);
    await new Promise<void>((r) => s.close(() => { r(); }));
    return port;
  }
  const u = createSocket(type);
  await new Promise<void>((resolve, reject) => { u.once('error', reject); u.bind(0, host, () => { resolve(); }); });
  const port = u.address().port;
  await new Promise<void>((r) => u.close(() => { r(); }));
  return port;
}

/**
 * Starts, on `host` (127.0.0.1 or ::1): a TCP echo server (half-close aware), a
 * listener that never accepts (`slowServer`: the probe binary's --slow-server helper,
 * whose accept queue is full), a server that sends 6 bytes and resets, one that closes
 * at once, one that never reads, a UDP echo server, and a closed TCP and UDP port.
 */
export async function startProbeServers(host: string, probe: string): Promise<ProbeServers> {
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  const track = (s: Socket): void => { sockets.add(s); s.on('error', () => { /* the probe provokes errors */ }); s.on('close', () => sockets.delete(s)); };

  const echo = createServer({ allowHalfOpen: true }, (s) => {
    track(s);
    s.on('data', (d: Buffer) => s.write(d));
    s.on('end', () => s.end());
  });
  const reset = createServer((s) => {
    track(s);
    s.write('sixsix', () => { setTimeout(() => { s.resetAndDestroy(); }, 20); });
  });
  const close = createServer((s) => { track(s); s.destroy(); });
  const idle = createServer({ pauseOnConnect: true }, (s) => { track(s); });
  servers.push(echo, reset, close, idle);
  const ports: Record<string, number> = {};
  ports['echo'] = await listen(echo, host);
  ports['reset'] = await listen(reset, host);
  ports['close'] = await listen(close, host);
  ports['idle'] = await listen(idle, host);
  ports['refused'] = await freePort(host, 'tcp');

  const type = host.includes(':') ? 'udp6' : 'udp4';
  const udp: UdpSocket = createSocket({ type, ...(type === 'udp6' ? { ipv6Only: true } : {}) });
  udp.on('message', (m, rinfo) => { udp.send(m, rinfo.port, rinfo.address); });
  udp.on('error', () => { /* a reply to a vanished client */ });
  await new Promise<void>((resolve, reject) => { udp.once('error', reject); udp.bind(0, host, () => { resolve(); }); });
  ports['udp'] = udp.address().port;
  ports['udpclosed'] = await freePort(host, type);

  const slow: ChildProcess = spawn(probe, ['--slow-server', host], { stdio: ['pipe', 'pipe', 'inherit'] });
  ports['slow'] = await new Promise<number>((resolve, reject) => {
    slow.once('error', reject);
    slow.once('exit', (code) => { reject(new Error(`the slow server exited (${code})`)); });
    createInterface({ input: slow.stdout! }).once('line', (l) => { resolve(Number(l)); });
  });

  return {
    target: (address) => `${host.includes(':') ? 'v6' : 'v4'}=${address},${Object.entries(ports).map(([k, v]) => `${k}=${v}`).join(',')}`,
    close: async () => {
      slow.stdin!.end();
      slow.kill();
      for (const s of sockets) s.destroy();
      udp.close();
      await Promise.all(servers.map((s) => new Promise<void>((r) => { s.close(() => { r(); }); })));
    },
  };
}

/**
 * The probe's servers on 127.0.0.1 and, where the host has IPv6 loopback, on ::1 (else
 * a comment says so); closed at the test's teardown.
 */
export async function startProbeServersBoth(t: { teardown(fn: () => Promise<void>): void; comment(msg: string): void }, probe: string): Promise<{ s4: ProbeServers; s6: ProbeServers | undefined }> {
  const servers: ProbeServers[] = [];
  t.teardown(async () => { await Promise.all(servers.map((s) => s.close())); });
  const s4 = await startProbeServers('127.0.0.1', probe);
  servers.push(s4);
  let s6: ProbeServers | undefined;
  try {
    s6 = await startProbeServers('::1', probe);
    servers.push(s6);
  } catch (e) {
    t.comment(`no IPv6 loopback on this host (${(e as Error).message}): IPv4 only`);
  }
  return { s4, s6 };
}
