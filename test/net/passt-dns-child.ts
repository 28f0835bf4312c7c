// Run by passt-dns.test.ts inside a mount namespace whose /etc/resolv.conf says
// `nameserver 127.0.0.53`: starts the passt network as a sandbox would (no guest),
// sends one DNS query from the "guest" to passt's forwarder 10.0.2.3:53, and prints
// what reached the host (JSON on stdout). POLICY=deny|allow.
import { createSocket } from 'node:dgram';
import { pino } from 'pino';
import { startPasstNetwork } from '../../src/engine/network-passt.js';
import { Policy } from '../../src/policy/index.js';
import { DNS, GUEST, udp } from '../helpers/frames.js';

const policy = process.env['POLICY'] === 'allow'
  ? new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'udp', cidr: '127.0.0.53', ports: 53 }] })
  : Policy.denyAll();
const got: Record<string, number> = { '127.0.0.53': 0, '127.0.0.1': 0 };
const socks = await Promise.all(Object.keys(got).map(async (addr) => {
  const s = createSocket('udp4');
  s.on('message', (m, r) => { got[addr]!++; s.send(m, r.port, r.address); });
  await new Promise<void>((res) => { s.bind(53, addr, res); });
  return s;
}));
const net = await startPasstNetwork({ mode: 'passt', policy }, pino({ level: 'silent' }));
net.filter.send(udp(GUEST, 5353, DNS, 53, Buffer.from('a dns query')));
await new Promise((r) => setTimeout(r, 500));
const toGuest = net.netDevice.stats().rxQueued;
await net.close();
for (const s of socks) s.close();
process.stdout.write(`${JSON.stringify({ got, toGuest, flows: net.filter.recent })}\n`);
