// Requests about the guest's main workload, through the exec agent (docs/exec-agent.md,
// "Signalling the main workload", "The main workload's terminal"): a connection whose
// first and only frame is SIGNAL or WINSIZE. For SIGNAL the agent hands the number to
// init (a queued real-time signal), which sends it to the workload's process group,
// SIGKILL included; for WINSIZE it sets the window size of the workload's terminal.
// Then it closes the connection: end of stream means done; an ERROR frame means it
// could not.
import { TsiboxError } from '../errors.js';
import type { VsockConnection } from '../virtio/vsock/connection.js';
import type { VsockDevice } from '../virtio/vsock/device.js';
import { BACKOFF_FIRST_MS, BACKOFF_MAX_MS } from './session.js';
import { AgentPeerFault, FrameDecoder, decodeGuestMessage, encodeSignal, encodeWinsize, signalNumber } from './protocol.js';

/** The agent answers at once; past this the guest is stuck or gone. */
const ANSWER_TIMEOUT_MS = 10_000;

/**
 * Sends `sig` to the main workload's process group. Resolves once init has it.
 * Rejects: INVALID_ARGUMENT (an unknown signal), AGENT_UNAVAILABLE (no agent within
 * `connectTimeoutMs`: off, not up yet, or the VM ended; or no answer in 10 s),
 * AGENT_PROTOCOL (the agent refused, with its message).
 */
export async function signalMainWorkload(device: VsockDevice, port: number, sig: NodeJS.Signals | number, connectTimeoutMs: number): Promise<void> {
  await mainRequest(device, port, encodeSignal(signalNumber(sig)), 'signal the main workload', connectTimeoutMs);
}

/**
 * Sets the window size of the main workload's terminal (the guest kernel then sends
 * SIGWINCH to its foreground process group). Resolves once it is set. Rejects:
 * INVALID_ARGUMENT (not 1..65535), AGENT_UNAVAILABLE (as signalMainWorkload),
 * AGENT_PROTOCOL (the agent refused: e.g. the workload has no terminal).
 */
export async function resizeMainTerminal(device: VsockDevice, port: number, cols: number, rows: number, connectTimeoutMs: number): Promise<void> {
  await mainRequest(device, port, encodeWinsize(cols, rows), 'set the terminal size', connectTimeoutMs);
}

/** One request frame on a connection of its own, retried while the guest refuses. */
async function mainRequest(device: VsockDevice, port: number, request: Buffer, what: string, connectTimeoutMs: number): Promise<void> {
  const deadline = performance.now() + connectTimeoutMs;
  let backoff = BACKOFF_FIRST_MS;
  for (let attempt = 1; ; attempt++) {
    const r = await once(device, port, request, what);
    if (r === null) return;
    if (r.retry && performance.now() < deadline) {
      await new Promise((res) => setTimeout(res, Math.min(backoff, Math.max(0, deadline - performance.now()))));
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      continue;
    }
    throw r.error ?? new TsiboxError('AGENT_UNAVAILABLE', `the guest exec agent did not accept a connection on vsock port ${port} within ${connectTimeoutMs} ms (${attempt} attempts); is it off (tsibox.agent=0), or is the guest not up?`);
  }
}

/** One attempt: null when done; retry when the guest refused the connection. */
function once(device: VsockDevice, port: number, request: Buffer, what: string): Promise<null | { retry: boolean; error?: TsiboxError }> {
  return new Promise((resolve) => {
    let conn: VsockConnection;
    try {
      conn = device.connect(port);
    } catch (err) {
      if (err instanceof TsiboxError && err.code === 'VSOCK_BUSY') { resolve({ retry: true }); return; }
      resolve({ retry: false, error: new TsiboxError('AGENT_UNAVAILABLE', `cannot connect to the exec agent: ${(err as Error).message}`, { cause: err }) });
      return;
    }
    let opened = false;
    let settled = false;
    const finish = (v: null | { retry: boolean; error?: TsiboxError }): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (conn.state !== 'closed') conn.destroy('signal sent');
      resolve(v);
    };
    const timer = setTimeout(() => {
      finish({ retry: false, error: new TsiboxError('AGENT_UNAVAILABLE', `the exec agent did not answer (${what}) within ${ANSWER_TIMEOUT_MS} ms`) });
    }, ANSWER_TIMEOUT_MS);
    const decoder = new FrameDecoder('guest');
    conn.once('connect', () => {
      opened = true;
      conn.write(request);
    });
    conn.on('data', (d: Buffer) => {
      conn.consumed(d.length);
      decoder.push(d);
      const f = decoder.next();
      if (f === null) return;
      const m = f instanceof AgentPeerFault ? f : decodeGuestMessage(f);
      const why = m instanceof AgentPeerFault ? m.reason : m.type === 'error' ? m.message : `unexpected ${m.type}`;
      finish({ retry: false, error: new TsiboxError('AGENT_PROTOCOL', `the exec agent could not ${what}: ${why}`) });
    });
    conn.on('end', () => { finish(null); });
    conn.on('close', () => { finish(opened ? null : { retry: true }); });
  });
}
