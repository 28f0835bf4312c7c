// Runs a synthetic guest on a fresh VM and always closes the VM.
import { PassThrough } from 'node:stream';
import { Vm, type VmExit, type VmOptions } from '../../src/vmm/vm.js';
import { loadSyntheticGuest } from '../../src/vmm/synthetic.js';
import { testGuestPath } from '../../src/paths.js';
import type { BusDevice } from '../../src/vmm/bus.js';

export interface GuestRun {
  exit: VmExit;
  serial: string;
  ms: number;
}

export interface GuestRunOptions extends VmOptions {
  param?: bigint | number;
  cpl?: 0 | 3;
  timeoutMs?: number;
  /** Called after the VM exists and before it runs (register devices here). */
  setup?: (vm: Vm) => void;
  /** Called after the run, before close (inspect memory here). */
  inspect?: (vm: Vm) => void;
}

export async function runGuest(name: string, opts: GuestRunOptions = {}): Promise<GuestRun> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const vm = Vm.create({ memoryMiB: 16, serial: out, ...opts });
  try {
    opts.setup?.(vm);
    loadSyntheticGuest(vm, testGuestPath(name), { param: opts.param ?? 0, cpl: opts.cpl ?? 3 });
    const t0 = performance.now();
    const exit = await vm.run({ timeoutMs: opts.timeoutMs ?? 10_000 });
    const ms = performance.now() - t0;
    opts.inspect?.(vm);
    await new Promise((r) => setImmediate(r));
    return { exit, serial: Buffer.concat(chunks).toString('latin1'), ms };
  } finally {
    await vm.close();
  }
}

/** A 32-bit register that reads back what was last written, optionally corrupted. */
export function echoRegister(corrupt = (v: number): number => v): BusDevice & { writes: number } {
  const value = new Uint8Array(8);
  return {
    writes: 0,
    read(_o, data) {
      const dv = new DataView(value.buffer);
      const out = new DataView(data.buffer, data.byteOffset, data.length);
      if (data.length === 4) out.setUint32(0, corrupt(dv.getUint32(0, true)) >>> 0, true);
      else data.set(value.subarray(0, data.length));
    },
    write(_o, data) {
      this.writes++;
      value.fill(0);
      value.set(data);
    },
  };
}
