// bench tsi-stream / tsi-connect: TSI through the real vsock device and proxies, with
// the guest played by the software driver (GuestVsock + TsiGuest) in this process,
// against plain loopback TCP between two sockets of this process in the same run. The
// guest is a simulator from the test tree, so the bodies are in
// test/support/bench/tsi.ts, loaded at run time.
import type { BenchDefinition } from './registry.js';
import { loadTestTreeBench } from './test-tree.js';

interface TsiBody { runTsiStream: BenchDefinition['run']; runTsiConnect: BenchDefinition['run'] }

export const tsiStreamBench: BenchDefinition = {
  name: 'tsi-stream',
  summary: 'bulk TCP through the vsock device and TSI proxies (guest→host, host→guest), Gbit/s, vs loopback TCP',
  defaultIterations: 256,
  defaultRuns: 3,
  async run(opts) {
    const body = await loadTestTreeBench<TsiBody>('tsi-stream', 'tsi');
    return await body.runTsiStream(opts);
  },
};

export const tsiConnectBench: BenchDefinition = {
  name: 'tsi-connect',
  summary: 'TCP connects per second through TSI (connect, 1 byte each way, close) vs direct loopback connects',
  defaultIterations: 2000,
  defaultRuns: 3,
  async run(opts) {
    const body = await loadTestTreeBench<TsiBody>('tsi-connect', 'tsi');
    return await body.runTsiConnect(opts);
  },
};
