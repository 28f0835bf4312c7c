// The frame socket's helpers for passt and gvproxy: the guest MAC they are given, and
// the ARP probe that waits for the network process's gateway to answer.
import t, { type Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ArpOp, encodeArp, encodeEthernet, EtherType, ipv4FromString, macFromString } from '../../netstack/index.js';
import { encodeFrame, FrameReader } from '../../proxies/frame-stream.js';
import { macBytes, probeArp } from '../../proxies/frame-socket.js';

t.test('macBytes: unicast only, malformed refused, naming the caller', (t) => {
  t.same([...macBytes('52:54:00:12:34:56', 'passt')], [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
  t.throws(() => macBytes('01:00:5e:00:00:01', 'passt'), { code: 'INVALID_ARGUMENT', message: /passt: MAC 01:00:5e:00:00:01 is a multicast address/ });
  t.throws(() => macBytes('52:54:00:12:34', 'gvproxy'), { code: 'INVALID_ARGUMENT', message: /gvproxy: MAC/ });
  t.end();
});

/** A connected pair of unix stream sockets: ours, and the "network process" end. */
async function socketPair(t: Test): Promise<[Socket, Socket]> {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-frame-socket-'));
  const server = createServer();
  const peer = new Promise<Socket>((resolve) => { server.once('connection', resolve); });
  await new Promise<void>((resolve) => { server.listen(join(dir, 's'), resolve); });
  const ours = connect(join(dir, 's'));
  const theirs = await peer;
  t.teardown(() => { ours.destroy(); theirs.destroy(); server.close(); rmSync(dir, { recursive: true, force: true }); });
  return [ours, theirs];
}

const GUEST_MAC = macFromString('52:54:00:00:00:01')!;
const GW_MAC = macFromString('52:54:00:00:00:02')!;

function arpReply(from: string): Buffer {
  const arp = encodeArp({ op: ArpOp.Reply, senderMac: GW_MAC, senderIp: ipv4FromString(from)!, targetMac: GUEST_MAC, targetIp: ipv4FromString('10.0.2.15')! });
  return encodeFrame(encodeEthernet(GUEST_MAC, GW_MAC, EtherType.ARP, arp));
}

t.test('probeArp: the gateway\'s reply ends the probe; a reply from another address does not', async (t) => {
  const [ours, theirs] = await socketPair(t);
  const probe = { mac: GUEST_MAC, address: '10.0.2.15', gateway: '10.0.2.2', timeoutMs: 3000, ended: new Promise(() => {}) };
  const asked = new Promise<Buffer>((resolve) => { theirs.once('data', resolve); });
  const result = probeArp(ours, new FrameReader(), probe);
  const request = new FrameReader().feed(await asked)[0]!;
  t.equal(request.readUInt16BE(12), EtherType.ARP, 'an ARP request went out');
  theirs.write(arpReply('10.0.2.9'));
  await new Promise((r) => setTimeout(r, 100));
  theirs.write(arpReply('10.0.2.2'));
  t.equal(await result, 'ok');
});

t.test('probeArp: no answer is a timeout', async (t) => {
  const [ours, theirs] = await socketPair(t);
  theirs.resume();
  theirs.write(arpReply('10.0.2.9'));
  const probe = { mac: GUEST_MAC, address: '10.0.2.15', gateway: '10.0.2.2', timeoutMs: 300, ended: new Promise(() => {}) };
  t.equal(await probeArp(ours, new FrameReader(), probe), 'timeout');
});
