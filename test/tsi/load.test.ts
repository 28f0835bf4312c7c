import t from 'tap';
import { createHash } from 'node:crypto';
import type { Socket } from 'node:net';
import { rig, tcpServer, until } from './helpers.js';

t.test('1000 concurrent connections, each moving data with checksums, none lost', async (t) => {
  // Server: reads until EOF and answers with the SHA-256 of what it got, then the bytes reversed.
  const srv = await tcpServer(t, (s) => {
    const h = createHash('sha256');
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => { h.update(d); parts.push(d); });
    s.on('end', () => {
      const all = Buffer.concat(parts).reverse();
      s.end(Buffer.concat([Buffer.from(h.digest('hex')), all]));
    });
  });
  const { guest, vsock } = await rig(t, { guest: { rxBufSize: 4096 }, limits: { maxConnections: 2000, connectionsPerSecond: 100_000 } });
  const N = 1000;
  const started = Date.now();
  const results = await Promise.all(Array.from({ length: N }, async (_, i) => {
    const size = 1000 + ((i * 7919) % 9000);
    const data = Buffer.alloc(size);
    for (let k = 0; k < size; k++) data[k] = (k * 31 + i) & 0xff;
    const s = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port });
    const got = s.readAll();
    await s.write(data);
    s.end();
    const reply = await got;
    s.close();
    const want = createHash('sha256').update(data).digest('hex');
    return reply.subarray(0, 64).toString() === want && reply.subarray(64).equals(Buffer.from(data).reverse());
  }));
  const ok = results.filter(Boolean).length;
  t.equal(ok, N, `${N} connections, all checksums match (${Date.now() - started} ms)`);
  t.equal(srv.connections(), N, 'the server saw exactly N connections');
  await until(() => vsock.device.stats().connections === 1, 5000, 'all data connections closed (the control channel stays)');
  t.equal(vsock.badPackets, 0);
});

t.test('backpressure: a host reader that stops reading does not grow VMM memory', async (t) => {
  let server: Socket | null = null;
  const srv = await tcpServer(t, (s) => { server = s; s.pause(); });
  const { guest, vsock, host } = await rig(t);
  const s = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port });
  await until(() => server !== null);
  const chunk = Buffer.alloc(64 * 1024, 7);
  const target = 64 * 1024 * 1024; // the guest tries to push 64 MiB
  const before = process.memoryUsage().arrayBuffers;
  let queued = 0;
  let peak = 0;
  const bufAlloc = 256 * 1024;
  // Keep the guest's send queue topped up; it can only move what credit allows.
  const deadline = Date.now() + 3000;
  while (Date.now() < deadline && queued < target) {
    if (s.socket.queuedOut < 1024 * 1024) {
      void s.write(chunk);
      queued += chunk.length;
    }
    await new Promise((r) => setTimeout(r, 2));
    const st = vsock.device.stats();
    // VMM-held guest→host bytes: delivered-but-unconsumed + what the host socket buffers.
    const held = st.unconsumed + (host.stream.openSockets > 0 ? 0 : 0);
    peak = Math.max(peak, held);
  }
  const moved = s.socket.bytesOut;
  const growth = process.memoryUsage().arrayBuffers - before;
  t.ok(moved < 32 * 1024 * 1024, `guest moved only ${(moved / 1048576).toFixed(1)} MiB while the reader slept (kernel socket buffers + credit)`);
  t.ok(peak <= bufAlloc, `unconsumed bytes in the VMM peaked at ${peak} ≤ buf_alloc ${bufAlloc}`);
  t.ok(growth < 48 * 1024 * 1024, `array-buffer memory grew ${(growth / 1048576).toFixed(1)} MiB (< 48 MiB; guest queue included)`);
  // Resume the reader: everything flows and nothing was lost.
  let received = 0;
  server!.on('data', (d: Buffer) => { received += d.length; });
  server!.resume();
  await until(() => received === moved || received >= moved, 10_000, 'drain after resume');
  t.ok(received >= moved, `reader got ${received} bytes after resuming`);
  s.socket.reset();
});

t.test('backpressure: a guest that stops reading pauses the host socket', async (t) => {
  let hostSide: Socket | null = null;
  let written = 0;
  const srv = await tcpServer(t, (sock) => {
    hostSide = sock;
    const chunk = Buffer.alloc(64 * 1024, 1);
    const pump = (): void => {
      while (written < 64 * 1024 * 1024 && sock.write(chunk)) written += chunk.length;
    };
    sock.on('drain', pump);
    pump();
  });
  const { guest, vsock } = await rig(t);
  const s = await guest.connect({ family: 'ipv4', address: '127.0.0.1', port: srv.port });
  s.socket.pause(); // the guest app stops reading: no credit goes back
  await until(() => hostSide !== null);
  await new Promise((r) => setTimeout(r, 500));
  const st = vsock.device.stats();
  t.ok(st.bufferedToGuest <= 256 * 1024 + 64 * 1024, `device queue toward the guest ${st.bufferedToGuest} ≤ high-water + one read`);
  t.ok(s.socket.heldBytes <= 256 * 1024, `guest holds ≤ its buf_alloc (${s.socket.heldBytes})`);
  t.equal(s.socket.creditViolations, 0, 'the host never sent past the guest credit');
  t.ok(written < 48 * 1024 * 1024, `the host writer was throttled at ${(written / 1048576).toFixed(1)} MiB`);
  s.socket.reset();
});
