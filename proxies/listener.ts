// The TSI control channel and the listener proxy. The guest opens one connection to
// host port TsiPort.CONTROL, says HELLO, then registers listeners with LISTEN. The host
// listens on a host port ONLY when the port map has an entry for the guest port; an
// unmapped listener stays registered but unexposed (LISTEN_RESULT -EADDRNOTAVAIL) and
// becomes exposed if a mapping is added later. Removing a mapping closes the host
// listener (open connections continue). A host listen that fails (port taken, EACCES)
// takes the entry out of the map (PortMap.fail: 'failed' event, PORT_MAP_BIND_FAILED)
// and logs `tsi.publish.failed`; the guest listener stays registered, unexposed, as
// for an unmapped port, so a corrected entry added later exposes it. Each accepted
// host connection passes the
// policy (direction inbound), then the proxy opens a vsock connection to the guest
// listener's vsock port, sends ACCEPT (the client's real address) and pipes.
import { createServer, type Server, type Socket } from 'node:net';
import { bindFailure, type PortMapping } from '../src/portmap/index.js';
import type { GuestStream } from '../src/guest-stream.js';
import type { TsiContext } from './context.js';
import { endThenReset, serveRequests } from './pipe.js';
import { joinClientToGuest } from './inbound.js';
import {
  Errno, TsiMessageReader, MAX_PRIVILEGED_GUEST_PORT, TSI_VERSION, GuestErrno, TsiOp, checkSize, decodeListen, encodeAccept, encodeHelloResult,
  encodeListenResult, encodeSeqResult, errnoName, errnoOf, formatAddr, sockAddrOf, type TsiMessage, type SockAddr,
} from './protocol.js';

/** Control requests are small; anything longer is a protocol error. */
const MAX_CONTROL_MESSAGE = 64;
/**
 * Control sessions must come from a privileged guest vsock port: an unprivileged guest
 * process cannot register a listener, and so cannot take over a published port.
 */
export const MAX_CONTROL_SOURCE_PORT = MAX_PRIVILEGED_GUEST_PORT;
/** Feature bits in HELLO_RESULT. */
export const TsiFeature = { DGRAM_SEQPACKET: 1, UNIX_STREAM: 2 } as const;

interface GuestListener {
  id: number;
  guestPort: number;
  vsockPort: number;
  bind: SockAddr;
  session: ControlSession;
  server: Server | null;
  mapping: PortMapping | null;
  /** Gives the listener's slot back to the sandbox limit. */
  release: () => void;
}

interface ControlSession {
  conn: GuestStream;
  hello: boolean;
  listeners: Set<GuestListener>;
}

export class ListenerProxy {
  readonly #ctx: TsiContext;
  /** Guest TCP listeners by guest port. */
  readonly #byPort = new Map<number, GuestListener>();
  readonly #byId = new Map<number, GuestListener>();
  readonly #sockets = new Set<Socket>();
  #nextId = 1;
  readonly #onAdd = (m: PortMapping): void => {
    const l = m.protocol === 'tcp' ? this.#byPort.get(m.guestPort) : undefined;
    if (l !== undefined && l.server === null) void this.#expose(l, m);
  };
  readonly #onRemove = (m: PortMapping): void => {
    const l = m.protocol === 'tcp' ? this.#byPort.get(m.guestPort) : undefined;
    if (l !== undefined && l.mapping === m) this.#unexpose(l);
    m.boundPort = null;
  };

  constructor(ctx: TsiContext) {
    this.#ctx = ctx;
    ctx.portMap.on('add', this.#onAdd);
    ctx.portMap.on('remove', this.#onRemove);
  }

  /** Guest listeners registered (exposed or not). */
  get listeners(): number {
    return this.#byPort.size;
  }

  close(): void {
    this.#ctx.portMap.off('add', this.#onAdd);
    this.#ctx.portMap.off('remove', this.#onRemove);
    for (const l of [...this.#byPort.values()]) this.#drop(l);
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
  }

  /** A guest connection to the control port. */
  handle(conn: GuestStream): void {
    if (conn.guestPort > MAX_CONTROL_SOURCE_PORT) {
      this.#ctx.guestLog.warn({ event: 'tsi.control.refused', guestPort: conn.guestPort },
        `tsi: control session from unprivileged guest vsock port ${conn.guestPort} refused`);
      conn.write(encodeSeqResult(TsiOp.ERROR, 0, -Errno.EACCES));
      endThenReset(conn, 'control session from an unprivileged port');
      return;
    }
    const session: ControlSession = { conn, hello: false, listeners: new Set() };
    const reader = new TsiMessageReader(MAX_CONTROL_MESSAGE);
    serveRequests(conn, reader, (f) => {
      if (f instanceof GuestErrno) {
        // The stream cannot be re-synchronised: say why, end our side, and reset if
        // the guest does not close within a second.
        conn.write(encodeSeqResult(TsiOp.ERROR, 0, -f.errno));
        conn.consumed(conn.unconsumed);
        this.#ctx.log.debug({ reason: f.reason }, 'tsi control stream error');
        endThenReset(conn, f.reason);
        return;
      }
      conn.consumed(f.bytes.length);
      this.#request(session, f);
    });
    conn.on('close', () => {
      for (const l of session.listeners) this.#drop(l);
      session.listeners.clear();
    });
  }

  #request(s: ControlSession, f: TsiMessage): void {
    const bad = checkSize(f);
    const seq = f.bytes.length >= 12 ? f.bytes.readUInt32LE(8) : 0;
    if (bad !== null) {
      s.conn.write(encodeSeqResult(TsiOp.ERROR, seq, -bad.errno));
      return;
    }
    if (f.op === TsiOp.HELLO) {
      const min = f.bytes[12]!;
      const max = f.bytes[13]!;
      const ok = min <= TSI_VERSION && TSI_VERSION <= max;
      s.hello ||= ok;
      s.conn.write(encodeHelloResult(seq, ok ? 0 : -Errno.EPROTONOSUPPORT, ok ? TSI_VERSION : 0,
        (this.#ctx.unixSockets ? TsiFeature.UNIX_STREAM : 0) | (this.#ctx.device.seqpacketNegotiated ? TsiFeature.DGRAM_SEQPACKET : 0)));
      return;
    }
    if (!s.hello) {
      s.conn.write(encodeSeqResult(TsiOp.ERROR, seq, -Errno.EPROTO));
      return;
    }
    switch (f.op) {
      case TsiOp.LISTEN: return this.#listen(s, f, seq);
      case TsiOp.UNLISTEN: {
        const id = f.bytes.readUInt32LE(12);
        const l = this.#byId.get(id);
        if (l === undefined || l.session !== s) {
          s.conn.write(encodeSeqResult(TsiOp.UNLISTEN_RESULT, seq, -Errno.ENOENT));
          return;
        }
        this.#drop(l);
        s.conn.write(encodeSeqResult(TsiOp.UNLISTEN_RESULT, seq, 0));
        return;
      }
      default:
        s.conn.write(encodeSeqResult(TsiOp.ERROR, seq, -Errno.EOPNOTSUPP));
    }
  }

  #listen(s: ControlSession, f: TsiMessage, seq: number): void {
    const req = decodeListen(f);
    const reply = (result: number, id: number, host: SockAddr): void => {
      if (s.conn.state !== 'closed') s.conn.write(encodeListenResult(seq, result, id, host));
    };
    if (req instanceof GuestErrno) return reply(-req.errno, 0, { family: 'none' });
    if (req.bind.family !== 'ipv4' && req.bind.family !== 'ipv6') return reply(-Errno.EAFNOSUPPORT, 0, { family: 'none' });
    const guestPort = req.bind.port;
    if (this.#byPort.has(guestPort)) return reply(-Errno.EADDRINUSE, 0, { family: 'none' });
    const slot = this.#ctx.limits.takeListener();
    if (typeof slot === 'string') {
      this.#ctx.guestLog.warn({ event: 'tsi.limit', limit: slot, guestPort }, `tsi: ${slot} limit reached; listener refused`);
      return reply(-Errno.ENOBUFS, 0, { family: 'none' });
    }
    // Mirror mode adds the entry before the listener is registered, so the map's 'add'
    // finds nothing to expose and the lookup below does it once.
    this.#ctx.portMap.mirror('tcp', guestPort);
    const l: GuestListener = {
      id: this.#nextId++, guestPort, vsockPort: req.vsockPort, bind: req.bind, session: s, server: null, mapping: null, release: slot.release,
    };
    this.#byPort.set(guestPort, l);
    this.#byId.set(l.id, l);
    s.listeners.add(l);
    const mapping = this.#ctx.portMap.lookupGuest('tcp', guestPort);
    if (mapping === undefined) return reply(-Errno.EADDRNOTAVAIL, l.id, { family: 'none' });
    // A failed host bind (EADDRINUSE, …) took the entry out of the map: the listener is
    // then registered but unexposed (-EADDRNOTAVAIL), exactly as for an unmapped port.
    void this.#expose(l, mapping).then((r) => { reply(r.result, l.id, r.host); });
  }

  async #expose(l: GuestListener, m: PortMapping): Promise<{ result: number; host: SockAddr }> {
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => { this.#inbound(l, socket); });
    l.server = server;
    l.mapping = m;
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        // exclusive: never share the port (no SO_REUSEPORT, no cluster sharing).
        server.listen({ host: m.hostAddress, port: m.hostPort, exclusive: true }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (err) {
      if (l.server !== server) return { result: -Errno.EADDRNOTAVAIL, host: { family: 'none' } }; // unmapped or dropped meanwhile
      l.server = null;
      l.mapping = null;
      this.#publishFailed(m, err);
      return { result: -Errno.EADDRNOTAVAIL, host: { family: 'none' } };
    }
    if (l.server !== server) {
      // Unmapped or dropped while we waited.
      server.close();
      return { result: -Errno.EADDRNOTAVAIL, host: { family: 'none' } };
    }
    server.on('error', (err) => { this.#ctx.guestLog.warn({ event: 'tsi.listen.error', err: err.message }, 'host listener error'); });
    const addr = server.address();
    const host = typeof addr === 'object' && addr !== null ? sockAddrOf(addr) : { family: 'none' as const };
    m.boundPort = host.family === 'ipv4' || host.family === 'ipv6' ? host.port : null;
    return { result: 0, host };
  }

  /** The host could not listen for `m`: log it, take it out of the map, tell the map's users. */
  #publishFailed(m: PortMapping, err: unknown): void {
    const e = bindFailure(m, err);
    this.#ctx.guestLog.warn({
      event: 'tsi.publish.failed', code: e.code, errno: errnoName(errnoOf(err)), protocol: m.protocol,
      hostAddress: m.hostAddress, hostPort: m.hostPort, guestPort: m.guestPort, err: (err as Error).message,
    }, `tsi: ${e.message}`);
    this.#ctx.portMap.fail(m, e);
  }

  #unexpose(l: GuestListener): void {
    const server = l.server;
    l.server = null;
    if (l.mapping !== null) l.mapping.boundPort = null;
    l.mapping = null;
    server?.close();
  }

  #drop(l: GuestListener): void {
    this.#unexpose(l);
    l.release();
    if (this.#byPort.get(l.guestPort) === l) this.#byPort.delete(l.guestPort);
    this.#byId.delete(l.id);
    l.session.listeners.delete(l);
  }

  #inbound(l: GuestListener, socket: Socket): void {
    const ctx = this.#ctx;
    const peer = sockAddrOf({ address: socket.remoteAddress, port: socket.remotePort });
    const decision = ctx.policy.evaluate({
      direction: 'inbound', protocol: 'tcp', port: l.guestPort, ...(socket.remoteAddress ? { address: socket.remoteAddress } : {}),
    });
    const rec = ctx.connections.open({
      kind: 'listener', protocol: 'tcp', direction: 'inbound', decision: decision.action, rule: decision.by,
      src: formatAddr(peer), dst: `${formatAddr(sockAddrOf({ address: socket.localAddress, port: socket.localPort }))} -> guest:${l.guestPort}`,
    });
    if (decision.action === 'deny') {
      socket.destroy();
      rec.finish('denied');
      return;
    }
    joinClientToGuest(ctx.device, socket, { guestPort: l.vsockPort, preamble: encodeAccept(l.id, l.bind, peer), sockets: this.#sockets, rec });
  }
}

