// Check-then-use on guest memory: the filter's decision and the bytes forwarded must be
// the same bytes. Here "another vCPU" rewrites the frame in guest memory (the UDP
// destination port, from allowed A to denied D) after the filter has judged it and
// before the backend uses it: the backend must still get port A, and never a view of
// guest memory.
import t from 'tap';
import { decodeFrame } from '../../netstack/index.js';
import { FramePolicyFilter } from '../../src/frame-filter/frame-policy.js';
import { Policy } from '../../src/policy/index.js';
import { createHarness } from '../support/virtio/harness.js';
import { NET_HDR_SIZE, NetDevice, RX_QUEUE, TX_QUEUE, type FrameBackend, type FramePort } from '../../src/virtio/net/index.js';
import { GUEST, GW, udp } from '../helpers/frames.js';

const A = 8000;
const D = 9999;

/**
 * Plays the guest's other vCPU: rewrites the frame's destination port in guest memory
 * (the buffers the device was handed), then records what the backend was given.
 */
class RacingBackend implements FrameBackend {
  port!: FramePort;
  /** Guest memory the device sliced lately (the tx buffers among them). */
  recent: Uint8Array[] = [];
  guestBuffer: ArrayBufferLike | null = null;
  ports: number[] = [];
  views = 0;
  rewritten = 0;
  attach(p: FramePort): void { this.port = p; }
  send(frame: Uint8Array): boolean {
    if (frame.buffer === this.guestBuffer) this.views++;
    const marker = Buffer.from(frame.subarray(42, 58));
    for (const s of this.recent) {
      const b = Buffer.from(s.buffer, s.byteOffset, s.length);
      const at = b.indexOf(marker);
      if (at < 0) continue;
      b.writeUInt16BE(D, at - 6); // the UDP destination port, in guest memory
      this.rewritten++;
      break;
    }
    const d = decodeFrame(Buffer.from(frame));
    if (d.ok && d.value.kind === 'ip' && d.value.l4.kind === 'udp') this.ports.push(d.value.l4.udp.dstPort);
    return true;
  }
  pause(): void {}
  resume(): void {}
  close(): void {}
}

t.test('a frame rewritten in guest memory after the decision: the backend gets the judged bytes', async (t) => {
  const inner = new RacingBackend();
  const policy = new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'udp', cidr: '127.0.0.1', ports: A }] });
  const filter = new FramePolicyFilter({ inner, policy, gateway: '10.0.2.2', guestAddress: '10.0.2.15', mapGatewayToHost: true, deferReplies: false });
  const dev = new NetDevice({ backend: filter, queueSize: 256 });
  const h = createHarness(dev, {
    memorySize: 4 * 1024 * 1024,
    // Remember the guest memory the device looks at, as the other vCPU knows its buffers.
    wrapMemory: (m) => ({
      contains: (a, l) => m.contains(a, l),
      slice: (a, l) => {
        const v = m.slice(a, l);
        if (l >= 64) inner.recent = [v, ...inner.recent.slice(0, 3)];
        return v;
      },
      readU16: (a) => m.readU16(a), readU32: (a) => m.readU32(a),
      writeU16: (a, v) => { m.writeU16(a, v); }, writeU32: (a, v) => { m.writeU32(a, v); },
    }),
  });
  t.teardown(() => { filter.close(); h.close(); });
  inner.guestBuffer = h.memory.slice(0, 16).buffer;
  h.driver.negotiate();
  h.driver.setupQueue(RX_QUEUE, { size: 256, slotSize: 2048 });
  const tx = h.driver.setupQueue(TX_QUEUE, { size: 256, slotSize: 2048 });
  h.driver.driverOk();
  const ROUNDS = 80;
  const PER = 250;
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < PER; i++) {
      const marker = Buffer.alloc(16);
      marker.writeUInt32BE(round, 0);
      marker.writeUInt32BE(i, 4);
      marker.write('tsibox-race', 8, 'latin1');
      // Each frame's own source port, so each is a new flow judged on its own.
      const f = udp(GUEST, 10000 + ((round * PER + i) % 50000), GW, A, Buffer.concat([marker, Buffer.alloc(16)]));
      tx.add([Buffer.concat([Buffer.alloc(NET_HDR_SIZE), f])], []);
    }
    tx.kick();
    tx.reap();
  }
  t.equal(inner.rewritten, ROUNDS * PER, 'every frame was rewritten in guest memory during the send');
  t.equal(inner.ports.length, ROUNDS * PER, `${ROUNDS * PER} frames forwarded`);
  t.equal(inner.ports.filter((p) => p === D).length, 0, 'none reached the denied port');
  t.equal(inner.views, 0, 'the backend never got a view of guest memory');
});
