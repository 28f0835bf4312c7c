// The check at start: before the guest boots, try to bind every entry's host port that
// is given as a number (TCP listen / UDP bind, exclusive, then closed at once), so that
// a taken or forbidden host port fails the sandbox start with a clear error instead of
// failing later, silently, when the guest listens. A port can still be taken between
// this check and the real bind: that later failure goes through PortMap.fail().
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { bindFailure, type PortMapping } from './index.js';
import type { TsiboxError } from '../errors.js';

/** Tries each numbered host port of `entries`; resolves with the first failure (PORT_MAP_BIND_FAILED), or null. */
export async function checkHostPorts(entries: readonly PortMapping[]): Promise<TsiboxError | null> {
  for (const m of entries) {
    if (m.hostPort === 0) continue;
    try {
      await (m.protocol === 'tcp' ? tryListen(m.hostAddress, m.hostPort) : tryBindUdp(m.hostAddress, m.hostPort));
    } catch (err) {
      return bindFailure(m, err);
    }
  }
  return null;
}

function tryListen(host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen({ host, port, exclusive: true }, () => { s.close(() => { resolve(); }); });
  });
}

function tryBindUdp(address: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = createSocket({ type: address.includes(':') ? 'udp6' : 'udp4', reuseAddr: false });
    s.once('error', (err) => { try { s.close(); } catch { /* never bound */ } reject(err); });
    s.bind({ address, port, exclusive: true }, () => { s.close(() => { resolve(); }); });
  });
}
