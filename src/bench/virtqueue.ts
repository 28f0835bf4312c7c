// bench virtqueue: requests per second through virtio-rng, (1) driven by the software
// driver over the real MMIO transport (no VM), and (2) driven by a synthetic KVM guest
// (native/testguest/virtio-rng-bench.c) kicking through an ioeventfd and completed
// through an irqfd, with interrupts signalled and suppressed. Every row's baseline is
// the C ring walk (native/bench/ringwalk.c) doing the same device work. The body is in
// the test tree (test/support/bench/virtqueue.ts: the software driver is a test double);
// the KVM half is ./virtqueue-kvm.ts.
import type { BenchDefinition } from './registry.js';
import { loadTestTreeBench } from './test-tree.js';

interface VirtqueueBody { run: BenchDefinition['run'] }

export const virtqueueBench: BenchDefinition = {
  name: 'virtqueue',
  summary: 'virtio-rng requests/s: software driver, and a KVM guest via ioeventfd + irqfd, vs a C ring walk',
  defaultIterations: 20_000,
  defaultRuns: 3,
  async run(opts) {
    const body = await loadTestTreeBench<VirtqueueBody>('virtqueue', 'virtqueue');
    return await body.run(opts);
  },
};
