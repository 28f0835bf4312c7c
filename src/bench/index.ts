// Every benchmark `tsibox bench` offers: one registration per bench.
import { registerBench } from './registry.js';
import { exitsBench } from './exits.js';
import { ioeventfdBench } from './ioeventfd.js';
import { bootBench } from './boot.js';
import { memoryBench } from './memory.js';
import { virtqueueBench } from './virtqueue.js';
import { tsiConnectBench, tsiStreamBench } from './tsi.js';
import { netConnectBench, netStreamBench } from './net.js';
import { iperfBench } from './iperf.js';
import { fsBench } from './fs.js';

registerBench(exitsBench);
registerBench(ioeventfdBench);
registerBench(bootBench);
registerBench(memoryBench);
registerBench(virtqueueBench);
registerBench(tsiStreamBench);
registerBench(tsiConnectBench);
registerBench(netStreamBench);
registerBench(netConnectBench);
registerBench(iperfBench);
registerBench(fsBench);

export { findBench, listBenches, registerBench, type BenchDefinition, type BenchOptions, type BenchResult } from './registry.js';
