/**
 * End to end, TSI behaving like Linux's own stack where the guest can tell
 * (docs/tsi-protocol.md §11): a receive-first UDP server published through the port
 * map (and still reachable by guest-local clients), and a host-side reset read as
 * ECONNRESET after the bytes sent before it. Host servers listen on 127.0.0.1 only;
 * the guest names them through the host-loopback alias.
 */
import t from 'tap';
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import pino from 'pino';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';
import { Sandbox } from '../../src/index.js';
import { Policy } from '../../src/policy/index.js';
import { PortMap } from '../../src/portmap/index.js';
import type { VsockDevice } from '../../src/virtio/vsock/device.js';
import { fetchPage } from '../helpers/http.js';

const { skip, tools } = await e2ePrerequisites(t, { tools: true });
const ALIAS4 = '10.0.2.2';

/** Runs `script` in a TSI sandbox that may reach the host's loopback TCP servers through the alias. */
function runWithHostTcp(script: string): ReturnType<typeof Sandbox.run> {
  return Sandbox.run({
    engine: E2E_ENGINE, argv: ['sh', '-c', script], extraArchives: [tools!], timeoutMs: 60_000,
    network: {
      mode: 'tsi', hostLoopbackAlias: ALIAS4,
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: ['127.0.0.0/8'], name: 'host loopback' }] }),
    },
  });
}

async function until<T>(f: () => T | undefined, ms: number): Promise<T | undefined> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('a published receive-first UDP server: host clients get replies, guest clients too', { skip }, async (t) => {
  const portMap = new PortMap(['127.0.0.1:0:5353/udp']);
  const client = createSocket('udp4');
  t.teardown(() => { client.close(); });
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', r));
  const replies: string[] = [];
  client.on('message', (m) => { replies.push(m.toString()); });

  const script = [
    'tsibox-tcp -u -l -v 5353 > /tmp/ready & srv=$!',
    'for i in $(seq 50); do [ -s /tmp/ready ] && break; sleep 0.1; done; cat /tmp/ready',
    // A guest-local client still reaches the same socket through the guest stack.
    'echo local-hello | tsibox-tcp -u 127.0.0.1 5353; echo local=$?',
    // The last reply leaves the guest's vsock queue after the server exits; a VM that
    // powered off at once could drop it, as a NIC's queue at power-off would.
    'wait $srv; echo server=$?; sleep 1',
  ].join('\n');
  const hostSide = (async () => {
    const port = await until(() => portMap.lookupGuest('udp', 5353)?.boundPort ?? undefined, 30_000);
    if (port === undefined) return undefined;
    // Only after the guest client had its turn: our "quit" ends the server.
    for (const msg of ['host-hello', 'host-again']) {
      client.send(msg, port, '127.0.0.1');
      await until(() => (replies.some((r) => r === `echo:${msg}`) ? true : undefined), 10_000);
    }
    await new Promise((r) => setTimeout(r, 1500));
    client.send('quit', port, '127.0.0.1');
    await until(() => (replies.includes('echo:quit') ? true : undefined), 10_000);
    return port;
  })();
  const r = await Sandbox.run({
    engine: E2E_ENGINE, argv: ['sh', '-c', script], extraArchives: [tools!], timeoutMs: 60_000,
    network: {
      mode: 'tsi', portMap, hostLoopbackAlias: ALIAS4,
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', direction: 'inbound', protocol: 'udp', cidr: ['127.0.0.0/8'], name: 'host clients' }] }),
    },
  });
  const port = await hostSide;
  const out = r.stdout!.toString();
  const err = r.stderr?.toString() ?? '';
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: err });
  t.ok(port !== undefined && port > 0, 'the host bound the mapped UDP port before the server sent anything');
  t.match(out, /^ready$/m);
  t.same(replies, ['echo:host-hello', 'echo:host-again', 'echo:quit'], 'every host datagram answered, in order, to the host client');
  t.match(out, /^echo:local-hello$/m, 'a guest-local client got its reply from the same socket');
  t.match(out, /^local=0$/m);
  t.match(out, /^server=0$/m);
  t.match(err, /^from 127\.0\.0\.1:\d+$/m, 'the server saw the host client\'s real address');
});

t.test('a host reset after 6 bytes: the guest reads the 6 bytes, then ECONNRESET', { skip }, async (t) => {
  const sockets = new Set<Socket>();
  let graceful = 0;
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => { /* the reset is ours */ });
    const mode = graceful++ === 0 ? 'reset' : 'end';
    s.write('sixby\n', () => {
      setTimeout(() => { if (mode === 'reset') s.resetAndDestroy(); else s.end(); }, 200);
    });
  });
  t.teardown(() => { for (const s of sockets) s.destroy(); server.close(); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const script = [
    `sleep 1 | tsibox-tcp ${ALIAS4} ${port}; echo reset=$?`,
    `sleep 1 | tsibox-tcp ${ALIAS4} ${port}; echo graceful=$?`,
  ].join('\n');
  const r = await runWithHostTcp(script);
  const out = r.stdout!.toString();
  const err = r.stderr?.toString() ?? '';
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: err });
  t.equal(out.split('\n').filter((l) => l === 'sixby').length, 2, 'both connections delivered the bytes sent before the end');
  t.match(out, /^reset=1$/m, 'the reset connection fails');
  t.match(err, /Connection reset by peer/, 'with ECONNRESET');
  t.match(out, /^graceful=0$/m, 'a graceful end is still EOF');
  t.equal(graceful, 2);
});

t.test('port mappings survive: 100 closed listeners, then a vsock transport reset', { skip }, async (t) => {
  const portMap = new PortMap(['127.0.0.1:0:8080', '127.0.0.1:0:8081']);
  let vsock: VsockDevice | undefined;
  // TSIBOX_DEBUG_RESET=1: the host's debug log and the guest's dmesg as comments.
  const debug = process.env['TSIBOX_DEBUG_RESET'] !== undefined;
  const records: string[] = [];
  const logger = pino({ level: debug ? 'debug' : 'silent' }, { write: (l: string) => { if (/tsi|vsock|listen/i.test(l)) records.push(l); } });
  const script = [
    'mkdir -p /tmp/w && echo page-8080 > /tmp/w/index.html && httpd -p 8080 -h /tmp/w',
    // 100 unmapped listeners opened and closed: 100 UNLISTENs the host answers.
    'for i in $(seq 100); do nc -l -p $((9000 + i)) & p=$!; sleep 0.01; kill $p; done 2>/dev/null; wait 2>/dev/null',
    'echo closed-100',
    // A listener made after them still registers.
    'mkdir -p /tmp/v && echo page-8081 > /tmp/v/index.html && httpd -p 8081 -h /tmp/v',
    // Held by the host until it is done; the transport reset ends the first hold.
    `tsibox-tcp ${ALIAS4} ${'$DONE'} < /dev/null || tsibox-tcp ${ALIAS4} ${'$DONE'} < /dev/null`,
    'dmesg | grep tsi: >&2; true',
  ].join('\n');
  // Holds the guest until the host is done (half-open: the guest's EOF does not end it).
  const done = createServer({ allowHalfOpen: true });
  const doneSockets: Socket[] = [];
  done.on('connection', (s) => { doneSockets.push(s); });
  await new Promise<void>((r) => done.listen(0, '127.0.0.1', r));
  t.teardown(() => { for (const s of doneSockets) s.destroy(); done.close(); });
  const donePort = (done.address() as AddressInfo).port;

  const hostSide = (async () => {
    const bound = (g: number): number | undefined => portMap.lookupGuest('tcp', g)?.boundPort ?? undefined;
    await until(() => (bound(8081) !== undefined ? true : undefined), 60_000);
    const before = [await fetchPage(bound(8080) ?? 0), await fetchPage(bound(8081) ?? 0)];
    t.comment(`before the reset: ${JSON.stringify(before)} (${bound(8080)}, ${bound(8081)})`);
    vsock!.resetTransport();
    // The host forgot the listeners with the control session; the guest registers them again.
    await new Promise((r) => setTimeout(r, 200));
    await until(() => (bound(8080) !== undefined && bound(8081) !== undefined ? true : undefined), 20_000);
    const after = [await fetchPage(bound(8080) ?? 0), await fetchPage(bound(8081) ?? 0)];
    t.comment(`after the reset: ${JSON.stringify(after)} (${bound(8080)}, ${bound(8081)})`);
    if (debug) t.comment(`host log:\n${records.join('')}`);
    for (const s of doneSockets) s.end();
    return { before, after };
  })();
  const r = await Sandbox.run({
    engine: E2E_ENGINE, argv: ['sh', '-c', script], extraArchives: [tools!], timeoutMs: 120_000, env: { DONE: String(donePort) },
    onDevices: (d) => { vsock = d.vsock; }, logger,
    network: {
      mode: 'tsi', portMap, hostLoopbackAlias: ALIAS4,
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', cidr: ['127.0.0.0/8'], name: 'host loopback' }] }),
    },
  });
  const host = await hostSide;
  const out = r.stdout!.toString();
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: r.stderr?.toString() });
  if (debug) t.comment(`guest stderr:\n${r.stderr?.toString() ?? ''}`);
  t.match(out, /^closed-100$/m);
  t.same(host.before, ['page-8080\n', 'page-8081\n'], 'both published listeners serve, the second made after 100 UNLISTENs');
  // Under the KVM engine the reset is a real TRANSPORT_RESET event; the guest registers
  // its listeners again (its LISTENs are answered 0) but the host does not expose them:
  // open, see the issue 14 closing note. Under QEMU (per-connection RSTs) it works.
  t.same(host.after, ['page-8080\n', 'page-8081\n'], 'and both again after the transport reset', {
    stderr: r.stderr?.toString(),
    ...(E2E_ENGINE === 'kvm' ? { todo: 'KVM engine: re-registered listeners not exposed after a TRANSPORT_RESET event' } : {}),
  });
});

t.test('AF_UNIX through TSI: a path the policy names reaches the host socket; others stay guest-local', { skip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-unix-'));
  const path = join(dir, 'echo.sock');
  const other = join(dir, 'other.sock');
  const sockets = new Set<Socket>();
  let otherConnections = 0;
  const echo = createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s);
    s.on('error', () => { /* counted through the data */ });
    s.on('data', (d: Buffer) => { s.write(d); });
    s.on('end', () => { s.end(); });
  });
  const otherServer = createServer((s) => { otherConnections++; s.destroy(); });
  await new Promise<void>((r) => echo.listen(path, r));
  await new Promise<void>((r) => otherServer.listen(other, r));
  t.teardown(() => { for (const s of sockets) s.destroy(); echo.close(); otherServer.close(); rmSync(dir, { recursive: true, force: true }); });
  const script = [
    `echo hello-unix | tsibox-tcp -v -U ${path}; echo echo=$?`,
    `echo x | tsibox-tcp -U ${other}; echo other=$?`,
  ].join('\n');
  const r = await Sandbox.run({
    engine: E2E_ENGINE, argv: ['sh', '-c', script], extraArchives: [tools!], timeoutMs: 60_000,
    network: {
      mode: 'tsi', unixSockets: true,
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'unix', path, name: 'the echo socket' }] }),
    },
  });
  const out = r.stdout!.toString();
  const err = r.stderr?.toString() ?? '';
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: err });
  t.match(out, /^hello-unix$/m, 'the host echo server answered');
  t.match(out, /^echo=0$/m);
  t.match(err, new RegExp(`^peer ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'), 'getpeername() is the path connected to');
  t.match(err, /^tcp-option Operation not supported$/m, 'a non-socket-level option on a TSI unix socket is refused, as on any unix socket');
  t.match(out, /^other=2$/m, 'a path no rule names stays guest-local (ENOENT in the guest)');
  t.equal(otherConnections, 0, 'the host socket no rule names saw no connection');
});

t.test('a process in a network namespace of its own stays off TSI; the rest of the guest keeps it', { skip }, async (t) => {
  let connections = 0;
  const server = createServer((s) => { connections++; s.end('hi\n'); });
  t.teardown(() => { server.close(); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const script = [
    `tsibox-tcp ${ALIAS4} ${port} < /dev/null; echo outside=$?`,
    `unshare -n tsibox-tcp ${ALIAS4} ${port} < /dev/null; echo netns=$?`,
    `unshare -r -n tsibox-tcp ${ALIAS4} ${port} < /dev/null; echo userns=$?`,
    'unshare -p -f -u -i sh -c "hostname inner; echo pid=\\$\\$"',
  ].join('\n');
  const r = await runWithHostTcp(script);
  const out = r.stdout!.toString();
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: r.stderr?.toString() });
  t.match(out, /^outside=0$/m, 'the initial namespace reaches the host through TSI');
  t.match(out, /^netns=101$/m, 'unshare -n: ENETUNREACH, no TSI');
  t.match(out, /^userns=101$/m, 'unshare -r -n (unprivileged style): the same');
  t.match(out, /^pid=1$/m, 'pid, uts and ipc namespaces work too');
  t.equal(connections, 1, 'only the first connect reached the host');
});

/**
 * One line from a host client of a published guest port, or what happened instead.
 * Bounded: 30 s.
 */
function readLine(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    let b = '';
    const timer = setTimeout(() => { s.destroy(); resolve(`timeout after ${JSON.stringify(b)}`); }, 30_000);
    s.setEncoding('utf8');
    s.on('data', (d: string) => { b += d; });
    s.on('error', (e: NodeJS.ErrnoException) => { b += `<${e.code ?? e.message}>`; });
    s.on('close', () => { clearTimeout(timer); resolve(b); });
  });
}

t.test('accept() never waits for a late ACCEPT header: O_NONBLOCK stays non-blocking, signals lose no client', { skip }, async (t) => {
  const HEADER_DELAY_MS = 1500;
  const N = 5;
  const portMap = new PortMap(['127.0.0.1:0:8090', '127.0.0.1:0:8091']);
  const script = [
    `tsibox-accept -n -c ${N} 8090 > /tmp/nb.out 2>&1 & a=$!`,
    // SIGALRM every 2 ms, handler without SA_RESTART: blocking waits see EINTR.
    `tsibox-accept -s 2000 -c ${N} 8091 > /tmp/sig.out 2>&1 & b=$!`,
    'wait $a; echo nb=$?; wait $b; echo sig=$?',
    'sed "s/^/nb: /" /tmp/nb.out; sed "s/^/sig: /" /tmp/sig.out',
  ].join('\n');
  const hostSide = (async () => {
    const bound = (g: number): number | undefined => portMap.lookupGuest('tcp', g)?.boundPort ?? undefined;
    await until(() => (bound(8090) !== undefined && bound(8091) !== undefined ? true : undefined), 60_000);
    const lines = await Promise.all([8090, 8091].flatMap((g) => Array.from({ length: N }, () => readLine(bound(g) ?? 0))));
    return { nb: lines.slice(0, N), sig: lines.slice(N) };
  })();
  const r = await Sandbox.run({
    engine: E2E_ENGINE, argv: ['sh', '-c', script], extraArchives: [tools!], timeoutMs: 90_000,
    // A loaded host: the ACCEPT header follows the vsock handshake late. The guest's
    // listener sees the connection in its queue long before it can be accepted.
    onDevices: (d) => {
      const device = d.vsock;
      const connectOrig = device.connect.bind(device);
      device.connect = (port: number) => {
        const conn = connectOrig(port);
        const emitter = conn as unknown as { emit: (event: string | symbol, ...args: unknown[]) => boolean };
        const emit = emitter.emit.bind(conn);
        emitter.emit = (event, ...args) => {
          if (event !== 'connect') return emit(event, ...args);
          setTimeout(() => { emit(event, ...args); }, HEADER_DELAY_MS);
          return true;
        };
        return conn;
      };
    },
    network: {
      mode: 'tsi', portMap,
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', direction: 'inbound', name: 'host clients' }] }),
    },
  });
  const host = await hostSide;
  const out = r.stdout!.toString();
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: r.stderr?.toString() });
  t.match(out, /^nb=0$/m, 'the O_NONBLOCK server accepted every client');
  t.match(out, /^sig=0$/m, 'the server under signals accepted every client');
  t.same(host.nb.map((l) => /^conn \d+\n$/.test(l)), Array(N).fill(true), 'each host client of the O_NONBLOCK server got its line', { lines: host.nb });
  t.same(host.sig.map((l) => /^conn \d+\n$/.test(l)), Array(N).fill(true), 'each host client of the server under signals got its line', { lines: host.sig });
  const nb = /^nb: accepted (\d+) eintr \d+ eagain (\d+) slowest_ms (\d+)$/m.exec(out);
  t.ok(nb, 'the O_NONBLOCK server reported');
  // Each ACCEPT header came 1.5 s after its connection was queued: a call that waited
  // for it would take that long.
  t.ok(Number(nb?.[3]) < HEADER_DELAY_MS / 2, `no accept() call waited for a header (slowest ${nb?.[3]} ms)`);
  t.ok(Number(nb?.[2]) > 0, 'some accept() calls found only connections still waiting for their header (EAGAIN)');
  const sig = /^sig: accepted (\d+) eintr (\d+)/m.exec(out);
  t.ok(Number(sig?.[2]) > 0, `the blocking accept() was interrupted (${sig?.[2]} EINTR) and no client was lost`);
});

// The guest kernel's behaviour is the same under both engines; filling 4096 vsock
// connections under the nested host's TCG-in-TCG takes minutes, so QEMU only.
const fullSkip = skip !== false ? skip : E2E_ENGINE === 'kvm' ? 'engine kvm: 4096 vsock connects under nested TCG take minutes (the guest kernel path is engine-independent)' : false;
t.test('a host whose vsock table is full refuses one connect; TSI stays in charge (no 5 s detour through the guest stack)', { skip: fullSkip }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-full-'));
  const path = join(dir, 'sink.sock');
  const held = new Set<Socket>();
  // The bridge's host side: holds what the guest opens.
  const sink = createServer((s) => { held.add(s); s.on('error', () => { /* closed with the run */ }); s.on('close', () => { held.delete(s); }); });
  await new Promise<void>((r) => sink.listen(path, r));
  let tcpConnections = 0;
  const server = createServer((s) => { tcpConnections++; s.end('hi\n'); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => { for (const s of held) s.destroy(); sink.close(); server.close(); rmSync(dir, { recursive: true, force: true }); });
  const port = (server.address() as AddressInfo).port;
  const script = [
    `tsibox-tcp ${ALIAS4} ${port} < /dev/null > /dev/null; echo before=$?`,
    // Fill the host's vsock connection table (4096) through a vsock bridge.
    'ulimit -n 8192; mkfifo /tmp/hold; tsibox-vsock hold 2 5000 5000 < /tmp/hold > /tmp/held & h=$!; exec 3> /tmp/hold',
    'for i in $(seq 600); do [ -s /tmp/held ] && break; sleep 0.1; done; cat /tmp/held',
    `tsibox-tcp ${ALIAS4} ${port} < /dev/null; echo full=$?`,
    `tsibox-tcp ${ALIAS4} ${port} < /dev/null; echo full_again=$?`,
    'exec 3>&-; wait $h',
    // At once, not 5 s later: the table has room again and TSI was never given up.
    `tsibox-tcp ${ALIAS4} ${port} < /dev/null > /dev/null; echo after=$?`,
  ].join('\n');
  const r = await Sandbox.run({
    engine: E2E_ENGINE, argv: ['sh', '-c', script], extraArchives: [tools!], timeoutMs: 120_000,
    vsockPorts: [{ port: 5000, path }],
    network: {
      mode: 'tsi', hostLoopbackAlias: ALIAS4,
      policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: ['127.0.0.0/8'], name: 'host loopback' }] }),
    },
  });
  const out = r.stdout!.toString();
  t.equal(r.exitCode, 0, 'the guest script ran', { stdout: out, stderr: r.stderr?.toString() });
  t.match(out, /^before=0$/m, 'TSI works before');
  t.match(out, /^held \d+ \(stopped by Connection reset by peer\)$/m, 'the bridge connections filled the host\'s table (the next was reset)');
  t.match(out, /^full=111$/m, 'a TSI connect while the table is full: ECONNREFUSED (not ENETUNREACH from the guest stack)');
  t.match(out, /^full_again=111$/m, 'and again: the refusal is not remembered as "no TSI"');
  t.match(out, /^after=0$/m, 'right after the table has room, TSI connects again');
  t.equal(tcpConnections, 2, 'the host server saw the connections before and after');
});
