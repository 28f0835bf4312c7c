import { runDoctor, formatTable, worstStatus } from '../../doctor/index.js';
import { expectPositionals, type Command } from '../registry.js';

export const doctorCommand: Command = {
  name: 'doctor',
  summary: 'check what this host offers tsibox (KVM, ring-0 speed, QEMU, passt, kernel cache)',
  usage: 'doctor [--json] [--no-probe]',
  options: {
    json: { type: 'boolean', description: 'print the results as one JSON array' },
    'no-probe': { type: 'boolean', description: 'skip the timed ring-0 probe' },
  },
  help: 'Exit status 1 when a check fails; warnings do not change it.',
  async run(args, io) {
    expectPositionals(this, args, 0, 0);
    const results = await runDoctor({ skipProbe: args.options['no-probe'] === true });
    io.stdout.write(args.options.json ? JSON.stringify(results) + '\n' : formatTable(results));
    return worstStatus(results) === 'fail' ? 1 : 0;
  },
};
