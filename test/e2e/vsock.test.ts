/**
 * End to end: vsock under QEMU. A guest program (our static `tsibox-vsock`, put into the
 * initramfs as an extra archive) talks AF_VSOCK; QEMU's vhost-user-vsock-device hands
 * the rings to our VsockDevice over vhost-user; the unix bridges join vsock ports to
 * host unix sockets. Both directions, data checked with sha256 on both sides.
 */
import t from 'tap';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { memoryLogger } from '../helpers/memory-logger.js';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sandbox } from '../../src/index.js';

const { skip, tools } = await e2ePrerequisites(t, { tools: true });

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

t.test('vsock under QEMU', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-vsock-'));
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true });
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => { server.close(() => { r(); }); });
    rmSync(dir, { recursive: true, force: true });
  });

  await t.test('a guest connection over vsock reaches a host unix socket through the bridge, and back', async (t) => {
    const HOST_PORT = 1234;
    const GUEST_PORT = 5000;
    const hostSock = join(dir, 'host.sock'); // the host's server; the guest connects to vsock 2:1234
    const guestSock = join(dir, 'guest.sock'); // tsibox listens here; clients reach guest port 5000
    const toGuest1 = randomBytes(256 * 1024); // reply to the guest's connection
    const toGuest2 = randomBytes(384 * 1024); // sent over the host-initiated connection

    // guest → host: read everything the guest sends, then reply and close.
    let fromGuest1: Buffer | undefined;
    let fromGuest2: Buffer | undefined;
    let hostToGuestAttempts = 0;
    let hostToGuestDone: Promise<void> | undefined;
    let inboundConnections = 0;
    server.on('connection', (s) => {
      inboundConnections++;
      sockets.add(s);
      const chunks: Buffer[] = [];
      s.on('error', () => { /* checked through the data */ });
      s.on('data', (d: Buffer) => chunks.push(d));
      s.on('end', () => {
        fromGuest1 = Buffer.concat(chunks);
        s.end(toGuest1);
        hostToGuestDone ??= hostToGuest();
      });
    });
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(hostSock, resolve); });

    // host → guest: the guest listens on port 5000; retry while it is not listening yet
    // (the bridge then closes our unix connection without a byte).
    const hostToGuest = async (): Promise<void> => {
      for (; hostToGuestAttempts < 100; ) {
        hostToGuestAttempts++;
        const got = await new Promise<Buffer>((resolve) => {
          const c = netConnect(guestSock);
          sockets.add(c);
          const chunks: Buffer[] = [];
          c.on('error', () => { /* refused: an empty answer */ });
          c.on('data', (d: Buffer) => chunks.push(d));
          c.on('close', () => { sockets.delete(c); resolve(Buffer.concat(chunks)); });
          c.end(toGuest2);
        });
        if (got.length > 0) {
          fromGuest2 = got;
          return;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    };

    const script = [
      'set -e',
      'head -c 131072 /dev/urandom > /tmp/g2',
      `tsibox-vsock listen ${GUEST_PORT} < /tmp/g2 > /tmp/in &`,
      'L=$!',
      'head -c 524288 /dev/urandom > /tmp/sent',
      `tsibox-vsock connect 2 ${HOST_PORT} < /tmp/sent > /tmp/reply`,
      'wait $L',
      'sha256sum /tmp/sent /tmp/reply /tmp/in /tmp/g2',
      'wc -c /tmp/reply /tmp/in | head -2',
      'if tsibox-vsock connect 2 4321 < /dev/null; then echo unbridged=0; else echo unbridged=$?; fi',
    ].join('\n');

    const logLines: Array<Record<string, unknown>> = [];
    const started = performance.now();
    const r = await Sandbox.run({
      engine: E2E_ENGINE,
      argv: ['sh', '-c', script],
      extraArchives: [tools!],
      vsockPorts: [
        { port: HOST_PORT, path: hostSock },
        { port: GUEST_PORT, path: guestSock, direction: 'host-to-guest' },
      ],
      logger: memoryLogger(logLines),
      timeoutMs: 60_000,
    });
    const ms = performance.now() - started;
    const out = r.stdout!.toString();
    t.equal(r.exitCode, 0, 'the guest script succeeded', { stdout: out, stderr: r.stderr?.toString() });
    await hostToGuestDone;

    const sums = new Map<string, string>();
    for (const m of out.matchAll(/^([0-9a-f]{64})\s+(\S+)$/gm)) sums.set(m[2]!, m[1]!);
    t.equal(inboundConnections, 1, 'one guest connection reached the host server');
    t.equal(fromGuest1?.length, 524288, 'the host received all 512 KiB the guest sent');
    t.equal(sha(fromGuest1 ?? Buffer.alloc(0)), sums.get('/tmp/sent'), 'guest → host: same sha256 on both sides');
    t.equal(sums.get('/tmp/reply'), sha(toGuest1), 'host → guest reply on the guest connection: same sha256');
    t.equal(sums.get('/tmp/in'), sha(toGuest2), 'host-initiated connection: the guest received the host data');
    t.equal(fromGuest2?.length, 131072, 'host-initiated connection: the host received all the guest sent');
    t.equal(sha(fromGuest2 ?? Buffer.alloc(0)), sums.get('/tmp/g2'), 'host-initiated connection: guest → host sha256');
    t.match(out, /^unbridged=1$/m, 'a connection to an unbridged host port fails in the guest');
    t.match(r.stderr?.toString() ?? '', /tsibox-vsock: connect: Connection (reset by peer|refused)/, 'with ECONNRESET/ECONNREFUSED');

    const events = logLines.filter((l) => l['event'] === 'tsi.connection');
    const outbound = events.find((e) => e['direction'] === 'outbound');
    const inbound = events.find((e) => e['direction'] === 'inbound' && e['bytesToGuest'] === toGuest2.length);
    t.match(outbound, { kind: 'bridge', src: `vsock:${HOST_PORT}`, dst: `unix:${hostSock}`, bytesFromGuest: 524288, bytesToGuest: toGuest1.length }, 'the guest connection is logged');
    t.match(inbound, { kind: 'bridge', src: `unix:${guestSock}`, dst: `vsock:guest:${GUEST_PORT}`, bytesFromGuest: 131072 }, 'the host connection is logged');
    t.notOk(existsSync(guestSock), 'the host-to-guest unix socket is removed afterwards');
    const moved = 524288 + toGuest1.length + toGuest2.length + 131072;
    t.comment(`moved ${moved} bytes over vsock in one sandbox run of ${ms.toFixed(0)} ms (host→guest connect attempts: ${hostToGuestAttempts})`);
  });

  await t.test('a host-to-guest path that already exists is refused before boot', async (t) => {
    const taken = join(dir, 'taken.sock');
    writeFileSync(taken, '');
    await t.rejects(Sandbox.run({ engine: E2E_ENGINE, argv: ['true'], vsockPorts: [{ port: 1, path: taken, direction: 'host-to-guest' }] }),
      { code: 'INVALID_ARGUMENT', message: /already in use/ });
    t.ok(existsSync(taken), 'the existing file is left alone');
  });

  await t.test('bad vsockPorts are INVALID_ARGUMENT', async (t) => {
    await t.rejects(Sandbox.run({ engine: E2E_ENGINE, argv: ['true'], vsockPorts: [{ port: -1, path: '/x' }] }), { code: 'INVALID_ARGUMENT' });
    await t.rejects(Sandbox.run({ engine: E2E_ENGINE, argv: ['true'], vsockPorts: [{ port: 7, path: '/x' }, { port: 7, path: '/y' }] }), { code: 'INVALID_ARGUMENT' });
  });
});
