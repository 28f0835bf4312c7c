// The loopback world of the `tsi` fuzz target's open mode: servers of our own, some
// allowed and some denied by the policy, a port map whose host listeners get real
// clients, and counters that prove no denied server was ever contacted. Nothing here
// talks to anything but 127.0.0.1 and unix sockets in a private temp directory.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Policy } from '../../../src/policy/index.js';
import { PortMap } from '../../../src/portmap/index.js';
import type { Prng } from '../prng.js';

export interface OpenWorld {
  policy: Policy;
  portMap: PortMap;
  targets: { tcp: number[]; udp: number[]; unix: string[]; guestPorts: number[] };
  /** Connections or datagrams that reached a server the policy denies (must stay 0). */
  deniedContacts(): number;
  /** Maybe opens a host client to a published port (the inbound path). */
  poke(rng: Prng): void;
  close(): Promise<void>;
}

const MAX_CLIENTS = 16;

export async function openWorld(): Promise<OpenWorld> {
  const dir = mkdtempSync(join(tmpdir(), 'tsibox-fuzz-'));
  mkdirSync(join(dir, 'allowed'));
  mkdirSync(join(dir, 'secret'));
  const sockets = new Set<Socket>();
  const servers: Server[] = [];
  const udps: UdpSocket[] = [];
  let denied = 0;
  const track = (s: Socket): void => {
    sockets.add(s);
    s.on('error', () => { /* the guest resets freely */ });
    s.on('close', () => { sockets.delete(s); });
  };
  const tcp = async (where: { port: number } | { path: string }, onConn: (s: Socket) => void): Promise<number> => {
    const server = createServer({ allowHalfOpen: false }, (s) => { track(s); onConn(s); });
    servers.push(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if ('path' in where) server.listen(where.path, resolve);
      else server.listen(where.port, '127.0.0.1', resolve);
    });
    const a = server.address();
    return typeof a === 'object' && a !== null ? a.port : 0;
  };
  const udp = async (onMsg: (u: UdpSocket, m: Buffer, port: number, address: string) => void): Promise<number> => {
    const u = createSocket('udp4');
    udps.push(u);
    u.on('message', (m, r) => { onMsg(u, m, r.port, r.address); });
    await new Promise<void>((resolve) => { u.bind(0, '127.0.0.1', resolve); });
    return u.address().port;
  };
  const echo = (s: Socket): void => { s.pipe(s); };
  const allowedTcp = await tcp({ port: 0 }, echo);
  const deniedTcp = await tcp({ port: 0 }, (s) => { denied++; s.destroy(); });
  const allowedUdp = await udp((u, m, port, address) => { u.send(m.subarray(0, 64), port, address); });
  const deniedUdp = await udp(() => { denied++; });
  const echoSock = join(dir, 'allowed', 'echo.sock');
  const secretSock = join(dir, 'secret', 's.sock');
  await tcp({ path: echoSock }, echo);
  await tcp({ path: secretSock }, (s) => { denied++; s.destroy(); });
  symlinkSync(secretSock, join(dir, 'allowed', 'link.sock'));

  const policy = new Policy({
    default: 'deny',
    rules: [
      { action: 'allow', direction: 'outbound', protocol: 'tcp', cidr: '127.0.0.1', ports: allowedTcp, name: 'echo-tcp' },
      { action: 'allow', direction: 'outbound', protocol: 'udp', cidr: '127.0.0.1', ports: allowedUdp, name: 'echo-udp' },
      { action: 'allow', direction: 'outbound', protocol: 'unix', path: `${join(dir, 'allowed')}/`, name: 'echo-unix' },
      { action: 'allow', direction: 'inbound', protocol: ['tcp', 'udp'], cidr: '127.0.0.0/8', name: 'clients' },
      // A careless rule: the host must still never deliver these to its loopback.
      { action: 'allow', cidr: ['0.0.0.0/8', '::/128'], name: 'unspecified (careless)' },
    ],
  });
  const portMap = new PortMap(['127.0.0.1:0:80', '127.0.0.1:0:81', '127.0.0.1:0:53/udp']);
  let clients = 0;
  return {
    policy, portMap,
    targets: { tcp: [allowedTcp, deniedTcp], udp: [allowedUdp, deniedUdp], unix: [echoSock, join(dir, 'allowed', 'link.sock'), secretSock], guestPorts: [80, 81, 82, 53] },
    deniedContacts: () => denied,
    poke(rng: Prng): void {
      if (clients >= MAX_CLIENTS) return;
      const bound = portMap.entries.filter((m) => m.boundPort !== null);
      if (bound.length === 0) return;
      const m = rng.pick(bound);
      if (m.protocol === 'udp') {
        const u = createSocket('udp4');
        u.send(Buffer.from('poke'), m.boundPort!, '127.0.0.1', () => { u.close(); });
        return;
      }
      clients++;
      const c = connect({ port: m.boundPort!, host: '127.0.0.1' });
      track(c);
      c.on('close', () => { clients--; });
      c.on('connect', () => { c.write(Buffer.alloc(1 + rng.below(2000), 0x61)); });
      c.setTimeout(200, () => { c.destroy(); });
    },
    async close(): Promise<void> {
      for (const s of sockets) s.destroy();
      for (const u of udps) u.close();
      await Promise.all(servers.map((s) => new Promise<void>((r) => { s.close(() => { r(); }); })));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
