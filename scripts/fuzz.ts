// npm run fuzz -- <target> [--iterations N] [--seed S] [--mode M]
// Runs a seeded fuzz target and prints `iterations=N failures=F seed=S` last; the exit
// code is nonzero when anything failed. Targets register below.
import { parseArgs } from 'node:util';
import { Prng } from '../test/support/prng.js';
import type { FuzzTarget } from '../test/support/fuzz-target.js';
import { virtqueueTarget } from '../test/support/virtio/fuzz-virtqueue.js';
import { tsiTarget } from '../test/support/tsi/fuzz-tsi.js';
import { netstackTarget } from '../test/support/net/fuzz-netstack.js';
import { agentTarget } from '../test/support/agent/fuzz-agent.js';

const targets: Record<string, (mode: string | undefined) => FuzzTarget> = {
  virtqueue: () => virtqueueTarget(),
  // --mode deny (default): parser and device only; --mode open: an allowing policy, a
  // port map and loopback servers of our own, so messages reach the proxies.
  tsi: (mode) => tsiTarget(mode === undefined ? 'deny' : mode),
  netstack: () => netstackTarget(),
  // A hostile guest exec agent (random and mutated frames) against AgentClient.
  agent: () => agentTarget(),
};

/** Failures reported in full before the rest are only counted. */
const MAX_REPORTED = 5;

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      iterations: { type: 'string', default: '10000' },
      seed: { type: 'string' },
      mode: { type: 'string' },
    },
  });
  const name = positionals[0];
  const make = name === undefined ? undefined : targets[name];
  if (make === undefined) {
    process.stderr.write(`usage: npm run fuzz -- <${Object.keys(targets).join('|')}> [--iterations N] [--seed S] [--mode deny|open (tsi)]\n`);
    return 2;
  }
  const iterations = Number(values.iterations);
  const seed = values.seed === undefined ? (Date.now() ^ (process.pid << 16)) >>> 0 : Number(values.seed) >>> 0;
  if (!Number.isSafeInteger(iterations) || iterations < 0) {
    process.stderr.write(`--iterations must be a non-negative integer\n`);
    return 2;
  }
  const rng = new Prng(seed);
  const target = make(values.mode);
  let failures = 0;
  const started = performance.now();
  try {
    for (let i = 0; i < iterations; i++) {
      const failure = await target.iterate(rng);
      if (failure === null) continue;
      failures++;
      if (failures <= MAX_REPORTED) process.stdout.write(`iteration ${i}: ${failure}\n`);
    }
    const last = target.finish ? await target.finish() : null;
    if (target.describe) process.stdout.write(`${name}: ${target.describe()}\n`);
    if (last !== null) {
      failures++;
      process.stdout.write(`after the last iteration: ${last}\n`);
    }
  } finally {
    await target.close();
  }
  const seconds = (performance.now() - started) / 1000;
  process.stdout.write(`${name}: ${iterations} iterations in ${seconds.toFixed(1)} s\n`);
  process.stdout.write(`iterations=${iterations} failures=${failures} seed=${seed}\n`);
  return failures === 0 ? 0 : 1;
}

process.exitCode = await main();
