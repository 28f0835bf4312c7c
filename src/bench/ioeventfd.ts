// bench ioeventfd: guest MMIO write to 0xd0001000 → KVM signals an eventfd (no exit to
// user space) → our main-thread callback stores the running count in the mailbox u64
// at 0x3000 → the spinning guest sees it and writes the next sequence number. One
// line of the result is that full round trip; the baseline is cvmm's ioeventfd mode
// (a C thread blocking in read(eventfd)). Same subtraction method as bench exits.
import type { BenchDefinition, BenchResult } from './registry.js';
import { versusCvmm } from './versus-cvmm.js';
import type { Vm } from '../vmm/vm.js';

const IOEVENTFD_ADDRESS = 0xd000_1000;
const MAILBOX = 0x3000;

function ackDevice(vm: Vm): void {
  let total = 0n;
  vm.addIoEventFd({ address: IOEVENTFD_ADDRESS, length: 4, pio: false }, (count) => {
    total += count;
    vm.memory.writeU64(MAILBOX, total);
  });
}

export const ioeventfdBench: BenchDefinition = {
  name: 'ioeventfd',
  summary: 'guest write → ioeventfd → main-thread callback → guest sees the ack, ours vs C',
  defaultIterations: 10_000,
  defaultRuns: 5,
  async run({ iterations, runs, cpl = 3, progress }): Promise<BenchResult[]> {
    return [await versusCvmm({
      bench: 'ioeventfd', guest: 'bench-ioeventfd', cvmmMode: 'ioeventfd', cvmmField: 'ns_per_roundtrip', unit: 'ns/roundtrip',
      iterations, runs, cpl, setup: ackDevice, ...(progress ? { progress } : {}),
    })];
  },
};
