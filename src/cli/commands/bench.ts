import { findBench, listBenches, registerBench } from '../../bench/index.js';
import { ociBench } from '../../oci/bench.js';
import { UsageError } from '../args.js';
import { expectPositionals, type Command } from '../registry.js';

// Benches that drive layers above src/bench/ register here, where the CLI can see both.
registerBench(ociBench);

export const benchCommand: Command = {
  name: 'bench',
  summary: 'measure the engine against a C baseline; one JSON line per result',
  usage: 'bench <name> [--iterations N] [--runs R] [--cpl 0|3] [--engine qemu] [--net passt|gvproxy] [--quiet]',
  options: {
    iterations: { type: 'integer', value: 'N', min: 10, description: 'work per run (bench-specific default)' },
    runs: { type: 'integer', value: 'R', min: 1, max: 1000, description: 'repetitions; the value is the median' },
    cpl: { type: 'integer', value: '0|3', choices: [0, 3], description: 'privilege level of the synthetic guest (default 3)' },
    engine: { type: 'string', value: 'qemu', choices: ['qemu', 'kvm'], description: 'engine for benches that run whole sandboxes (boot, memory, oci)' },
    net: { type: 'string', value: 'passt|gvproxy', choices: ['passt', 'gvproxy'], description: 'network process: net-stream / net-connect (default gvproxy), iperf (besides TSI; default passt)' },
    quiet: { type: 'boolean', description: 'no progress notes on stderr' },
  },
  get help() {
    return ['benches:', ...listBenches().map((b) => `  ${b.name.padEnd(12)}${b.summary} (default ${b.defaultIterations} iterations, ${b.defaultRuns} runs)`)].join('\n');
  },
  async run(args, io) {
    expectPositionals(this, args, 1, 1);
    const name = args.positionals[0]!;
    const bench = findBench(name);
    if (!bench) throw new UsageError(`unknown bench ${JSON.stringify(name)} (one of: ${listBenches().map((b) => b.name).join(', ')})`);
    const o = args.options;
    const results = await bench.run({
      iterations: typeof o.iterations === 'number' ? o.iterations : bench.defaultIterations,
      runs: typeof o.runs === 'number' ? o.runs : bench.defaultRuns,
      ...(typeof o.cpl === 'number' ? { cpl: o.cpl as 0 | 3 } : {}),
      ...(typeof o.engine === 'string' ? { engine: o.engine } : {}),
      ...(typeof o.net === 'string' ? { net: o.net } : {}),
      ...(o.quiet ? {} : { progress: (m: string) => { io.stderr.write(`tsibox: ${m}\n`); } }),
    });
    for (const r of results) io.stdout.write(JSON.stringify(r) + '\n');
    return 0;
  },
};
