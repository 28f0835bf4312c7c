// The passt launcher and frame backend, host side only (no guest): missing binary,
// start failures carry passt's stderr, the start-up probe, frames through a real
// passt, backpressure on the socket, and passt's lifetime tied to ours.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { arpRequest, findPasst, PasstBackend, passtArgs, startPasst } from '../../proxies/passt.js';
import { encodeFrame, FrameReader } from '../../proxies/frame-stream.js';
import { socketPair } from '../../src/sys/socket.js';
import type { FramePort } from '../../netstack/frame-port.js';
import { TsiboxError } from '../../src/errors.js';

const log = pino({ level: 'silent' });
const NET = { address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', mac: '02:00:00:00:00:0f' };
const dir = mkdtempSync(join(tmpdir(), 'tsibox-passt-test-'));
t.teardown(() => { rmSync(dir, { recursive: true, force: true }); });

function script(name: string, body: string): string {
  const p = join(dir, name);
  writeFileSync(p, `#!/bin/sh\n${body}\n`);
  chmodSync(p, 0o755);
  return p;
}

/** Why real passt cannot run here, or false. */
async function passtUnusable(): Promise<string | false> {
  if (findPasst() === undefined) return 'passt is not installed (Debian: apt-get install passt)';
  try {
    const p = await startPasst({ ...NET, logger: log });
    await p.close();
    return false;
  } catch (e) {
    return `passt cannot run here: ${(e as Error).message}`;
  }
}
const noPasst = await passtUnusable();

t.test('argv: options map to passt flags; bad values are rejected', (t) => {
  t.same(passtArgs({ address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', dns: ['10.0.2.3'], dnsForward: '10.0.2.3', tcpForwards: ['8080:80'] }, 3),
    ['-f', '-1', '--fd', '3', '-4', '-a', '10.0.2.15', '-n', '24', '-g', '10.0.2.2', '-D', '10.0.2.3', '--dns-forward', '10.0.2.3', '-t', '8080:80']);
  const bad = (o: Partial<Parameters<typeof passtArgs>[0]>): void => {
    t.throws(() => passtArgs({ address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', ...o }, 3), { code: 'INVALID_ARGUMENT' });
  };
  bad({ address: 'example.com' });
  bad({ gateway: '::1' });
  bad({ prefix: 31 });
  bad({ gateway: '10.0.2.15' });
  bad({ dns: ['x'] });
  bad({ tcpForwards: ['--help'] });
  bad({ udpForwards: ['1 2'] });
  t.end();
});

t.test('a missing passt names the Debian package', async (t) => {
  const err = await startPasst({ ...NET, logger: log, binary: join(dir, 'no-such-passt') }).catch((e: unknown) => e);
  t.ok(err instanceof TsiboxError);
  t.match(err, { code: 'ENGINE_UNAVAILABLE', message: /apt-get install passt/ });
});

t.test('passt that exits at start: the error carries its stderr', async (t) => {
  const bin = script('failing-passt', 'echo "Failed to send 10 bytes to syslog" >&2\necho "Couldn\'t create user namespace: Operation not permitted" >&2\nexit 1');
  const err = await startPasst({ ...NET, logger: log, binary: bin }).catch((e: unknown) => e);
  t.ok(err instanceof TsiboxError);
  t.match(err, { code: 'DEVICE_ERROR', message: /exited with status 1.*\n.*user namespace: Operation not permitted/s });
  t.notMatch((err as Error).message, /syslog/, 'syslog noise removed');
});

t.test('passt that never answers the probe: timeout error, and it is killed', async (t) => {
  const pidFile = join(dir, 'silent.pid');
  const bin = script('silent-passt', `echo $$ > ${pidFile}\nexec sleep 30`);
  const started = performance.now();
  await t.rejects(startPasst({ ...NET, logger: log, binary: bin, startTimeoutMs: 300 }), /did not answer the start-up ARP probe within 300 ms/);
  t.ok(performance.now() - started < 3000);
  const pid = Number(spawnSync('cat', [pidFile], { encoding: 'utf8' }).stdout.trim());
  t.throws(() => process.kill(pid, 0), 'the process is gone');
});

t.test('real passt: ARP through the backend, then it exits when we close', { skip: noPasst }, async (t) => {
  const p = await startPasst({ ...NET, logger: log });
  t.teardown(() => p.close());
  t.ok(p.running);
  const frames: Buffer[] = [];
  let closed: string | null | undefined;
  let gotReply: () => void = () => {};
  const replied = new Promise<void>((r) => { gotReply = r; });
  const port: FramePort = {
    deliver: (f) => { frames.push(f); if (f.readUInt16BE(12) === 0x0806) gotReply(); },
    writable: () => {},
    closed: (r) => { closed = r; },
  };
  p.backend.attach(port);
  t.equal(p.backend.send(arpRequest(Buffer.from('02000000000f', 'hex'), NET.address, NET.gateway)), true);
  await Promise.race([replied, new Promise((_, rej) => setTimeout(() => { rej(new Error('no ARP reply in 3 s')); }, 3000))]);
  const reply = frames.find((f) => f.readUInt16BE(12) === 0x0806)!;
  t.equal(reply.readUInt16BE(20), 2, 'ARP reply');
  t.same([...reply.subarray(28, 32)], [10, 0, 2, 2], 'from the gateway');
  t.same([...reply.subarray(0, 6)], [2, 0, 0, 0, 0, 0x0f], 'to our MAC');
  await p.close();
  t.equal(p.running, false);
  t.equal(closed, null, 'the port saw an orderly close');
});

t.test('real passt dies with its parent even after SIGKILL (socket end of stream)', { skip: noPasst }, async (t) => {
  const mod = new URL('../../proxies/passt.js', import.meta.url).href;
  const code = `
    import { startPasst } from ${JSON.stringify(mod)};
    import { pino } from 'pino';
    const p = await startPasst({ address: '10.0.2.15', prefix: 24, gateway: '10.0.2.2', mac: '02:00:00:00:00:0f', logger: pino({ level: 'silent' }) });
    console.log('PID ' + p.pid);
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'], cwd: process.cwd() });
  t.teardown(() => { child.kill('SIGKILL'); });
  const pid = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const m = /PID (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('close', () => { reject(new Error(`child ended: ${out}`)); });
    setTimeout(() => { reject(new Error('child did not start passt in 10 s')); }, 10_000).unref();
  });
  // `pid` is setpriv's pid, which exec'd passt: the same process.
  t.doesNotThrow(() => process.kill(pid, 0), 'passt runs');
  child.kill('SIGKILL');
  let gone = false;
  for (let i = 0; i < 50 && !gone; i++) {
    await new Promise((r) => setTimeout(r, 100));
    try { process.kill(pid, 0); } catch { gone = true; }
  }
  t.ok(gone, 'passt exited within 5 s of its parent being SIGKILLed');
});

t.test('backend backpressure: send() says full when the socket buffer fills, writable() follows the drain', async (t) => {
  const [a, b] = socketPair();
  const ours = new Socket({ fd: a, readable: true, writable: true });
  const peer = new Socket({ fd: b, readable: true, writable: true });
  peer.pause();
  t.teardown(() => { ours.destroy(); peer.destroy(); });
  const backend = new PasstBackend(ours, log);
  let writableCalls = 0;
  const delivered: Buffer[] = [];
  backend.attach({ deliver: (f) => delivered.push(f), writable: () => { writableCalls++; }, closed: () => {} });
  const frame = Buffer.alloc(1500, 7);
  let sent = 0;
  while (backend.send(frame)) if (++sent > 100_000) break;
  t.ok(sent < 100_000, `send() returned false after ${sent} frames`);
  const reader = new FrameReader();
  let got = 0;
  peer.on('data', (d: Buffer) => { got += reader.feed(d).length; });
  peer.resume();
  await new Promise<void>((resolve) => {
    const check = (): void => { if (writableCalls > 0) resolve(); else setTimeout(check, 5); };
    check();
  });
  t.equal(writableCalls, 1);
  // frames from the peer reach the port; pause() holds them
  backend.pause();
  peer.write(encodeFrame(Buffer.alloc(60, 1)));
  await new Promise((r) => setTimeout(r, 50));
  t.equal(delivered.length, 0, 'nothing delivered while paused');
  backend.resume();
  await new Promise((r) => setTimeout(r, 50));
  t.equal(delivered.length, 1);
  // a broken length from the peer closes the backend with a reason
  let reason: string | null | undefined;
  const [c, d] = socketPair();
  const s2 = new Socket({ fd: c, readable: true, writable: true });
  const p2 = new Socket({ fd: d, readable: true, writable: true });
  t.teardown(() => { s2.destroy(); p2.destroy(); });
  const b2 = new PasstBackend(s2, log);
  b2.attach({ deliver: () => {}, writable: () => {}, closed: (r) => { reason = r; } });
  p2.write(Buffer.from('00000000', 'hex'));
  await new Promise((r) => setTimeout(r, 50));
  t.match(reason, /frame length 0/);
  t.equal(b2.send(Buffer.alloc(60)), true, 'send after close is a no-op');
});
