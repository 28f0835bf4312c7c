/**
 * End to end: network mode 'gvproxy' under QEMU, against the real gvproxy. The guest's
 * eth0 is our NetDevice, configured by DHCP from gvproxy; its frames pass the policy
 * filter; 192.168.127.254 is gvproxy's NAT to the host's 127.0.0.1. HOST SAFETY: the
 * guest only targets 192.168.127.254 (host loopback) and gvproxy's own 192.168.127.1;
 * host servers listen on 127.0.0.1 only; gvproxy runs with -ssh-port -1.
 */
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, get as httpGet } from 'node:http';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { Sandbox, type SandboxResult } from '../../src/index.js';
import { passtDnsUpstream, readResolvConf } from '../../src/engine/network-passt.js';
import { Policy } from '../../src/policy/index.js';
import { PortMap, type PortMapping } from '../../src/portmap/index.js';
import type { TsiboxError } from '../../src/errors.js';
import { argvOf, processesMentioning, waitFor } from '../helpers/processes.js';
import { e2ePrerequisites, E2E_ENGINE } from './prerequisites.js';

const HOST = '192.168.127.254';
const { skip, tools } = await e2ePrerequisites(t, { tools: true, gvproxy: true });
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const allowTcp = (cidr: string, ports: number): Policy => new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr, ports }] });

function listen(server: Server | ReturnType<typeof createHttpServer>): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => { resolve((server.address() as AddressInfo).port); });
  });
}

function fetchText(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpGet({ host: '127.0.0.1', port, path: '/', timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => { body += d; }).on('end', () => { resolve(body); });
    });
    req.on('timeout', () => { req.destroy(new Error('timeout')); });
    req.on('error', reject);
  });
}

function connectError(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve('connected'); });
    s.once('error', (e: NodeJS.ErrnoException) => { resolve(e.code ?? e.message); });
  });
}

/** A Writable that collects text and resolves `saw(marker)` once it appears. */
function watcher(): { out: Writable; text: () => string; saw: (m: string, ms: number) => Promise<boolean> } {
  let buf = '';
  const out = new Writable({ write(c: Buffer, _e, done) { buf += c.toString(); done(); } });
  return { out, text: () => buf, saw: (m, ms) => waitFor(() => buf.includes(m), ms) };
}

/** gvproxy processes whose command line names `dir` (the keeper too). */
const gvproxyIn = (dir: string): number[] => processesMentioning(dir);

t.test('network gvproxy under QEMU', { skip }, async (t) => {
  const sockets = new Set<Socket>();
  const servers: Array<Server | ReturnType<typeof createHttpServer>> = [];
  const runtimeDir = mkdtempSync(join(tmpdir(), 'tsibox-gvtest-'));
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await Promise.all(servers.map((s) => new Promise<void>((r) => { s.close(() => { r(); }); })));
    rmSync(runtimeDir, { recursive: true, force: true });
  });
  const leftovers = (): void => {
    t.same(gvproxyIn(runtimeDir), [], 'no gvproxy (or keeper) left');
    t.same(readdirSync(runtimeDir), [], 'no private directory or socket left');
  };

  await t.test('DHCP, then guest wget reaches a loopback host server through 192.168.127.254', async (t) => {
    const body = `hello from the host ${randomBytes(8).toString('hex')}\n`;
    let requests = 0;
    const http = createHttpServer((_req, res) => { requests++; res.end(body); });
    servers.push(http);
    const port = await listen(http);
    const r = await Sandbox.run({
      argv: ['sh', '-c', ['ip -4 addr show eth0 | grep -o "inet [0-9./]*"', 'ip route | grep default', 'cat /etc/resolv.conf', `wget -q -O- http://${HOST}:${port}/`].join('; ')],
      engine: E2E_ENGINE, timeoutMs: 60_000,
      network: { mode: 'gvproxy', policy: allowTcp('127.0.0.1', port), runtimeDir },
    });
    const out = r.stdout!.toString();
    t.equal(r.exitCode, 0, `stderr: ${r.stderr?.toString()}`);
    t.match(out, /inet 192\.168\.127\.2\/24/, 'eth0 has the DHCP lease');
    t.match(out, /default via 192\.168\.127\.1 dev eth0/, 'default route from DHCP');
    t.match(out, /nameserver 192\.168\.127\.1/, 'resolv.conf from DHCP');
    t.ok(out.endsWith(body), `body came back: ${JSON.stringify(out.slice(-200))}`);
    t.equal(requests, 1);
    leftovers();
  });

  await t.test("DNS through gvproxy's resolver: host.containers.internal", async (t) => {
    const resolver = passtDnsUpstream(readResolvConf());
    const r = await Sandbox.run({
      argv: ['sh', '-c', 'nslookup host.containers.internal'],
      engine: E2E_ENGINE, timeoutMs: 60_000,
      network: { mode: 'gvproxy', policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: ['udp', 'tcp'], cidr: resolver, ports: 53 }] }), runtimeDir },
    });
    const out = r.stdout!.toString();
    t.equal(r.exitCode, 0, `out: ${out} stderr: ${r.stderr?.toString()}`);
    t.match(out, /Address:? *(1: )?192\.168\.127\.254/, 'host.containers.internal is the host alias');
    t.match(out, /Server:\s+192\.168\.127\.1/, "asked gvproxy's resolver (from DHCP)");
    leftovers();
  });

  await t.test('4 MiB TCP echo through gvproxy, sha256 checked on both sides', async (t) => {
    const SIZE = 4 * 1024 * 1024;
    let received: Buffer | undefined;
    const echo = createServer((s) => {
      sockets.add(s);
      const chunks: Buffer[] = [];
      let n = 0;
      s.on('error', () => { /* checked through the data */ });
      s.on('data', (d: Buffer) => {
        chunks.push(d);
        n += d.length;
        s.write(d);
        if (n >= SIZE) {
          received = Buffer.concat(chunks);
          s.end();
        }
      });
    });
    servers.push(echo);
    const port = await listen(echo);
    const started = performance.now();
    const r = await Sandbox.run({
      // gvproxy 0.8.1 has no TCP half-close: when the guest ends its sending side, gvproxy
      // closes the whole connection. So the guest keeps it open (a fifo held by fd 3)
      // and polls (bounded) until the whole echo is back.
      argv: ['sh', '-c', [
        `head -c ${SIZE} /dev/urandom > /tmp/sent`, 'mkfifo /tmp/f',
        `tsibox-tcp ${HOST} ${port} < /tmp/f > /tmp/back & T=$!`, 'exec 3>/tmp/f', 'cat /tmp/sent >&3',
        `i=0; while [ $(wc -c < /tmp/back) -lt ${SIZE} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done`,
        'kill $T; exec 3>&-', 'sha256sum /tmp/sent /tmp/back', 'wc -c < /tmp/back',
      ].join('\n')],
      extraArchives: [tools!], engine: E2E_ENGINE, timeoutMs: 120_000, memoryMiB: 256,
      network: { mode: 'gvproxy', policy: allowTcp('127.0.0.1', port), runtimeDir },
    });
    t.comment(`sandbox with a 4 MiB echo: ${(performance.now() - started).toFixed(0)} ms`);
    const out = r.stdout!.toString();
    t.equal(r.exitCode, 0, `stdout: ${out} stderr: ${r.stderr?.toString()}`);
    const byFile = Object.fromEntries([...out.matchAll(/^([0-9a-f]{64}) {2}(\S+)$/gm)].map((m) => [m[2], m[1]])) as Record<string, string>;
    t.equal(received?.length, SIZE, 'the host got all of it');
    t.equal(byFile['/tmp/sent'], sha(received ?? Buffer.alloc(0)), 'host received what the guest sent');
    t.equal(byFile['/tmp/back'], byFile['/tmp/sent'], 'guest got back what it sent');
    leftovers();
  });

  await t.test('a denied destination: ECONNREFUSED in the guest, zero connections at the server', async (t) => {
    let allowedHits = 0;
    let deniedHits = 0;
    const allowed = createServer((s) => { allowedHits++; s.destroy(); });
    const denied = createServer((s) => { deniedHits++; s.destroy(); });
    servers.push(allowed, denied);
    const okPort = await listen(allowed);
    const noPort = await listen(denied);
    const r = await Sandbox.run({
      argv: ['sh', '-c', `tsibox-tcp ${HOST} ${noPort} </dev/null; echo "rc=$?"`],
      extraArchives: [tools!], engine: E2E_ENGINE, timeoutMs: 60_000,
      network: { mode: 'gvproxy', policy: allowTcp('127.0.0.1', okPort), runtimeDir },
    });
    const text = r.stdout!.toString() + r.stderr!.toString();
    t.match(text, /refused/i, `the guest saw a refusal: ${text}`);
    t.equal(deniedHits, 0, 'the denied server saw no connection');
    t.equal(allowedHits, 0);
  });

  await t.test("gvproxy's own API at 192.168.127.1:80: refused even by 0.0.0.0/0, reachable only when named exactly", async (t) => {
    const probe = 'wget -q -O- http://192.168.127.1/services/forwarder/all; echo "rc=$?"';
    const wide = await Sandbox.run({
      argv: ['sh', '-c', probe], engine: E2E_ENGINE, timeoutMs: 60_000,
      network: { mode: 'gvproxy', policy: new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: '0.0.0.0/0' }] }), runtimeDir },
    });
    const wideText = wide.stdout!.toString() + wide.stderr!.toString();
    t.match(wideText, /refused/i, `0.0.0.0/0 does not open the API: ${wideText}`);
    t.notMatch(wide.stdout!.toString(), /\[/, 'no API answer');
    const exact = await Sandbox.run({
      argv: ['sh', '-c', probe], engine: E2E_ENGINE, timeoutMs: 60_000,
      network: { mode: 'gvproxy', policy: allowTcp('192.168.127.1', 80), runtimeDir },
    });
    t.match(exact.stdout!.toString(), /^\[\]\s*rc=0/m, 'a rule naming 192.168.127.1:80 opens it');
  });

  await t.test('publish at run time: guest httpd reachable, conflict reported, unpublish, then refused', async (t) => {
    const map = new PortMap();
    const errors: Array<{ err: TsiboxError; mapping: PortMapping }> = [];
    const stdin = new PassThrough();
    const w = watcher();
    const taken = createServer();
    servers.push(taken);
    const takenPort = await listen(taken);
    const run: Promise<SandboxResult> = Sandbox.run({
      argv: ['sh', '-c', 'mkdir -p /www && echo guest-page > /www/index.html && httpd -p 8080 -h /www && echo ready && read x; echo done'],
      engine: E2E_ENGINE, timeoutMs: 90_000, stdin, stdout: w.out,
      network: {
        mode: 'gvproxy', runtimeDir, portMap: map, onPortMapError: (err, mapping) => { errors.push({ err, mapping }); },
        // Published ports' clients are judged as inbound from 127.0.0.1 to the guest port.
        policy: new Policy({ default: 'deny', rules: [{ action: 'allow', direction: 'inbound', protocol: 'tcp', cidr: '127.0.0.1', ports: 8080 }] }),
      },
    });
    try {
      t.ok(await w.saw('ready', 60_000), 'guest httpd is up');
      const m = map.add({ protocol: 'tcp', hostPort: 0, guestPort: 8080 });
      t.ok(await waitFor(() => m.boundPort !== null, 10_000), 'gvproxy listens');
      const port = m.boundPort!;
      t.equal(await fetchText(port), 'guest-page\n', 'a host client reaches the guest httpd');
      map.add({ protocol: 'tcp', hostPort: takenPort, guestPort: 8081 });
      t.ok(await waitFor(() => errors.length > 0, 10_000), 'the conflict is reported');
      t.equal(errors[0]?.err.code, 'PORT_MAP_BIND_FAILED');
      t.equal(map.lookupGuest('tcp', 8081), undefined, 'the refused entry left the map');
      map.remove('tcp', 8080);
      t.ok(await waitFor(() => m.boundPort === null, 10_000), 'unpublished');
      t.equal(await connectError(port), 'ECONNREFUSED', 'the next connect is refused');
    } finally {
      stdin.end('\n');
    }
    const r = await run;
    t.equal(r.exitCode, 0);
    t.match(w.text(), /done/);
    leftovers();
  });

  await t.test('gvproxy killed mid-run: a clear NETWORK_ERROR, the sandbox ends, nothing left behind', async (t) => {
    const w = watcher();
    const started = performance.now();
    const run = Sandbox.run({
      argv: ['sh', '-c', 'echo ready; sleep 60; echo survived'],
      engine: E2E_ENGINE, timeoutMs: 90_000, stdout: w.out,
      network: { mode: 'gvproxy', policy: Policy.denyAll(), runtimeDir },
    });
    const outcome = run.then(() => null, (e: unknown) => e as TsiboxError);
    t.ok(await w.saw('ready', 60_000), 'the guest runs');
    const gv = gvproxyIn(runtimeDir).filter((p) => (argvOf(p)?.[0] ?? '').endsWith('gvproxy'));
    t.equal(gv.length, 1, 'found the gvproxy we started');
    process.kill(gv[0]!, 'SIGKILL');
    const err = await outcome;
    t.equal(err?.code, 'NETWORK_ERROR');
    t.match(err?.message ?? '', /gvproxy .*was killed by SIGKILL while the sandbox ran/);
    t.ok(performance.now() - started < 60_000, 'ended well before the guest would have');
    t.notMatch(w.text(), /survived/);
    t.ok(await waitFor(() => gvproxyIn(runtimeDir).length === 0 && readdirSync(runtimeDir).length === 0, 5000), 'cleaned up');
    leftovers();
  });

  await t.test('a missing gvproxy is a clear error before QEMU starts', async (t) => {
    let qemuStarted = false;
    await t.rejects(Sandbox.run({
      argv: ['true'], engine: E2E_ENGINE,
      network: { mode: 'gvproxy', gvproxyPath: '/nonexistent/gvproxy', policy: Policy.allowAll() },
      onQemuStart: () => { qemuStarted = true; },
    }), { code: 'ENGINE_UNAVAILABLE', message: /gvproxy/ });
    t.equal(qemuStarted, false);
  });

  await t.test('options of other modes are refused', async (t) => {
    await t.rejects(Sandbox.run({ argv: ['true'], engine: E2E_ENGINE, network: { mode: 'gvproxy', policy: Policy.allowAll(), gateway: '10.0.2.2' } as never }),
      { code: 'INVALID_ARGUMENT', message: /network\.gateway/ });
    await t.rejects(Sandbox.run({ argv: ['true'], engine: E2E_ENGINE, network: { mode: 'gvproxy' } as never }),
      { code: 'INVALID_ARGUMENT', message: /network\.policy is required/ });
  });
});
