// Runs a synthetic guest through our KVM engine once and times the whole run.
import { TsiboxError } from '../errors.js';
import { testGuestPath } from '../paths.js';
import { Vm } from './vm.js';
import { loadSyntheticGuest } from './synthetic.js';

export interface TimedRunOptions {
  cpl?: 0 | 3;
  param: number | bigint;
  memoryMiB?: number;
  timeoutMs?: number;
  /** Registers devices / ioeventfds before the guest starts. */
  setup?: (vm: Vm) => void;
}

/**
 * Creates a VM, loads `guest`, and returns the nanoseconds `vm.run()` took (worker
 * start-up, every exit, and thread join). Fixed costs are the same for any `param`,
 * so callers subtract two runs to get a per-iteration cost. The guest must end
 * with debug-exit code 0.
 */
export async function timeGuestRun(guest: string, opts: TimedRunOptions): Promise<number> {
  const vm = Vm.create({ memoryMiB: opts.memoryMiB ?? 16 });
  try {
    loadSyntheticGuest(vm, testGuestPath(guest), { cpl: opts.cpl ?? 3, param: BigInt(opts.param) });
    opts.setup?.(vm);
    const t0 = process.hrtime.bigint();
    const exit = await vm.run({ timeoutMs: opts.timeoutMs ?? 60_000 });
    const ns = Number(process.hrtime.bigint() - t0);
    if (exit.reason !== 'exit' || exit.code !== 0) {
      throw new TsiboxError('VM_ERROR', `guest ${guest} (param ${opts.param}, CPL${opts.cpl ?? 3}) ended with ${exit.reason}${exit.code === undefined ? '' : ` code ${exit.code}`}${exit.detail ? `: ${exit.detail}` : ''}`);
    }
    return ns;
  } finally {
    await vm.close();
  }
}
