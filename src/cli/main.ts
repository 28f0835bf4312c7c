// Entry point of the `tsibox` command (bin/tsibox.js imports this module).
import { runCli } from './run.js';

process.exitCode = await runCli(process.argv.slice(2));
