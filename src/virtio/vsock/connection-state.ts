// The named states of one vsock connection (virtio 1.2 §5.10.6) and the rule for
// moving between them. The diagram is at the top of connection.ts; names follow
// Firecracker's vsock `ConnState` where ours mean the same (LocalInit, Established,
// Killed → resetting), with its LocalClosed/PeerClosed(recv, send) folded into one
// `half-closed` that carries both directions, because here either side can end first.
import { TsiboxError } from '../../errors.js';
import type { CloseReason, ConnectionState } from '../../guest-stream.js';

/**
 * The SHUTDOWN flags the guest sent so far (virtio 1.2 §5.10.6.5,
 * VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE / _F_SEND). They only ever add up.
 */
export interface GuestShutdown {
  /** The guest will read no more: host→guest bytes are dropped and write() is ignored. */
  readonly recv: boolean;
  /** The guest will send no more: 'end' was emitted, and an RW from it now is a protocol error. */
  readonly send: boolean;
}

/** The host's own send direction once established: end() queues SHUTDOWN(SEND) behind the data. */
export type HostSend = 'open' | 'shutdown-queued' | 'shutdown-sent';

/** The detailed lifecycle state of a VsockConnection (read-only; a new object on each change). */
export type ConnectionPhase =
  /** Host-initiated: REQUEST queued or sent, no RESPONSE yet. `shutdownQueued`: end() came meanwhile. */
  | { readonly kind: 'local-init'; readonly shutdownQueued: boolean }
  /** Both directions open, no SHUTDOWN asked for or seen (a guest-initiated connection starts here). */
  | { readonly kind: 'established' }
  /** At least one direction ends: host end() and/or a guest SHUTDOWN. */
  | { readonly kind: 'half-closed'; readonly host: HostSend; readonly guest: GuestShutdown }
  /** resetAfterQueued(): an RST follows the bytes queued so far (or the grace timer); `detail` is its close detail. */
  | { readonly kind: 'resetting'; readonly detail: string; readonly guest: GuestShutdown }
  /** Terminal. `guest` keeps what the guest had shut down (guestEnded stays readable). */
  | { readonly kind: 'closed'; readonly reason: CloseReason; readonly detail: string; readonly guest: GuestShutdown };

export type PhaseKind = ConnectionPhase['kind'];

/** Nothing shut down by the guest. */
export const GUEST_OPEN: GuestShutdown = Object.freeze({ recv: false, send: false });

/** The kinds each kind may move to. */
const NEXT: Readonly<Record<PhaseKind, readonly PhaseKind[]>> = {
  'local-init': ['local-init', 'established', 'half-closed', 'closed'],
  established: ['half-closed', 'resetting', 'closed'],
  'half-closed': ['half-closed', 'resetting', 'closed'],
  resetting: ['resetting', 'closed'],
  closed: [],
};

const HOST_ORDER: Readonly<Record<HostSend, number>> = { open: 0, 'shutdown-queued': 1, 'shutdown-sent': 2 };

/** The guest's SHUTDOWN flags in any state (none before and in 'established'). */
export function guestShutdown(p: ConnectionPhase): GuestShutdown {
  return p.kind === 'local-init' || p.kind === 'established' ? GUEST_OPEN : p.guest;
}

/** The coarse state consumers see (GuestStream.state): every live state past local-init is 'connected'. */
export function publicState(p: ConnectionPhase): ConnectionState {
  return p.kind === 'local-init' ? 'connecting' : p.kind === 'closed' ? 'closed' : 'connected';
}

/**
 * Why `from` → `to` is illegal, or null when it is legal: the kind must be in NEXT,
 * shutdown only ever progresses (guest flags never clear, the host's send side goes
 * open → shutdown-queued → shutdown-sent), and RESPONSE after end() lands in
 * half-closed with the SHUTDOWN still queued.
 */
export function illegalTransition(from: ConnectionPhase, to: ConnectionPhase): string | null {
  if (!NEXT[from.kind].includes(to.kind)) return `${from.kind} → ${to.kind} is not a transition`;
  if (from.kind === 'local-init') {
    if (to.kind === 'local-init' && (from.shutdownQueued || !to.shutdownQueued)) return 'local-init → local-init only queues the SHUTDOWN';
    if (to.kind === 'half-closed' && (!from.shutdownQueued || to.host !== 'shutdown-queued' || to.guest.recv || to.guest.send)) {
      return 'local-init → half-closed only on RESPONSE after end()';
    }
    return null;
  }
  const was = guestShutdown(from);
  const now = guestShutdown(to);
  if ((was.recv && !now.recv) || (was.send && !now.send)) return 'guest shutdown flags cannot clear';
  if (from.kind === 'half-closed' && to.kind === 'half-closed' && HOST_ORDER[to.host] < HOST_ORDER[from.host]) {
    return `host send side cannot go back from ${from.host} to ${to.host}`;
  }
  return null;
}

/**
 * Checks a transition; an illegal one is a bug in the connection, never a guest's
 * doing (guest packets are checked before they change state).
 * @throws TsiboxError INVALID_STATE
 */
export function assertTransition(from: ConnectionPhase, to: ConnectionPhase, key: string): void {
  const why = illegalTransition(from, to);
  if (why !== null) throw new TsiboxError('INVALID_STATE', `vsock connection ${key}: ${why}`);
}
