// The TSI stream proxy: each guest connect() is one vsock STREAM connection to host port
// TsiPort.STREAM whose first message is CONNECT (docs/tsi-protocol.md). The proxy checks
// the target, asks the policy, opens the host socket (TCP over IPv4/IPv6, or a unix
// stream socket), answers CONNECT_RESULT (0 or -errno, with the host socket's local and
// peer addresses) and then pipes bytes both ways.
import { realpath } from 'node:fs/promises';
import { connect as netConnect, type Socket } from 'node:net';
import { normalisePath } from '../src/policy/index.js';
import type { GuestStream } from '../src/guest-stream.js';
import type { TsiContext } from './context.js';
import { checkTransition, type LegalMoves } from './flow-state.js';
import type { TrackedConnection } from './connection-log.js';
import { endThenReset, pipeSocket } from './pipe.js';
import {
  Errno, TsiMessageReader, MAX_UNIX_PATH, GuestErrno, canonicalAddress, decodeConnect, encodeConnectResult, errnoOf, formatAddr,
  sockAddrOf, type SockAddr,
} from './protocol.js';

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

  handle(conn: GuestStream): void {
    new OutboundStream(this.#ctx, this.#sockets, conn);
  }
}

/**
 * An outbound stream's lifecycle. `early` holds the bytes the guest sends after CONNECT,
 * before the host socket is open: kept (not credited, so bounded by buf_alloc) and
 * written first once it is. `handshake` is the CONNECT message's length (not the
 * stream's bytes).
 */
type OutboundState =
  | { readonly name: 'awaiting-request' }
  | { readonly name: 'judging'; readonly handshake: number; readonly early: Buffer[] }
  | {
    readonly name: 'connecting'; readonly handshake: number; readonly early: Buffer[];
    readonly guestTarget: SockAddr; readonly target: Exclude<SockAddr, { family: 'none' }>; readonly socket: Socket; readonly rec: TrackedConnection;
  }
  | { readonly name: 'piping'; readonly handshake: number; readonly socket: Socket; readonly rec: TrackedConnection }
  | { readonly name: 'refused'; readonly err: GuestErrno; readonly target?: SockAddr; readonly decision: 'deny' | 'invalid'; readonly rule?: string }
  | { readonly name: 'failed'; readonly err: Error }
  | { readonly name: 'closed'; readonly reason: string };

type OutboundStateName = OutboundState['name'];

const OUTBOUND_MOVES: LegalMoves<OutboundStateName> = {
  'awaiting-request': ['judging', 'refused', 'closed'],
  judging: ['connecting', 'refused', 'closed'],
  connecting: ['piping', 'failed', 'closed'],
  piping: ['closed'],
  refused: [],
  failed: [],
  closed: [],
};

/**
 * One guest connect(): its vsock connection and, once allowed, its host socket.
 *
 *   awaiting-request ─► judging ─► connecting ─► piping ─► closed
 *
 *   awaiting-request ── CONNECT ───────────────────────► judging
 *   awaiting-request ── bad CONNECT ───────────────────► refused     CONNECT_RESULT -errno
 *   awaiting-request ── deadline, guest gone ──────────► closed
 *   judging ─────────── bad target, policy, limits ────► refused     CONNECT_RESULT -errno
 *   judging ─────────── allowed: host connect() ───────► connecting  (deadline re-armed)
 *   judging ─────────── guest gone (unix path lookup) ─► closed
 *   connecting ──────── connected ─────────────────────► piping      CONNECT_RESULT 0
 *   connecting ──────── connect error, deadline ───────► failed      CONNECT_RESULT -errno
 *   connecting ──────── guest gone ────────────────────► closed      (host socket destroyed)
 *   piping ──────────── both sides closed ─────────────► closed
 *
 * One timer serves both deadlines: the guest's CONNECT (awaiting-request), then the
 * host connect (connecting); it does nothing while judging and is cleared in every
 * other state and when the guest's connection closes. refused, failed, the end of
 * piping and a guest that goes away while the host connect runs write the connection
 * record; a guest that goes away before its CONNECT was judged leaves none (nothing
 * was decided).
 */
class OutboundStream {
  readonly #ctx: TsiContext;
  readonly #sockets: Set<Socket>;
  readonly #conn: GuestStream;
  readonly #reader = new TsiMessageReader(40 + MAX_UNIX_PATH);
  readonly #timer: NodeJS.Timeout;
  #state: OutboundState = { name: 'awaiting-request' };

  constructor(ctx: TsiContext, sockets: Set<Socket>, conn: GuestStream) {
    this.#ctx = ctx;
    this.#sockets = sockets;
    this.#conn = conn;
    this.#timer = setTimeout(() => { this.#expire(); }, ctx.timeoutMs);
    conn.on('data', this.#onData);
    conn.once('close', () => {
      clearTimeout(this.#timer);
      // While judging, the judgement notices for itself once its lookup is done.
      const state = this.#state;
      if (state.name === 'awaiting-request') this.#enter({ name: 'closed', reason: 'guest closed before CONNECT' });
      else if (state.name === 'connecting') this.#enter({ name: 'closed', reason: 'guest closed before connected' });
    });
  }

  /** The deadline of the state we are in. */
  #expire(): void {
    const state = this.#state;
    if (state.name === 'awaiting-request') this.#conn.destroy('no CONNECT in time');
    else if (state.name === 'connecting') state.socket.destroy(Object.assign(new Error('connect timed out'), { code: 'ETIMEDOUT' }));
  }

  readonly #onData = (d: Buffer): void => {
    const state = this.#state;
    if (state.name === 'judging' || state.name === 'connecting') {
      state.early.push(d);
      return;
    }
    if (state.name !== 'awaiting-request') return;
    const reader = this.#reader;
    reader.push(d);
    const f = reader.next();
    if (f === null) return;
    if (f instanceof GuestErrno) return this.#enter({ name: 'refused', err: f, decision: 'invalid' });
    const req = decodeConnect(f);
    if (req instanceof GuestErrno) return this.#enter({ name: 'refused', err: req, decision: 'invalid' });
    const judging: Extract<OutboundState, { name: 'judging' }> = { name: 'judging', handshake: f.bytes.length, early: [reader.rest()] };
    this.#enter(judging);
    void this.#judge(judging, req.target);
  };

  /** Stops collecting early bytes and hands them over. */
  #takeEarly(early: Buffer[]): Buffer {
    this.#conn.off('data', this.#onData);
    return Buffer.concat(early);
  }

  /** The one place the state changes: checks the move, then does what entering `next` takes. */
  #enter(next: OutboundState): void {
    const prev = this.#state;
    checkTransition('stream', OUTBOUND_MOVES, this.#conn.guestPort, prev.name, next.name);
    this.#state = next;
    const conn = this.#conn;
    switch (next.name) {
      case 'awaiting-request':
        return;
      case 'judging':
        // The handshake bytes are ours now; credit them back (what follows is the stream's).
        conn.consumed(next.handshake);
        return;
      case 'connecting':
        this.#timer.refresh();
        next.socket.once('error', (err) => {
          if (this.#state === next) this.#enter({ name: 'failed', err });
        });
        next.socket.once('connect', () => { this.#enter({ name: 'piping', handshake: next.handshake, socket: next.socket, rec: next.rec }); });
        return;
      case 'piping': {
        if (prev.name !== 'connecting') return;
        clearTimeout(this.#timer);
        const { socket, rec } = next;
        const { target, guestTarget } = prev;
        const local: SockAddr = target.family === 'unix' ? { family: 'unix', path: '' } : sockAddrOf({ address: socket.localAddress, port: socket.localPort });
        // An aliased target keeps its guest-visible address as the peer.
        // Otherwise the peer is the address we connected to (no getpeername() needed: a
        // TCP socket's peer is its connect target; canonicalised, scope id dropped as before).
        const peer: SockAddr = target.family === 'unix' || target !== guestTarget
          ? guestTarget
          : sockAddrOf({ address: target.address, port: target.port });
        rec.rec.src = formatAddr(local);
        conn.write(encodeConnectResult(0, local, peer));
        pipeSocket(conn, socket, (end) => { this.#enter({ name: 'closed', reason: end.reason }); }, this.#takeEarly(prev.early));
        return;
      }
      case 'refused':
        clearTimeout(this.#timer);
        if (prev.name === 'judging') {
          conn.consumed(this.#takeEarly(prev.early).length);
        } else {
          conn.off('data', this.#onData);
          conn.consumed(conn.unconsumed);
        }
        this.#reject(next);
        return;
      case 'failed': {
        if (prev.name !== 'connecting') return;
        clearTimeout(this.#timer);
        const { socket, rec, early } = prev;
        this.#sockets.delete(socket);
        const errno = errnoOf(next.err);
        rec.rec.errno = -errno;
        conn.consumed(this.#takeEarly(early).length);
        conn.write(encodeConnectResult(-errno, { family: 'none' }, { family: 'none' }));
        endThenReset(conn, 'connect failed');
        rec.finish(`connect failed: ${(next.err as NodeJS.ErrnoException).code ?? next.err.message}`);
        return;
      }
      case 'closed':
        if (prev.name === 'connecting') {
          // The guest gave up before the host connect finished: the attempt is still a
          // connection the policy allowed, so it gets its record.
          prev.socket.destroy();
          prev.rec.finish(next.reason);
        } else if (prev.name === 'piping') {
          const { socket, rec } = prev;
          this.#sockets.delete(socket);
          rec.bytesFromGuest = conn.bytesFromGuest - prev.handshake;
          rec.bytesToGuest = conn.bytesToGuest - 64;
          rec.finish(next.reason);
        }
        return;
    }
  }

  /** CONNECT_RESULT -errno, the record, and an end (then a reset) for the guest. */
  #reject(r: Extract<OutboundState, { name: 'refused' }>): void {
    const conn = this.#conn;
    const { err, target, decision, rule } = r;
    const rec = this.#ctx.connections.open({
      kind: 'stream', protocol: target?.family === 'unix' ? 'unix' : 'tcp', direction: 'outbound', decision, guestPort: conn.guestPort,
      ...(target ? { dst: formatAddr(target) } : {}), errno: -err.errno, ...(rule ? { rule } : {}),
    });
    conn.write(encodeConnectResult(-err.errno, { family: 'none' }, { family: 'none' }));
    // A guest that never closes must not keep the vsock slot: reset after a second.
    endThenReset(conn, err.reason);
    rec.finish(`${decision === 'deny' ? 'denied' : 'rejected'}: ${err.reason}`);
  }

  /**
   * Judging: host aliases, the target's checks, the policy and the limits, in that
   * order; then the host socket. Ends in refused, connecting, or (the guest gone during a
   * unix path lookup) closed.
   */
  async #judge(judging: Extract<OutboundState, { name: 'judging' }>, guestTarget: SockAddr): Promise<void> {
    const ctx = this.#ctx;
    const conn = this.#conn;
    const refuse = (err: GuestErrno, target: SockAddr | undefined, decision: 'deny' | 'invalid' = 'invalid', rule?: string): void => {
      this.#enter({ name: 'refused', err, ...(target ? { target } : {}), decision, ...(rule ? { rule } : {}) });
    };
    // Host aliases first (the policy judges the real destination).
    let target = guestTarget;
    if ((target.family === 'ipv4' || target.family === 'ipv6') && ctx.aliases !== undefined) {
      target = ctx.aliases.resolveEndpoint(target) ?? target;
    }
    let decision;
    if (target.family === 'unix') {
      if (!ctx.unixSockets) return refuse(new GuestErrno(Errno.EACCES, 'unix sockets are not enabled for this sandbox'), target, 'deny', 'unixSockets: false');
      const normal = normalisePath(target.path);
      if (normal === null) return refuse(new GuestErrno(Errno.EINVAL, 'unix path is not absolute'), target);
      // Judge and connect to the path with every symlink resolved: the policy must see
      // the socket the host really reaches.
      let real: string;
      try {
        real = await realpath(normal);
      } catch (err) {
        // No oracle: a path the policy would deny is EACCES whether or not it exists.
        const d = ctx.policy.evaluate({ direction: 'outbound', protocol: 'unix', path: normal });
        if (d.action === 'deny') return refuse(new GuestErrno(Errno.EACCES, `policy ${d.by}`), target, 'deny', d.by);
        return refuse(new GuestErrno(errnoOf(err) === Errno.EIO ? Errno.ECONNREFUSED : errnoOf(err), `unix path ${normal}: ${(err as NodeJS.ErrnoException).code ?? 'unresolvable'}`), target);
      }
      if (conn.state === 'closed') return this.#enter({ name: 'closed', reason: 'guest closed while judging' });
      target = { family: 'unix', path: real };
      decision = ctx.policy.evaluate({ direction: 'outbound', protocol: 'unix', path: real });
    } else if (target.family === 'ipv4' || target.family === 'ipv6') {
      const unroutable = unroutableForTcp(target.address);
      if (unroutable !== null) return refuse(new GuestErrno(Errno.ENETUNREACH, unroutable), target);
      if (target.port === 0) return refuse(new GuestErrno(Errno.ECONNREFUSED, 'port 0'), target);
      decision = ctx.policy.evaluate({ direction: 'outbound', protocol: 'tcp', address: target.address, port: target.port });
    } else {
      return refuse(new GuestErrno(Errno.EAFNOSUPPORT, 'no address'), target);
    }
    if (decision.action === 'deny') {
      return refuse(new GuestErrno(Errno.EACCES, `policy ${decision.by}`), target, 'deny', decision.by);
    }
    const slot = ctx.limits.takeConnection();
    if (typeof slot === 'string') {
      ctx.guestLog.warn({ event: 'tsi.limit', limit: slot, dst: formatAddr(target) }, `tsi: ${slot} limit reached; connect refused`);
      return refuse(new GuestErrno(slot === 'connectionRate' ? Errno.EAGAIN : Errno.ENOBUFS, `${slot} limit`), target, 'deny', `limit ${slot}`);
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
    this.#enter({ name: 'connecting', handshake: judging.handshake, early: judging.early, guestTarget, target, socket, rec });
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
