// Every `tsibox` subcommand: one registration each.
import { registerCommand } from './registry.js';
import { helpCommand } from './commands/help.js';
import { doctorCommand } from './commands/doctor.js';
import { benchCommand } from './commands/bench.js';
import { kernelCommand } from './commands/kernel.js';
import { runCommand } from './commands/run.js';
import { ociCommand } from './commands/oci.js';

registerCommand(helpCommand);
registerCommand(doctorCommand);
registerCommand(benchCommand);
registerCommand(kernelCommand);
registerCommand(runCommand);
registerCommand(ociCommand);
