// Boot a Linux kernel on the in-process KVM engine with COM1 as the console, and
// watch the console for milestones. Used by the boot tests and scripts/boot-check.
import { Writable } from 'node:stream';
import { Vm, type VmExit } from '../vm.js';
import { loadLinux, type LinuxBootInfo } from './linux.js';

/**
 * Kernel options for our KVM machine: COM1 console, i8042 reset on reboot, no probing
 * of legacy hardware we do not have (the i8042 options save ~0.5 s).
 */
export const KVM_BASE_CMDLINE = [
  'console=ttyS0', 'reboot=k', 'panic=-1', 'nomodule',
  'i8042.noaux', 'i8042.nomux', 'i8042.nopnp', 'i8042.dumbkbd',
].join(' ');

export interface LinuxRunOptions {
  kernel: string | Uint8Array;
  initrd?: string | Uint8Array;
  cmdline: string;
  memoryMiB?: number;
  vcpus?: number;
  timeoutMs?: number;
  /** Stop the VM as soon as the console shows this text (e.g. the banner). */
  stopOn?: string;
  /** Console milestones to time, from the first KVM_RUN: text → ms. */
  milestones?: readonly string[];
  /** A copy of the console output, as it arrives. */
  console?: (text: string) => void;
}

export interface LinuxRunResult {
  exit: VmExit;
  output: string;
  info: LinuxBootInfo;
  /** ms from vCPU start to each milestone's first appearance. */
  milestones: Record<string, number>;
  ms: number;
}

export async function runLinuxOnKvm(opts: LinuxRunOptions): Promise<LinuxRunResult> {
  let output = '';
  const milestones: Record<string, number> = {};
  let t0 = 0;
  let vm: Vm | null = null;
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      const text = chunk.toString('latin1');
      output += text;
      opts.console?.(text);
      for (const m of opts.milestones ?? []) {
        if (milestones[m] === undefined && output.includes(m)) milestones[m] = performance.now() - t0;
      }
      if (opts.stopOn !== undefined && output.includes(opts.stopOn)) void vm?.stop();
      done();
    },
  });
  vm = Vm.create({
    memoryMiB: opts.memoryMiB ?? 256,
    vcpus: opts.vcpus ?? 1,
    serial: sink,
    serialIrq: true,
    // A PC kernel probes ports and addresses of hardware we do not model: absent
    // hardware reads as all ones, as on a real board.
    unhandledPio: 'ignore',
    unhandledMmio: 'ignore',
  });
  try {
    const info = loadLinux(vm, { kernel: opts.kernel, ...(opts.initrd === undefined ? {} : { initrd: opts.initrd }), cmdline: opts.cmdline });
    t0 = performance.now();
    const exit = await vm.run(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs });
    const ms = performance.now() - t0;
    await new Promise((r) => setImmediate(r));
    return { exit, output, info, milestones, ms };
  } finally {
    await vm.close();
  }
}
