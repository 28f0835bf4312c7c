// The TSI stream proxy: each guest connect() is one vsock STREAM connection to host port
// TsiPort.STREAM whose first message is CONNECT (docs/tsi-protocol.md). The proxy checks
// the target, asks the policy, opens the host socket (TCP over IPv4/IPv6, or a unix
// stream socket), answers CONNECT_RESULT (0 or -errno, with the host socket's local and
// peer addresses) and then pipes bytes both ways.
import { realpath } from 'node:fs/promises';
import { connect as netConnect, type Socket } from 'node:net';
import { normalisePath } from '../src/policy/index.js';
import type { VsockConnection } from '../src/virtio/vsock/connection.js';
import type { TsiContext } from './context.js';
import { endThenReset, pipeSocket } from './pipe.js';
import {
  Errno, FrameReader, MAX_UNIX_PATH, TsiError, canonicalAddress, decodeConnect, encodeConnectResult, errnoOf, formatAddr,
  sockAddrOf, type SockAddr,
} from './protocol.js';

/** The per-connection timer: `arm` restarts it (timeoutMs from now) with a new action. */
interface Deadline {
  arm(onExpire: () => void): void;
  clear(): void;
}

export class StreamProxy {
  readonly #ctx: TsiContext;
  readonly #sockets = new Set<Socket>();

  constructor(ctx: TsiContext) {
    this.#ctx = ctx;
  }

  /** Open host sockets (for tests and shutdown). */
  get openSockets(): number {
    return this.#sockets.size;
  }

  close(): void {
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
  }

  handle(conn: VsockConnection): void {
    const reader = new FrameReader(40 + MAX_UNIX_PATH);
    // One timer per connection for both deadlines: the guest's CONNECT, then the host
    // connect (#open re-arms it with `deadline`); cleared once connected or closed.
    let expire: (() => void) | null = () => { conn.destroy('no CONNECT in time'); };
    const timer = setTimeout(() => { expire?.(); }, this.#ctx.timeoutMs);
    const deadline: Deadline = {
      arm: (f) => { expire = f; timer.refresh(); },
      clear: () => { expire = null; clearTimeout(timer); },
    };
    // Bytes the guest sends after CONNECT, before the host socket is open: kept (not
    // credited, so bounded by buf_alloc) and written first once it is.
    let early: Buffer[] | null = null;
    const onData = (d: Buffer): void => {
      if (early !== null) {
        early.push(d);
        return;
      }
      reader.push(d);
      const f = reader.next();
      if (f === null) return;
      expire = null;
      const refuse = (err: TsiError): void => {
        deadline.clear();
        conn.off('data', onData);
        conn.consumed(conn.unconsumed);
        this.#reject(conn, err, undefined);
      };
      if (f instanceof TsiError) return refuse(f);
      const req = decodeConnect(f);
      if (req instanceof TsiError) return refuse(req);
      // The handshake bytes are ours now; credit them back (what follows is the stream's).
      conn.consumed(f.bytes.length);
      early = [reader.rest()];
      void this.#open(conn, req.target, f.bytes.length, deadline, () => {
        conn.off('data', onData);
        const first = Buffer.concat(early ?? []);
        early = [];
        return first;
      });
    };
    conn.on('data', onData);
    conn.once('close', deadline.clear);
  }

  #reject(conn: VsockConnection, err: TsiError, target: SockAddr | undefined, decision: 'deny' | 'invalid' = 'invalid', rule?: string): void {
    const rec = this.#ctx.connections.open({
      kind: 'stream', protocol: target?.family === 'unix' ? 'unix' : 'tcp', direction: 'outbound', decision, guestPort: conn.guestPort,
      ...(target ? { dst: formatAddr(target) } : {}), errno: -err.errno, ...(rule ? { rule } : {}),
    });
    conn.write(encodeConnectResult(-err.errno, { family: 'none' }, { family: 'none' }));
    // A guest that never closes must not keep the vsock slot: reset after a second.
    endThenReset(conn, err.reason);
    rec.finish(`${decision === 'deny' ? 'denied' : 'rejected'}: ${err.reason}`);
  }

  /** `takeEarly` hands over the bytes that came after CONNECT and stops collecting. */
  async #open(conn: VsockConnection, guestTarget: SockAddr, handshake: number, deadline: Deadline, takeEarly: () => Buffer): Promise<void> {
    const ctx = this.#ctx;
    const fail = (err: TsiError, target: SockAddr | undefined, decision: 'deny' | 'invalid' = 'invalid', rule?: string): void => {
      deadline.clear();
      conn.consumed(takeEarly().length);
      this.#reject(conn, err, target, decision, rule);
    };
    // Host aliases first (the policy judges the real destination).
    let target = guestTarget;
    if ((target.family === 'ipv4' || target.family === 'ipv6') && ctx.aliases !== undefined) {
      const real = ctx.aliases.resolve(target.address);
      if (real !== undefined) target = { family: real.includes(':') ? 'ipv6' : 'ipv4', address: real, port: target.port };
    }
    let decision;
    if (target.family === 'unix') {
      if (!ctx.unixSockets) return fail(new TsiError(Errno.EACCES, 'unix sockets are not enabled for this sandbox'), target, 'deny', 'unixSockets: false');
      const normal = normalisePath(target.path);
      if (normal === null) return fail(new TsiError(Errno.EINVAL, 'unix path is not absolute'), target);
      // Judge and connect to the path with every symlink resolved: the policy must see
      // the socket the host really reaches.
      let real: string;
      try {
        real = await realpath(normal);
      } catch (err) {
        // No oracle: a path the policy would deny is EACCES whether or not it exists.
        const d = ctx.policy.evaluate({ direction: 'outbound', protocol: 'unix', path: normal });
        if (d.action === 'deny') return fail(new TsiError(Errno.EACCES, `policy ${d.by}`), target, 'deny', d.by);
        return fail(new TsiError(errnoOf(err) === Errno.EIO ? Errno.ECONNREFUSED : errnoOf(err), `unix path ${normal}: ${(err as NodeJS.ErrnoException).code ?? 'unresolvable'}`), target);
      }
      if (conn.state === 'closed') return;
      target = { family: 'unix', path: real };
      decision = ctx.policy.evaluate({ direction: 'outbound', protocol: 'unix', path: real });
    } else if (target.family === 'ipv4' || target.family === 'ipv6') {
      const unroutable = unroutableForTcp(target.address);
      if (unroutable !== null) return fail(new TsiError(Errno.ENETUNREACH, unroutable), target);
      if (target.port === 0) return fail(new TsiError(Errno.ECONNREFUSED, 'port 0'), target);
      decision = ctx.policy.evaluate({ direction: 'outbound', protocol: 'tcp', address: target.address, port: target.port });
    } else {
      return fail(new TsiError(Errno.EAFNOSUPPORT, 'no address'), target);
    }
    if (decision.action === 'deny') {
      return fail(new TsiError(Errno.EACCES, `policy ${decision.by}`), target, 'deny', decision.by);
    }
    const slot = ctx.limits.takeConnection();
    if (typeof slot === 'string') {
      ctx.guestLog.warn({ event: 'tsi.limit', limit: slot, dst: formatAddr(target) }, `tsi: ${slot} limit reached; connect refused`);
      return fail(new TsiError(slot === 'connectionRate' ? Errno.EAGAIN : Errno.ENOBUFS, `${slot} limit`), target, 'deny', `limit ${slot}`);
    }
    const rec = ctx.connections.open({
      kind: 'stream', protocol: target.family === 'unix' ? 'unix' : 'tcp', direction: 'outbound', decision: 'allow',
      rule: decision.by, guestPort: conn.guestPort, dst: formatAddr(target),
    });
    const socket = target.family === 'unix'
      ? netConnect({ path: target.path, allowHalfOpen: true })
      : netConnect({
        host: target.family === 'ipv6' && target.scopeId ? `${target.address}%${target.scopeId}` : target.address,
        port: target.port, family: target.family === 'ipv6' ? 6 : 4, allowHalfOpen: true, noDelay: true,
      });
    this.#sockets.add(socket);
    // Whatever ends it (error, guest gone before connect, pipe end): forget it once closed.
    socket.once('close', () => { slot.release(); this.#sockets.delete(socket); });
    deadline.arm(() => { socket.destroy(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' })); });
    let connected = false;
    const onEarlyClose = (): void => { if (!connected) socket.destroy(); };
    conn.once('close', onEarlyClose);
    socket.once('error', (err) => {
      if (connected) return;
      deadline.clear();
      this.#sockets.delete(socket);
      const errno = errnoOf(err);
      rec.rec.errno = -errno;
      conn.consumed(takeEarly().length);
      conn.write(encodeConnectResult(-errno, { family: 'none' }, { family: 'none' }));
      endThenReset(conn, 'connect failed');
      rec.finish(`connect failed: ${(err as NodeJS.ErrnoException).code ?? err.message}`);
    });
    socket.once('connect', () => {
      connected = true;
      deadline.clear();
      conn.off('close', onEarlyClose);
      const local: SockAddr = target.family === 'unix' ? { family: 'unix', path: '' } : sockAddrOf({ address: socket.localAddress, port: socket.localPort });
      // An aliased target keeps its guest-visible address as the peer.
      // Otherwise the peer is the address we connected to (no getpeername() needed: a
      // TCP socket's peer is its connect target; canonicalised, scope id dropped as before).
      const peer: SockAddr = target.family === 'unix' || target !== guestTarget
        ? guestTarget
        : sockAddrOf({ address: target.address, port: target.port });
      rec.rec.src = formatAddr(local);
      conn.write(encodeConnectResult(0, local, peer));
      pipeSocket(conn, socket, (end) => {
        this.#sockets.delete(socket);
        rec.bytesFromGuest = conn.bytesFromGuest - handshake;
        rec.bytesToGuest = conn.bytesToGuest - 64;
        rec.finish(end.reason);
      }, takeEarly());
    });
  }
}

/** TCP cannot reach multicast, broadcast or unspecified-class targets: fail locally, send nothing. */
export function unroutableForTcp(address: string): string | null {
  const c = canonicalAddress(address);
  if (c === null) return 'not an address';
  if (c.family === 'ipv4') {
    const first = Number(c.address.split('.')[0]);
    // The host would deliver 0.0.0.0/8 to its own loopback: never a TSI target.
    if (first === 0) return 'unspecified destination (0.0.0.0/8)';
    if (first >= 224 && first <= 239) return 'multicast destination';
    if (c.address === '255.255.255.255') return 'broadcast destination';
    if (first >= 240) return 'reserved destination (240.0.0.0/4)';
    return null;
  }
  if (c.address.startsWith('ff')) return 'multicast destination';
  if (c.address === '0:0:0:0:0:0:0:0') return 'unspecified destination';
  return null;
}
