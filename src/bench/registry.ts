// The benchmarks `tsibox bench <name>` knows. Each one registers itself here once
// (see ./index.ts) and returns result rows; the CLI prints one JSON line per row.
import { TsiboxError } from '../errors.js';
import type { MachineInfo } from './machine.js';

export interface BenchOptions {
  /** Work per run (exits, round trips, ...); each bench has its own default. */
  iterations?: number;
  /** Repetitions; the reported value is the median. */
  runs?: number;
  /** Privilege level the synthetic guest runs at (benches that boot one). */
  cpl?: 0 | 3;
  /** Engine to measure (benches that run whole sandboxes). */
  engine?: string;
  /** Network mode for the virtio-net benches: 'passt' or 'gvproxy'. */
  net?: string;
  /** Progress notes for a human (the CLI sends them to stderr). */
  progress?: (message: string) => void;
}

/** One result line. Benches measure and report; they never assert times. */
export interface BenchResult {
  bench: string;
  /** Our number (the median over `runs`). */
  value: number;
  unit: string;
  /** The same measurement by the baseline program in the same invocation, or null. */
  baseline: number | null;
  /** value / baseline, or null without a baseline. */
  ratio: number | null;
  /** True when a smaller value (and ratio) is better. */
  lowerIsBetter: boolean;
  iterations: number;
  runs: number;
  machine: MachineInfo;
  [extra: string]: unknown;
}

export interface BenchDefinition {
  name: string;
  /** One line for `tsibox help`. */
  summary: string;
  defaultIterations: number;
  defaultRuns: number;
  run(opts: Required<Pick<BenchOptions, 'iterations' | 'runs'>> & BenchOptions): Promise<BenchResult[]>;
}

const benches = new Map<string, BenchDefinition>();

export function registerBench(def: BenchDefinition): void {
  if (benches.has(def.name)) throw new TsiboxError('INVALID_ARGUMENT', `bench ${def.name} is registered twice`);
  benches.set(def.name, def);
}

export function findBench(name: string): BenchDefinition | undefined {
  return benches.get(name);
}

export function listBenches(): BenchDefinition[] {
  return [...benches.values()];
}
