// The TSI datagram proxy: one guest UDP socket = one vsock connection to host port
// TsiPort.DGRAM (SEQPACKET when negotiated, STREAM otherwise; messages are
// self-delimiting either way). The first message is DGRAM_OPEN; the proxy binds a host
// UDP socket (the mapped host port when the port map has the guest port, else an
// ephemeral one) and answers DGRAM_OPEN_RESULT. Then each DGRAM is one datagram: the
// address is the destination going out and the REAL source coming in.
//
// Inbound datagrams are accepted from peers the guest sent to (like a NAT's
// connection tracking), and, on an exposed socket, from anyone the inbound policy
// allows. Datagrams for a guest that does not read are dropped above the connection's
// high-water mark (UDP semantics), never queued without bound.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { bindFailure, type PortMapping } from '../src/portmap/index.js';
import type { Decision } from '../src/policy/index.js';
import type { GuestStream } from '../src/guest-stream.js';
import type { TsiContext } from './context.js';
import { checkTransition, type LegalMoves } from './flow-state.js';
import type { TrackedConnection } from './connection-log.js';
import { endThenReset, serveRequests } from './pipe.js';
import {
  DgramFlag, Errno, MAX_DGRAM_PAYLOAD_V4, TsiMessageReader, MAX_PRIVILEGED_GUEST_PORT, GuestErrno, canonicalAddress, decodeDgram, decodeDgramOpen, encodeDgram, encodeDgramError,
  encodeDgramOpenResult, errnoName, errnoOf, formatAddr, sockAddrOf, type SockAddr,
} from './protocol.js';

/** Peers remembered per socket for replies, and policy decisions cached per socket. */
const MAX_PEERS = 1024;
/** How long a closed socket waits for its datagrams in flight before it closes anyway. */
const DRAIN_MS = 1000;

export class DatagramProxy {
  readonly #ctx: TsiContext;
  readonly #sockets = new Set<UdpSocket>();
  /** Exposed sockets by guest port (runtime map removal un-exposes them). */
  readonly #exposed = new Map<number, { mapping: PortMapping; unexpose: () => void }>();
  readonly #onRemove = (m: PortMapping): void => {
    if (m.protocol !== 'udp') return;
    const e = this.#exposed.get(m.guestPort);
    if (e !== undefined && e.mapping === m) e.unexpose();
  };

  constructor(ctx: TsiContext) {
    this.#ctx = ctx;
    ctx.portMap.on('remove', this.#onRemove);
  }

  get openSockets(): number {
    return this.#sockets.size;
  }

  close(): void {
    this.#ctx.portMap.off('remove', this.#onRemove);
    for (const s of this.#sockets) {
      try { s.close(); } catch { /* already closing */ }
    }
    this.#sockets.clear();
  }

  handle(conn: GuestStream): void {
    const reader = new TsiMessageReader();
    let flow: UdpFlow | null = null;
    const timer = setTimeout(() => { if (flow === null) conn.destroy('no DGRAM_OPEN in time'); }, this.#ctx.timeoutMs);
    conn.once('close', () => { clearTimeout(timer); });
    // Requests wait (uncredited) while our replies are above the high-water mark, and
    // until the host socket is bound.
    const pump = serveRequests(conn, reader, (f) => {
      if (f instanceof GuestErrno) {
        conn.write(encodeDgramError(-f.errno, { family: 'none' }));
        endThenReset(conn, f.reason);
        conn.consumed(conn.unconsumed);
        return;
      }
      if (flow !== null) {
        flow.send(f.bytes.length, decodeDgram(f));
        return;
      }
      clearTimeout(timer);
      conn.consumed(f.bytes.length);
      const bind = decodeDgramOpen(f);
      if (bind instanceof GuestErrno) {
        conn.write(encodeDgramOpenResult(-bind.errno, 0, { family: 'none' }));
        endThenReset(conn, bind.reason);
        return;
      }
      const slot = this.#ctx.limits.takeUdpSocket();
      if (typeof slot === 'string') {
        this.#ctx.guestLog.warn({ event: 'tsi.limit', limit: slot }, `tsi: ${slot} limit reached; UDP socket refused`);
        conn.write(encodeDgramOpenResult(-Errno.ENOBUFS, 0, { family: 'none' }));
        endThenReset(conn, `${slot} limit`);
        return;
      }
      conn.once('close', slot.release);
      flow = new UdpFlow(this.#ctx, conn, bind, this.#sockets, this.#exposed, () => { pump(); });
    },
    () => flow !== null && flow.state === 'binding',
    // Once open, a UDP socket's sends do not wait for the guest to read: datagrams for
    // the guest and send errors are dropped when its queue is full, as UDP drops.
    () => flow === null);
  }
}

/** "address|port" with the address canonical (IPv4-mapped IPv6 as IPv4), as both directions see it. */
function peerKey(address: string, port: number): string {
  return `${canonicalAddress(address)?.address ?? address}|${port}`;
}

/**
 * A UDP flow's lifecycle. `inFlight` counts datagrams handed to the host socket and not
 * yet sent; a flow that ends with some in flight drains them before its socket closes.
 */
type UdpFlowState =
  | { readonly name: 'binding' }
  | { readonly name: 'open'; inFlight: number }
  | { readonly name: 'draining'; inFlight: number }
  | { readonly name: 'closed' };

type UdpFlowStateName = UdpFlowState['name'];

const UDP_FLOW_MOVES: LegalMoves<UdpFlowStateName> = {
  binding: ['open', 'closed'],
  open: ['draining', 'closed'],
  draining: ['closed'],
  closed: [],
};

/**
 * One guest UDP socket ↔ one host dgram socket.
 *
 *   binding ─► open ─► (draining ─►) closed
 *
 *   binding ─── bound ──────────────────────────► open       DGRAM_OPEN_RESULT 0
 *   binding ─── bind failed ────────────────────► closed     DGRAM_OPEN_RESULT -errno
 *   binding ─── guest gone ─────────────────────► closed
 *   open ────── guest gone, nothing in flight ──► closed
 *   open ────── guest gone, sends in flight ────► draining
 *   draining ── last send done, or DRAIN_MS ────► closed
 *
 * "guest gone": its vsock connection closed (guest close or reset, host shutdown). The
 * record is written when the flow ends (bind failed, guest gone), whatever is still in
 * flight. The host socket leaves the proxy's open set on ending and is closed on
 * entering closed. Guest datagrams are read only while open; datagrams for the guest
 * are delivered while binding or open.
 */
class UdpFlow {
  readonly #ctx: TsiContext;
  readonly #conn: GuestStream;
  readonly #socket: UdpSocket;
  readonly #family: 'ipv4' | 'ipv6';
  readonly #rec: TrackedConnection;
  readonly #peers = new Map<string, Decision>();
  /** Host-alias replies: real "address|port" → the alias address the guest sent to. */
  readonly #aliased = new Map<string, string>();
  /** The published port this socket binds, if any (fixed when the flow is made). */
  readonly #published: PortMapping | null;
  /** Who may send to it unasked: the published port until the map entry is removed. */
  #mapping: PortMapping | null;
  #state: UdpFlowState = { name: 'binding' };
  /** The proxy's set of open host sockets (this one leaves it when the flow ends). */
  readonly #sockets: Set<UdpSocket>;
  /** Lets the guest's datagrams waiting in the reader through. */
  readonly #onOpen: () => void;
  datagramsIn = 0;
  datagramsOut = 0;
  dropped = 0;
  denied = 0;

  constructor(ctx: TsiContext, conn: GuestStream, bind: SockAddr & { family: 'ipv4' | 'ipv6' } | SockAddr, sockets: Set<UdpSocket>,
    exposed: Map<number, { mapping: PortMapping; unexpose: () => void }>, onOpen: () => void) {
    this.#ctx = ctx;
    this.#conn = conn;
    this.#onOpen = onOpen;
    const b = bind as { family: 'ipv4' | 'ipv6'; address: string; port: number };
    this.#family = b.family;
    if (b.port !== 0) ctx.portMap.mirror('udp', b.port);
    this.#mapping = b.port !== 0 ? ctx.portMap.lookupGuest('udp', b.port) ?? null : null;
    if (this.#mapping !== null && exposed.has(b.port)) this.#mapping = null; // one exposed socket per guest port
    // Only a privileged guest context may be the published port (as for listeners); an
    // unprivileged one gets an ordinary ephemeral socket.
    if (this.#mapping !== null && conn.guestPort > MAX_PRIVILEGED_GUEST_PORT) {
      ctx.guestLog.warn({ event: 'tsi.expose.refused', guestPort: conn.guestPort, port: b.port },
        `tsi: published UDP port ${b.port} asked for from unprivileged guest vsock port ${conn.guestPort}; not exposed`);
      this.#mapping = null;
    }
    const mapping = this.#mapping;
    this.#published = mapping;
    this.#rec = ctx.connections.open({ kind: 'datagram', protocol: 'udp', direction: mapping ? 'inbound' : 'outbound', decision: 'allow', guestPort: conn.guestPort });
    const socket = createSocket({ type: b.family === 'ipv6' ? 'udp6' : 'udp4', reuseAddr: false });
    this.#socket = socket;
    sockets.add(socket);
    this.#sockets = sockets;
    socket.on('message', (msg, rinfo) => { this.#receive(msg, rinfo); });
    socket.on('error', (err) => {
      if (this.#state.name === 'binding') {
        // The errno must reach the guest: end (the result goes out first), reset later.
        conn.write(encodeDgramOpenResult(-errnoOf(err), 0, { family: 'none' }));
        endThenReset(conn, 'bind failed');
        if (mapping !== null) {
          // The published port cannot be had: say so and take the entry out of the map
          // (the guest's next socket on that port gets an ordinary, unexposed one).
          const e = bindFailure(mapping, err);
          ctx.guestLog.warn({
            event: 'tsi.publish.failed', code: e.code, errno: errnoName(errnoOf(err)), protocol: 'udp',
            hostAddress: mapping.hostAddress, hostPort: mapping.hostPort, guestPort: mapping.guestPort, err: err.message,
          }, `tsi: ${e.message}`);
          ctx.portMap.fail(mapping, e);
        }
        this.#finish(`bind failed: ${(err as NodeJS.ErrnoException).code ?? err.message}`, false);
      } else {
        this.#ctx.log.debug({ err }, 'udp socket error');
      }
    });
    socket.on('close', () => {
      sockets.delete(socket);
      if (mapping !== null && exposed.get(mapping.guestPort)?.mapping === mapping) exposed.delete(mapping.guestPort);
    });
    conn.on('close', (reason) => { this.#finish(reason); });
    if (mapping !== null) {
      exposed.set(mapping.guestPort, { mapping, unexpose: () => { this.#mapping = null; } });
    }
    const address = mapping !== null ? mapping.hostAddress : b.family === 'ipv6' ? '::' : '0.0.0.0';
    socket.bind({ address, port: mapping !== null ? mapping.hostPort : 0, exclusive: true }, () => {
      // Ended while binding: the socket is closed already.
      if (this.#state.name !== 'binding') return;
      this.#enter({ name: 'open', inFlight: 0 });
    });
  }

  /** Where the flow is in its lifecycle (guest datagrams wait in the reader while binding). */
  get state(): UdpFlowStateName {
    return this.#state.name;
  }

  /** The one place the state changes: checks the move, then does what entering `next` takes. */
  #enter(next: UdpFlowState): void {
    checkTransition('udp', UDP_FLOW_MOVES, this.#conn.guestPort, this.#state.name, next.name);
    this.#state = next;
    switch (next.name) {
      case 'binding':
        return;
      case 'open': {
        const socket = this.#socket;
        const mapping = this.#published;
        // Multicast the guest sends must not loop back to the host's own sockets.
        try { socket.setMulticastLoopback(false); } catch { /* not supported: the policy judges multicast as loopback anyway */ }
        const local = sockAddrOf(socket.address());
        if (mapping !== null) mapping.boundPort = local.family === 'none' || local.family === 'unix' ? null : local.port;
        this.#rec.rec.src = formatAddr(local);
        this.#conn.write(encodeDgramOpenResult(0, mapping !== null ? DgramFlag.EXPOSED : 0, local));
        this.#onOpen();
        return;
      }
      case 'draining': {
        // Ended now, whenever its 'close' event comes: it no longer counts as open.
        this.#sockets.delete(this.#socket);
        // A guest that sends and closes at once (a reply, then exit) still gets its
        // datagrams out; one whose sends never complete does not keep the socket.
        setTimeout(() => { if (this.#state === next) this.#enter({ name: 'closed' }); }, DRAIN_MS).unref();
        return;
      }
      case 'closed':
        this.#sockets.delete(this.#socket);
        try { this.#socket.close(); } catch { /* already closed */ }
        return;
    }
  }

  /** One guest datagram (frame of `frameLen` bytes); only while open. */
  send(frameLen: number, d: ReturnType<typeof decodeDgram>): void {
    const state = this.#state;
    if (state.name !== 'open') return;
    const conn = this.#conn;
    const reject = (errno: number, addr: SockAddr): void => {
      conn.consumed(frameLen);
      this.#error(errno, addr);
    };
    if (d instanceof GuestErrno) return reject(d.errno, { family: 'none' });
    const { payload } = d;
    let addr = d.addr;
    // Host aliases first (docs/tsi-protocol.md §4.1): the policy judges the real destination.
    const real = this.#ctx.aliases?.resolveEndpoint(addr);
    if (real !== undefined) {
      const k = peerKey(real.address, real.port);
      if (this.#aliased.size >= MAX_PEERS && !this.#aliased.has(k)) this.#aliased.delete(this.#aliased.keys().next().value as string);
      this.#aliased.set(k, addr.address);
      addr = real;
    }
    if (addr.family !== this.#family) return reject(Errno.EAFNOSUPPORT, addr);
    if (addr.port === 0) return reject(Errno.EINVAL, addr);
    if (addr.family === 'ipv4' && payload.length > MAX_DGRAM_PAYLOAD_V4) return reject(Errno.EMSGSIZE, addr);
    const key = peerKey(addr.address, addr.port);
    let decision = this.#peers.get(key);
    if (decision === undefined) {
      decision = this.#ctx.policy.evaluate({ direction: 'outbound', protocol: 'udp', address: addr.address, port: addr.port });
      // Only allowed peers are remembered (a flow, as a stateful firewall keeps it):
      // a denied one is judged again next time, so a policy replaced at run time
      // (Sandbox.setPolicy) that allows it takes effect for this socket too.
      if (decision.action === 'allow') {
        if (this.#peers.size >= MAX_PEERS) this.#peers.delete(this.#peers.keys().next().value as string);
        this.#peers.set(key, decision);
      }
    }
    if (decision.action === 'deny') {
      this.denied++;
      this.#rec.rec.rule = decision.by;
      return reject(Errno.EACCES, addr);
    }
    this.datagramsOut++;
    this.#rec.bytesFromGuest += payload.length;
    state.inFlight++;
    this.#socket.send(payload, addr.port, addr.scopeId ? `${addr.address}%${addr.scopeId}` : addr.address, (err) => {
      conn.consumed(frameLen);
      if (err) this.#error(errnoOf(err), addr);
      this.#sent();
    });
  }

  /** A send completed: the last one a draining flow waited for closes it. */
  #sent(): void {
    const state = this.#state;
    if (state.name !== 'open' && state.name !== 'draining') return;
    if (--state.inFlight === 0 && state.name === 'draining') this.#enter({ name: 'closed' });
  }

  #receive(msg: Buffer, rinfo: { address: string; port: number; family: string }): void {
    if (this.#state.name === 'draining' || this.#state.name === 'closed') return;
    const src = sockAddrOf(rinfo);
    if (src.family !== 'ipv4' && src.family !== 'ipv6') return;
    const key = peerKey(src.address, src.port);
    const known = this.#peers.get(key)?.action === 'allow';
    if (!known) {
      const mapping = this.#mapping;
      const d = mapping === null ? null : this.#ctx.policy.evaluate({
        direction: 'inbound', protocol: 'udp', address: src.address, port: mapping.guestPort,
      });
      if (d === null || d.action !== 'allow') {
        this.dropped++;
        return;
      }
      // The guest's replies to a client the port map admitted go back to it: the
      // reverse of an admitted inbound flow, as for an accepted TCP connection.
      if (this.#peers.size >= MAX_PEERS) this.#peers.delete(this.#peers.keys().next().value as string);
      this.#peers.set(key, d);
    }
    if (this.#conn.bufferedToGuest >= this.#conn.highWater) {
      this.dropped++;
      return;
    }
    this.datagramsIn++;
    this.#rec.bytesToGuest += msg.length;
    const alias = this.#aliased.get(key);
    let from: SockAddr = alias !== undefined ? { ...src, address: alias } : src;
    // An IPv6 guest socket hears IPv4 peers as IPv4-mapped addresses, as Linux reports them.
    if (this.#family === 'ipv6' && from.family === 'ipv4') from = { family: 'ipv6', address: `::ffff:${from.address}`, port: from.port };
    this.#conn.write(encodeDgram(from, msg));
  }

  /** A send error for the guest (once, as an ICMP error); dropped while its queue is full. */
  #error(errno: number, addr: SockAddr): void {
    if (this.#conn.bufferedToGuest >= this.#conn.highWater) {
      this.dropped++;
      return;
    }
    this.#conn.write(encodeDgramError(-errno, addr));
  }

  /** The flow ended (guest gone, or bind failed): drain or close, then write the record. */
  #finish(reason: string, reset = true): void {
    const state = this.#state;
    if (state.name === 'draining' || state.name === 'closed') return;
    this.#enter(state.name === 'open' && state.inFlight > 0 ? { name: 'draining', inFlight: state.inFlight } : { name: 'closed' });
    if (reset && this.#conn.state !== 'closed') this.#conn.destroy('udp socket closed');
    this.#rec.finish(`${reason} (datagrams out ${this.datagramsOut}, in ${this.datagramsIn}, dropped ${this.dropped}, denied ${this.denied})`);
  }
}
