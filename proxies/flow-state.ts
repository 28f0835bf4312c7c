// Named lifecycle states of TSI flows (an outbound stream, a UDP socket): the legality
// check their transitions share, and a diagnostics channel that reports each one.
// The channel costs nothing without a subscriber (undici reports its requests the same
// way); tests and debugging tools subscribe to watch a flow move between states.
import { channel } from 'node:diagnostics_channel';
import { TsiboxError } from '../src/errors.js';

/** One transition, as published on the FLOW_STATE_CHANNEL diagnostics channel. */
export interface FlowTransition {
  readonly kind: 'stream' | 'udp';
  /** The guest's vsock port: which guest socket this flow is. */
  readonly guestPort: number;
  readonly from: string;
  readonly to: string;
}

export const FLOW_STATE_CHANNEL = 'tsibox:tsi:flow-state';
const flowStateChannel = channel(FLOW_STATE_CHANNEL);

/** Every state and the states it may move to (terminal states map to none). */
export type LegalMoves<S extends string> = { readonly [K in S]: readonly S[] };

/**
 * Checks that `from → to` is a move `legal` allows and reports it. An illegal move is
 * a bug in the proxy, not something a guest can cause: it throws.
 */
export function checkTransition<S extends string>(kind: FlowTransition['kind'], legal: LegalMoves<S>, guestPort: number, from: S, to: S): void {
  if (!legal[from].includes(to)) throw new TsiboxError('INVALID_STATE', `tsi ${kind} flow (guest port ${guestPort}): illegal transition ${from} -> ${to}`);
  if (flowStateChannel.hasSubscribers) flowStateChannel.publish({ kind, guestPort, from, to } satisfies FlowTransition);
}
