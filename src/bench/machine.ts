// A one-line description of the machine a benchmark ran on, printed with every result.
import { readFileSync } from 'node:fs';
import { cpus, release, totalmem } from 'node:os';

export interface MachineInfo {
  cpu: string;
  cpus: number;
  memoryGiB: number;
  kernel: string;
  node: string;
}

let cached: MachineInfo | null = null;

export function machineInfo(): MachineInfo {
  if (cached) return cached;
  let cpu = cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpu = m[1]!.trim();
  } catch { /* keep os.cpus()'s answer */ }
  cached = {
    cpu,
    cpus: cpus().length,
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
  };
  return cached;
}
