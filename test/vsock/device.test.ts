import t, { type Test } from 'tap';
import { createServer, connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { DeviceId } from '../../src/virtio/constants.js';
import { VsockDevice } from '../../src/virtio/vsock/device.js';
import { GuestVsock } from '../support/vsock/guest.js';
import { VsockFeature } from '../../src/virtio/vsock/header.js';
import { addVsockPort } from '../../proxies/unix-bridge.js';

function guest(t: Test, opts: ConstructorParameters<typeof GuestVsock>[0] = {}): GuestVsock {
  const g = new GuestVsock(opts);
  t.teardown(() => { g.close(); });
  return g;
}

t.test('config, features, CID validation', (t) => {
  const d = new VsockDevice({ guestCid: 42 });
  t.equal(d.deviceId, DeviceId.VSOCK);
  t.equal(d.features & VsockFeature.SEQPACKET, VsockFeature.SEQPACKET);
  const cfg = new Uint8Array(8);
  d.readConfig(0, cfg);
  t.equal(new DataView(cfg.buffer).getBigUint64(0, true), 42n);
  t.throws(() => new VsockDevice({ guestCid: 2 }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => new VsockDevice({ guestCid: 0xffffffff }), { code: 'INVALID_ARGUMENT' });
  t.equal(new VsockDevice({ seqpacket: false }).features, 0n);
  t.end();
});

t.test('guest connects, data both ways, SHUTDOWN and RST close it', async (t) => {
  const g = guest(t);
  t.equal(g.cid, 3n);
  let hostConn: import('../../src/virtio/vsock/connection.js').VsockConnection | null = null;
  g.device.listen(5000, (c) => {
    hostConn = c;
    c.on('data', (d) => { c.write(Buffer.from(d.toString().toUpperCase())); c.consumed(d.length); });
    c.on('end', () => { c.end(); });
  });
  const s = await g.connect(5000);
  const got = new Promise<string>((r) => s.once('data', (d) => r(d.toString())));
  await s.write(Buffer.from('abc'));
  t.equal(await got, 'ABC');
  const closed = new Promise<string>((r) => hostConn!.once('close', (reason) => r(reason)));
  s.end();
  t.equal(await closed, 'closed', 'both SHUTDOWN(SEND) → clean close with RST');
  await t.rejects(g.connect(5001), { code: 'ECONNREFUSED' }, 'no listener → RST');
  t.throws(() => g.device.listen(5000, () => {}), { code: 'VSOCK_PORT_IN_USE' });
});

t.test('host connects to a guest port; refused without a guest listener', async (t) => {
  const g = guest(t);
  g.listen(6000, (s) => { s.on('data', (d) => { void s.write(d); }); });
  const c = g.device.connect(6000);
  await new Promise<void>((r) => c.once('connect', () => r()));
  const echoed = new Promise<string>((r) => c.once('data', (d) => r(d.toString())));
  c.write(Buffer.from('ping'));
  t.equal(await echoed, 'ping');
  const refused = g.device.connect(6001);
  t.equal(await new Promise((r) => refused.once('close', (reason) => r(reason))), 'refused');
});

t.test('SEQPACKET keeps message boundaries', async (t) => {
  const g = guest(t);
  const msgs: string[] = [];
  g.device.listen(7000, (c) => {
    let cur: Buffer[] = [];
    c.on('data', (d, eom) => {
      cur.push(d);
      c.consumed(d.length);
      if (eom) { msgs.push(Buffer.concat(cur).toString()); cur = []; c.write(Buffer.from(`ack${msgs.length}`)); }
    });
  }, { type: 'seqpacket' });
  const s = await g.connect(7000, 'seqpacket');
  const acks: string[] = [];
  s.on('data', (d, eom) => { if (eom) acks.push(d.toString()); });
  await s.write(Buffer.from('one'));
  await s.write(Buffer.alloc(100_000, 0x61)); // spans packets, one message
  await s.write(Buffer.from('three'));
  const end = Date.now() + 2000;
  while (acks.length < 3 && Date.now() < end) await new Promise((r) => setTimeout(r, 5));
  t.same(msgs.map((m) => m.length), [3, 100_000, 5]);
  t.same(acks, ['ack1', 'ack2', 'ack3']);
  await t.rejects(g.connect(7000, 'stream'), { code: 'ECONNREFUSED' }, 'a seqpacket listener refuses stream');
});

t.test('a guest sending past its credit is reset', async (t) => {
  const g = guest(t);
  let reason = '';
  g.device.listen(8000, (c) => { c.on('close', (r, detail) => { reason = `${r}: ${detail}`; }); /* never consumes */ });
  const s = await g.connect(8000);
  // Lie about credit: pretend the host advertised 1 MiB.
  s.credit({ ...s.header(0, 0, 0), bufAlloc: 1 << 20, fwdCnt: 0 });
  await s.write(Buffer.alloc(512 * 1024));
  await new Promise((r) => setTimeout(r, 50));
  t.match(reason, /protocol-error: guest sent .* past its credit/);
  t.equal(s.state, 'closed');
});

t.test('transport reset and CID change end every connection and tell the guest', async (t) => {
  const g = guest(t);
  g.device.listen(9000, () => {});
  const s = await g.connect(9000);
  g.device.setGuestCid(77);
  await new Promise((r) => setTimeout(r, 20));
  t.equal(g.transportResets, 1);
  t.equal(s.state, 'closed');
  t.equal(g.cid, 77n, 'guest re-read the CID');
  const s2 = await g.connect(9000);
  t.equal(s2.state, 'connected', 'new connections use the new CID');
  t.equal(g.device.stats().malformed, 0);
});

t.test('driver reset closes connections with device-reset', async (t) => {
  const g = guest(t);
  let reason = '';
  g.device.listen(9100, (c) => { c.on('close', (r) => { reason = r; }); });
  await g.connect(9100);
  g.harness.driver.reset();
  t.equal(reason, 'device-reset');
  t.equal(g.device.active, false);
});

t.test('vsock-port ↔ unix socket bridges both directions', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-vsock-'));
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });
  const g = guest(t);
  // guest → host: host service on a unix socket
  const svc = join(dir, 'svc.sock');
  const sockets = new Set<Socket>();
  const server = createServer((c) => { sockets.add(c); c.on('data', (d) => c.write(`svc:${d}`)); });
  await new Promise<void>((r) => server.listen(svc, r));
  t.teardown(() => { for (const s of sockets) s.destroy(); server.close(); });
  const out = addVsockPort(g.device, 1234, svc, false);
  t.teardown(() => out.close());
  const s = await g.connect(1234);
  const got = new Promise<string>((r) => s.once('data', (d) => r(d.toString())));
  await s.write(Buffer.from('hi'));
  t.equal(await got, 'svc:hi');
  // host → guest: the VMM listens on a unix socket and connects to guest port 2345
  g.listen(2345, (gs) => { gs.on('data', (d) => { void gs.write(Buffer.from(`guest:${d}`)); }); });
  const inPath = join(dir, 'in.sock');
  const inb = addVsockPort(g.device, 2345, inPath, true);
  t.teardown(() => inb.close());
  await inb.ready;
  const c = connect(inPath);
  t.teardown(() => { c.destroy(); });
  const reply = new Promise<string>((r) => c.once('data', (d) => r(d.toString())));
  c.write('yo');
  t.equal(await reply, 'guest:yo');
});
