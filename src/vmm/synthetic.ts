// Starting a synthetic guest (docs/synthetic-guests.md): a flat 64-bit image loaded at
// 1 MiB and entered on every vCPU at CPL3 (or CPL0 for the ring-0 probe).
import { readFileSync } from 'node:fs';
import { TsiboxError } from '../errors.js';
import type { Vm } from './vm.js';
import { LAYOUT } from './x86/layout.js';
import { writeSystemTables, longModeSregs, entryRegs, type Cpl } from './x86/longmode.js';

export interface SyntheticGuestOptions {
  cpl?: Cpl;
  /** Passed to the guest in rdx. */
  param?: bigint | number;
}

export function loadSyntheticGuest(vm: Vm, image: Uint8Array | string, opts: SyntheticGuestOptions = {}): void {
  const bytes = typeof image === 'string' ? readFileSync(image) : image;
  const end = LAYOUT.IMAGE + bytes.length;
  if (bytes.length === 0 || !vm.memory.contains(LAYOUT.IMAGE, bytes.length)) {
    throw new TsiboxError('GUEST_IMAGE', `guest image of ${bytes.length} bytes does not fit in RAM at 0x${LAYOUT.IMAGE.toString(16)} (RAM ends at 0x${vm.memory.size.toString(16)}, image ends at 0x${end.toString(16)})`);
  }
  writeSystemTables(vm.memory);
  vm.memory.write(LAYOUT.IMAGE, bytes);
  const cpl = opts.cpl ?? 3;
  const param = BigInt(opts.param ?? 0);
  for (const v of vm.vcpus) {
    v.setSregs(longModeSregs(v.getSregs(), cpl));
    v.setRegs(entryRegs(LAYOUT.IMAGE, v.id, vm.vcpus.length, param));
  }
  vm.makeAllVcpusRunnable();
}
