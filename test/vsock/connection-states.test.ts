// The named states of a vsock connection (src/virtio/vsock/connection-state.ts): each
// test drives a real VsockDevice through the software guest driver and checks `phase`
// (and the coarse public `state`) after every step of one lifecycle.
import t, { type Test } from 'tap';
import { once } from 'node:events';
import { VsockConnection, type ConnectionHost, type ConnectionPhase } from '../../src/virtio/vsock/connection.js';
import { illegalTransition } from '../../src/virtio/vsock/connection-state.js';
import { Op, Shutdown, VsockType, type PacketHeader } from '../../src/virtio/vsock/header.js';
import { GuestVsock, type GuestSocket } from '../support/vsock/guest.js';

function guest(t: Test, opts: ConstructorParameters<typeof GuestVsock>[0] = {}): GuestVsock {
  const g = new GuestVsock(opts);
  t.teardown(() => { g.close(); });
  return g;
}

async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Accepts one guest connection on `port`; resolves with the host side and the guest socket. */
async function accepted(g: GuestVsock, port: number, onConn: (c: VsockConnection) => void = () => {}): Promise<[VsockConnection, GuestSocket]> {
  let conn: VsockConnection | null = null;
  g.device.listen(port, (c) => { conn = c; onConn(c); });
  const s = await g.connect(port);
  return [conn!, s];
}

const open = { recv: false, send: false };

t.test('guest-initiated: established, guest SHUTDOWN(SEND), host end() in its handler, closed', async (t) => {
  const g = guest(t);
  const seen: ConnectionPhase[] = [];
  const [c, s] = await accepted(g, 5000, (c) => {
    seen.push(c.phase);
    c.on('end', () => { seen.push(c.phase); c.end(); seen.push(c.phase); });
  });
  t.same(seen, [{ kind: 'established' }], 'a guest REQUEST lands in established');
  t.equal(c.state, 'connected');
  const closed = once(c, 'close');
  s.end();
  t.same(await closed, ['closed', 'both sides shut down']);
  t.same(seen.slice(1), [
    { kind: 'half-closed', host: 'open', guest: { recv: false, send: true } },
    { kind: 'half-closed', host: 'shutdown-queued', guest: { recv: false, send: true } },
  ]);
  t.same(c.phase, { kind: 'closed', reason: 'closed', detail: 'both sides shut down', guest: { recv: false, send: true } });
  t.equal(c.state, 'closed');
  t.equal(c.guestEnded, true, 'guestEnded stays readable after close');
  t.equal(c.hostEnded, true);
});

t.test('host-initiated: local-init, RESPONSE, guest close() both ways', async (t) => {
  const g = guest(t);
  let gs: GuestSocket | null = null;
  g.listen(6000, (s) => { gs = s; });
  const c = g.device.connect(6000);
  t.same(c.phase, { kind: 'local-init', shutdownQueued: false });
  t.equal(c.state, 'connecting');
  await once(c, 'connect');
  t.same(c.phase, { kind: 'established' });
  const closed = once(c, 'close');
  gs!.close();
  t.same(await closed, ['closed', 'guest closed'], 'SHUTDOWN(RCV|SEND) in one packet closes at once');
  t.equal(c.phase.kind, 'closed');
});

t.test('guest SHUTDOWN(SEND), then host writes on and ends later', async (t) => {
  const g = guest(t);
  const [c, s] = await accepted(g, 5001);
  let got = '';
  s.on('data', (d) => { got += d.toString(); });
  const ended = once(c, 'end');
  s.end();
  await ended;
  t.same(c.phase, { kind: 'half-closed', host: 'open', guest: { recv: false, send: true } });
  t.equal(c.state, 'connected');
  t.equal(c.guestEnded, true);
  t.equal(c.hostEnded, false);
  c.write(Buffer.from('still talking'));
  const closed = once(c, 'close');
  c.end();
  t.same(c.phase, { kind: 'half-closed', host: 'shutdown-queued', guest: { recv: false, send: true } });
  t.equal(c.hostEnded, true);
  t.same(await closed, ['closed', 'both sides shut down']);
  await until(() => s.state === 'closed');
  t.equal(got, 'still talking', 'the bytes before SHUTDOWN(SEND) reached the guest');
});

t.test('host end() first, then guest SHUTDOWN(SEND)', async (t) => {
  const g = guest(t);
  const [c, s] = await accepted(g, 5002);
  c.write(Buffer.from('bye'));
  c.end();
  t.same(c.phase, { kind: 'half-closed', host: 'shutdown-queued', guest: open }, 'SHUTDOWN waits behind the queued bytes');
  await once(s, 'end');
  t.same(c.phase, { kind: 'half-closed', host: 'shutdown-sent', guest: open });
  t.equal(c.write(Buffer.from('ignored')), true, 'write() after end() is ignored');
  t.equal(c.bufferedToGuest, 0);
  const closed = once(c, 'close');
  s.end();
  t.same(await closed, ['closed', 'both sides shut down']);
  t.equal(c.phase.kind, 'closed');
});

t.test('end() while local-init: the SHUTDOWN follows RESPONSE', async (t) => {
  const g = guest(t);
  let gs: GuestSocket | null = null;
  g.listen(6001, (s) => { gs = s; });
  const c = g.device.connect(6001);
  c.write(Buffer.from('early'));
  c.end();
  t.same(c.phase, { kind: 'local-init', shutdownQueued: true });
  t.equal(c.state, 'connecting');
  t.equal(c.hostEnded, true);
  await once(c, 'connect');
  await until(() => gs !== null && gs.peerShutdown === Shutdown.SEND);
  t.same(c.phase, { kind: 'half-closed', host: 'shutdown-sent', guest: open });
});

t.test('guest SHUTDOWN(RCV): output dropped, writes ignored; then SEND closes', async (t) => {
  const g = guest(t);
  const [c, s] = await accepted(g, 5003);
  g.sendControl(s, Op.SHUTDOWN, Shutdown.RCV);
  await until(() => c.phase.kind === 'half-closed');
  t.same(c.phase, { kind: 'half-closed', host: 'open', guest: { recv: true, send: false } });
  c.write(Buffer.from('nobody reads this'));
  t.equal(c.bufferedToGuest, 0);
  const closed = once(c, 'close');
  g.sendControl(s, Op.SHUTDOWN, Shutdown.SEND);
  t.same(await closed, ['closed', 'guest closed']);
  t.same(c.phase, { kind: 'closed', reason: 'closed', detail: 'guest closed', guest: { recv: true, send: true } });
});

t.test('RST while local-init: refused', async (t) => {
  const g = guest(t);
  const c = g.device.connect(6999); // no guest listener: the guest answers RST
  t.equal(c.phase.kind, 'local-init');
  t.same(await once(c, 'close'), ['refused', 'guest sent RST']);
  t.same(c.phase, { kind: 'closed', reason: 'refused', detail: 'guest sent RST', guest: open });
  t.equal(c.state, 'closed');
});

t.test('RST while established: reset-by-guest', async (t) => {
  const g = guest(t);
  const [c, s] = await accepted(g, 5004);
  const closed = once(c, 'close');
  s.reset();
  t.same(await closed, ['reset-by-guest', 'guest sent RST']);
  t.same(c.phase, { kind: 'closed', reason: 'reset-by-guest', detail: 'guest sent RST', guest: open });
});

t.test('connect timeout: local-init → closed(connect-timeout)', async (t) => {
  const g = guest(t, { deviceOptions: { connectTimeoutMs: 30 } });
  g.harness.irq.onTrigger = null; // the guest never looks at its rx queue: no answer
  const c = g.device.connect(6002);
  t.equal(c.phase.kind, 'local-init');
  const alive = setTimeout(() => {}, 2000); // the connect timer is unref'd
  t.same(await once(c, 'close'), ['connect-timeout', 'guest did not answer REQUEST']);
  clearTimeout(alive);
  t.equal(c.phase.kind, 'closed');
});

t.test('resetAfterQueued(): resetting until the queued bytes left, then closed(reset-by-host)', async (t) => {
  const g = guest(t);
  const [c, s] = await accepted(g, 5005);
  let got = '';
  s.on('data', (d) => { got += d.toString(); });
  c.write(Buffer.from('last words'));
  c.end(); // superseded by the reset
  c.resetAfterQueued('upstream reset');
  t.same(c.phase, { kind: 'resetting', detail: 'upstream reset', guest: open });
  t.equal(c.state, 'connected');
  t.equal(c.hostEnded, true);
  t.same(await once(c, 'close'), ['reset-by-host', 'upstream reset']);
  await until(() => s.state === 'closed');
  t.equal(got, 'last words');
  t.equal(s.closeReason, 'reset by host');
  t.equal(s.peerShutdown, 0, 'no SHUTDOWN went out: the RST replaced it');
});

t.test('destroy() and device reset from established', async (t) => {
  const g = guest(t);
  const [c1] = await accepted(g, 5006);
  c1.destroy('bye');
  t.same(c1.phase, { kind: 'closed', reason: 'reset-by-host', detail: 'bye', guest: open });
  const [c2] = await accepted(g, 5007);
  g.harness.driver.reset();
  t.same(c2.phase, { kind: 'closed', reason: 'device-reset', detail: 'driver reset the device', guest: open });
});

t.test('protocol errors from the guest close with protocol-error', async (t) => {
  const g = guest(t);
  const reasons: string[] = [];
  const watch = (c: VsockConnection): void => { c.on('close', (r, d) => { reasons.push(`${r}: ${d}`); }); };

  const [c1, s1] = await accepted(g, 5100, watch);
  g.sendControl(s1, Op.RESPONSE, 0);
  await until(() => c1.phase.kind === 'closed');

  const [c2, s2] = await accepted(g, 5101, watch);
  s2.end();
  void s2.write(Buffer.from('after end'));
  await until(() => c2.phase.kind === 'closed');

  const [c3, s3] = await accepted(g, 5102, watch);
  s3.credit({ ...s3.header(0, 0, 0), bufAlloc: 1 << 20, fwdCnt: 0 }); // pretend the host gave 1 MiB
  void s3.write(Buffer.alloc(512 * 1024));
  await until(() => c3.phase.kind === 'closed');

  t.same(reasons, [
    'protocol-error: RESPONSE on a connected socket',
    'protocol-error: RW after SHUTDOWN(SEND)',
    'protocol-error: guest sent 65536 bytes past its credit (buf_alloc 262144)',
  ]);
  t.same(c2.phase, { kind: 'closed', reason: 'protocol-error', detail: 'RW after SHUTDOWN(SEND)', guest: { recv: false, send: true } });
});

t.test('protocol errors while local-init (packets straight to the connection)', (t) => {
  const host: ConnectionHost = { wake() {}, forget() {}, accountBuffered() {} };
  const mk = (): VsockConnection => new VsockConnection(host, {
    type: VsockType.STREAM, hostPort: 0x4000_0000, guestPort: 7, guestCid: 3n, initiator: 'host', bufAlloc: 4096, highWater: 4096,
  });
  const pkt = (op: number, flags = 0): PacketHeader => ({
    srcCid: 3n, dstCid: 2n, srcPort: 7, dstPort: 0x4000_0000, len: 0, type: VsockType.STREAM, op, flags, bufAlloc: 4096, fwdCnt: 0,
  });
  for (const [op, detail] of [
    [Op.SHUTDOWN, 'SHUTDOWN before RESPONSE'], [Op.RW, 'RW before RESPONSE'], [Op.REQUEST, 'REQUEST on an existing connection'],
  ] as const) {
    const c = mk();
    c.receive(pkt(op, op === Op.SHUTDOWN ? Shutdown.SEND : 0), null);
    t.same(c.phase, { kind: 'closed', reason: 'protocol-error', detail, guest: open }, detail);
  }
  const c = mk();
  c.receive(pkt(Op.CREDIT_UPDATE), null);
  t.same(c.phase, { kind: 'local-init', shutdownQueued: false }, 'credit packets change no state');
  t.end();
});

t.test('the transition rule refuses what the diagram does not have', (t) => {
  const closed: ConnectionPhase = { kind: 'closed', reason: 'closed', detail: '', guest: open };
  const hc = (host: 'open' | 'shutdown-queued' | 'shutdown-sent', recv = false, send = false): ConnectionPhase =>
    ({ kind: 'half-closed', host, guest: { recv, send } });
  t.match(illegalTransition(closed, { kind: 'established' }), /not a transition/);
  t.match(illegalTransition({ kind: 'established' }, { kind: 'local-init', shutdownQueued: false }), /not a transition/);
  t.match(illegalTransition({ kind: 'resetting', detail: '', guest: open }, hc('open')), /not a transition/);
  t.match(illegalTransition(hc('shutdown-sent'), hc('shutdown-queued')), /cannot go back/);
  t.match(illegalTransition(hc('open', true), hc('open')), /cannot clear/);
  t.match(illegalTransition({ kind: 'local-init', shutdownQueued: false }, hc('shutdown-queued')), /RESPONSE after end/);
  t.equal(illegalTransition({ kind: 'local-init', shutdownQueued: true }, hc('shutdown-queued')), null);
  t.equal(illegalTransition({ kind: 'established' }, hc('open', false, true)), null);
  t.equal(illegalTransition(hc('shutdown-queued', false, true), { kind: 'resetting', detail: 'x', guest: { recv: false, send: true } }), null);
  t.end();
});
