// Fuzz target `agent`: a hostile guest exec agent against AgentClient, through the real
// VsockDevice and the software guest driver. Each iteration starts 1-4 execs with
// random options (stdin none / a Buffer up to 300 KiB / a Readable; outputs read, left
// unread or destroyed; kill() at random moments) while the simulated agent answers each
// with a random script: plausible frames (STARTED, output, honest STDIN_ACKs, EXIT),
// frames with flipped bytes, lying lengths (up to 4 GiB), unknown types, random bytes,
// frames cut across writes, and a random ending (EXIT, close, reset, or silence).
// Then every connection still open is reset from the guest side.
//
// Fails when: an exception or unhandled rejection escapes; an exec does not settle
// once its connection is gone; a settled exec is not a valid exit (0..255, signal
// matching 128+N) or a TsiboxError with an AGENT_* code; the client sends a malformed
// message; the host holds more than one buf_alloc uncredited per connection; a
// connection or exec outlives its iteration; or the heap grows past its bound.
import { PassThrough } from 'node:stream';
import { TsiboxError } from '../../../src/errors.js';
import type { FuzzTarget } from '../fuzz-target.js';
import { randomBytes, type Prng } from '../prng.js';
import { GuestVsock } from '../vsock/guest.js';
import { AgentClient, type ExecHandle } from '../../../src/agent/client.js';
import { MAX_DATA, MsgType, STDIN_WINDOW, guestFrames } from '../../../src/agent/protocol.js';
import { FakeAgent, type FakeExec } from './fake-agent.js';

const BUF_ALLOC = 256 * 1024;
/** Event-loop turns an iteration lets the scripts run before the guest resets what is left. */
const TURNS = 12;
/** Turns an exec may take to settle once its connection is gone. */
const SETTLE_TURNS = 50;
const HEAP_LIMIT = 512 * 1024 * 1024;
const AGENT_CODES = new Set(['AGENT_UNAVAILABLE', 'AGENT_PROTOCOL', 'AGENT_BUSY']);

const turn = (): Promise<void> => new Promise((r) => { setImmediate(r); });

interface Tracked {
  h: ExecHandle;
  settled: boolean;
  failure: string | null;
}

export function agentTarget(): FuzzTarget {
  const escaped: string[] = [];
  const onUncaught = (e: unknown): void => { escaped.push(`uncaught: ${e instanceof Error ? e.stack ?? e.message : String(e)}`); };
  const onRejection = (e: unknown): void => { escaped.push(`unhandled rejection: ${e instanceof Error ? e.stack ?? e.message : String(e)}`); };
  process.on('uncaughtException', onUncaught);
  process.on('unhandledRejection', onRejection);

  const guest = new GuestVsock({ memorySize: 48 << 20, queueSize: 64, deviceOptions: { maxConnections: 64 } });
  let rng: Prng;
  const agent = new FakeAgent(guest, { autoAck: false, fallback: (x) => { void script(x, rng); } });
  const client = new AgentClient(guest.device, { connectTimeoutMs: 2000 });
  const outcomes = new Map<string, number>();
  let iterations = 0;
  let maxHeap = 0;
  let maxUnconsumed = 0;

  const count = (k: string): void => { outcomes.set(k, (outcomes.get(k) ?? 0) + 1); };

  const track = (h: ExecHandle): Tracked => {
    const t: Tracked = { h, settled: false, failure: null };
    h.exited.then((e) => {
      t.settled = true;
      if (!Number.isInteger(e.exitCode) || e.exitCode < 0 || e.exitCode > 255) t.failure = `exit code ${e.exitCode}`;
      else if (e.signal !== undefined && e.exitCode <= 128) t.failure = `signal ${e.signal} with status ${e.exitCode}`;
      count(e.signal !== undefined ? 'signal' : e.exitCode === 0 ? 'exit 0' : 'exit other');
    }, (err: unknown) => {
      t.settled = true;
      if (!(err instanceof TsiboxError) || !AGENT_CODES.has(err.code)) t.failure = `exited rejected with ${String(err)}`;
      else count(err.code);
    });
    h.pid.catch((err: unknown) => {
      if (!(err instanceof TsiboxError)) t.failure = `pid rejected with ${String(err)}`;
    });
    return t;
  };

  const check = (): string | null => {
    if (escaped.length > 0) return escaped.shift()!;
    const st = guest.device.stats();
    maxUnconsumed = Math.max(maxUnconsumed, st.unconsumed);
    if (st.unconsumed > Math.max(1, st.connections) * BUF_ALLOC) return `host holds ${st.unconsumed} bytes uncredited over ${st.connections} connections`;
    if (agent.stats.badHostMessages > 0) return `the client sent ${agent.stats.badHostMessages} malformed messages`;
    return null;
  };

  return {
    async iterate(r: Prng): Promise<string | null> {
      rng = r;
      iterations++;
      const n = 1 + r.below(4);
      const tracked: Tracked[] = [];
      for (let i = 0; i < n; i++) {
        const stdinKind = r.below(4);
        let src: PassThrough | null = null;
        const stdin = stdinKind === 0 ? undefined
          : stdinKind === 1 ? Buffer.from(randomBytes(r, r.below(64)))
            : stdinKind === 2 ? Buffer.alloc(r.below(300 * 1024), 0x61)
              : (src = new PassThrough());
        const h = client.exec([`fuzz${i}`, ...(r.chance(0.3) ? ['arg'] : [])], {
          ...(r.chance(0.3) ? { env: { K: 'v' } } : {}),
          ...(r.chance(0.2) ? { workdir: '/w' } : {}),
          ...(stdin !== undefined ? { stdin } : {}),
        });
        const t = track(h);
        tracked.push(t);
        // Output: read (mostly), left unread, or destroyed.
        for (const s of [h.stdout, h.stderr]) {
          const how = r.below(10);
          if (how < 7) s.resume();
          else if (how === 7) s.destroy();
        }
        if (src !== null) {
          const chunks = r.below(5);
          for (let k = 0; k < chunks; k++) src.write(Buffer.alloc(1 + r.below(80_000), 0x62));
          if (r.chance(0.8)) src.end();
          else if (r.chance(0.5)) src.destroy(new Error('fuzz source failed'));
        }
      }
      for (let i = 0; i < TURNS; i++) {
        if (r.chance(0.1)) {
          const t = r.pick(tracked);
          try {
            t.h.kill(r.pick(['SIGTERM', 'SIGKILL', 'SIGINT', 9, 64] as const));
          } catch (e) {
            return `kill threw: ${String(e)}`;
          }
        }
        await turn();
        const bad = check();
        if (bad !== null) return bad;
      }
      // The guest ends whatever is still open; every exec must settle by itself.
      for (const s of [...agent.sockets]) s.reset();
      for (let i = 0; i < SETTLE_TURNS && tracked.some((t) => !t.settled); i++) await turn();
      for (const t of tracked) {
        if (!t.settled) return 'an exec did not settle after its connection was reset';
        if (t.failure !== null) return t.failure;
        // Unread streams are drained so nothing is held past the iteration.
        t.h.stdout.resume();
        t.h.stderr.resume();
      }
      if (client.running !== 0) return `${client.running} execs still counted as running`;
      for (let i = 0; i < 10 && guest.device.stats().connections > 0; i++) await turn();
      if (guest.device.stats().connections !== 0) return `${guest.device.stats().connections} connections left open`;
      if (iterations % 200 === 0) {
        const heap = process.memoryUsage().heapUsed;
        maxHeap = Math.max(maxHeap, heap);
        if (heap > HEAP_LIMIT) return `heap at ${heap} bytes`;
      }
      return check();
    },
    describe(): string {
      const o = [...outcomes].sort().map(([k, v]) => `${k} ${v}`).join(', ');
      return `${agent.stats.execs} execs reached the agent (${agent.stats.connections} connections): ${o}; ` +
        `max uncredited ${maxUnconsumed} B, max heap ${(maxHeap / 1048576).toFixed(0)} MiB, window overruns ${agent.stats.windowOverruns}`;
    },
    async finish(): Promise<string | null> {
      for (let i = 0; i < 20; i++) await turn();
      return check();
    },
    close(): void {
      client.close();
      agent.close();
      guest.close();
      process.off('uncaughtException', onUncaught);
      process.off('unhandledRejection', onRejection);
    },
  };
}

/** One hostile agent conversation, a step per event-loop turn. */
async function script(x: FakeExec, rng: Prng): Promise<void> {
  const steps = 1 + rng.below(8);
  let pending: Buffer | null = null;
  for (let i = 0; i < steps && x.socket.state !== 'closed'; i++) {
    if (pending !== null && rng.chance(0.7)) {
      // The rest of a frame cut across writes.
      x.raw(pending);
      pending = null;
    }
    let f = plausible(x, rng, i);
    // Mostly valid conversations (so later states are reached), sometimes broken.
    if (rng.chance(0.05)) {
      f = Buffer.from(f);
      const flips = 1 + rng.below(3);
      for (let k = 0; k < flips; k++) f[rng.below(f.length)] = rng.below(256);
    }
    if (rng.chance(0.02) && f.length >= 8) f.writeUInt32LE(rng.chance(0.5) ? rng.u32() : 0xffff_ffff, 4);
    if (rng.chance(0.02)) f = Buffer.from(randomBytes(rng, 1 + rng.below(64)));
    if (rng.chance(0.01)) f = guestFrames.raw(rng.below(256), randomBytes(rng, rng.below(16)));
    if (rng.chance(0.15) && f.length > 1) {
      const cut = 1 + rng.below(f.length - 1);
      pending = f.subarray(cut);
      f = f.subarray(0, cut);
    }
    x.raw(f);
    await turn();
  }
  if (x.socket.state === 'closed') return;
  switch (rng.below(8)) {
    case 0: case 1: case 2: case 3: {
      const sig = rng.chance(0.2) ? 1 + rng.below(31) : 0;
      x.exit(sig === 0 ? (rng.chance(0.5) ? 0 : rng.below(256)) : 128 + sig, sig);
      return;
    }
    case 4: x.close(); return;
    case 5: x.reset(); return;
    default: return; // silence: the iteration's end resets it
  }
}

/** A frame that would be valid at step `i` of a well-behaved agent (mostly). */
function plausible(x: FakeExec, rng: Prng, i: number): Buffer {
  if (i === 0) {
    if (rng.chance(0.85)) return guestFrames.started(1 + rng.below(30000));
    if (rng.chance(0.5)) return guestFrames.startFailed(125 + rng.below(3), rng.below(40), 'exec fuzz: No such file or directory');
    return guestFrames.error(1 + rng.below(4), 'fuzz');
  }
  switch (rng.below(12)) {
    case 0: case 1: case 2: return guestFrames.stdout(randomBytes(rng, 1 + rng.below(rng.chance(0.1) ? MAX_DATA : 300)));
    case 3: case 4: return guestFrames.stderr(randomBytes(rng, 1 + rng.below(200)));
    case 5: case 6: case 7: {
      // Honest acknowledgements only: a lying one is a protocol error the host catches.
      const n = Math.min(x.unacked, STDIN_WINDOW);
      if (n > 0) {
        x.ack(1 + rng.below(n));
        return guestFrames.stdout(Buffer.from('a'));
      }
      return guestFrames.stderr(Buffer.from('e'));
    }
    case 8: return guestFrames.raw(MsgType.STDIN_ACK, randomBytes(rng, 4)); // a lying ack
    case 9: return guestFrames.started(1 + rng.below(100)); // a second STARTED
    default: return guestFrames.stdout(Buffer.alloc(1 + rng.below(MAX_DATA), 0x63));
  }
}
