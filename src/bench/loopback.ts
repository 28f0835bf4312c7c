// Plain loopback TCP inside this process: the baseline the TSI and virtio-net stream
// benches compare against, and the small servers they measure with.
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';

/** Bytes per write in the stream benches. */
export const CHUNK = 256 * 1024;

export async function listen(onConn: (s: Socket) => void): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); s.on('error', () => {}); onConn(s); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return { server, port, close: () => new Promise((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }) };
}

/** Seconds to move `bytes` with `send(chunk)` until `received()` reaches `bytes`. */
export function timeTransfer(bytes: number, start: (done: () => void) => void): Promise<number> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    start(() => { resolve((performance.now() - t0) / 1000); });
  });
}

export async function loopback(bytes: number): Promise<number> {
  let got = 0;
  let finish: (() => void) | null = null;
  const sink = await listen((s) => { s.on('data', (d: Buffer) => { got += d.length; if (got >= bytes) finish?.(); }); });
  const c = netConnect({ port: sink.port, host: '127.0.0.1' });
  await new Promise<void>((r) => c.once('connect', () => r()));
  const chunk = Buffer.alloc(CHUNK, 0x44);
  try {
    return await timeTransfer(bytes, (done) => {
      finish = done;
      let sent = 0;
      const pump = (): void => { while (sent < bytes) { sent += chunk.length; if (!c.write(chunk)) return; } };
      c.on('drain', pump);
      pump();
    });
  } finally {
    c.destroy();
    await sink.close();
  }
}
