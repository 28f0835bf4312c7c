// The CLI without process side effects: parse, dispatch, map errors to exit statuses
// (0 ok, 1 failure, 2 usage). main.ts wires it to the process.
import { TsiboxError } from '../errors.js';
import { UsageError, parseArgs, type ParsedArgs } from './args.js';
import { findCommand, type CliIo, type Command } from './registry.js';
import { commandHelp, overview } from './commands/help.js';
import './commands.js';

export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export async function runCli(argv: readonly string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    io.stderr.write(overview());
    return EXIT_USAGE;
  }
  if (name === '--help' || name === '-h') {
    io.stdout.write(overview());
    return EXIT_OK;
  }
  const cmd = findCommand(name);
  if (!cmd) {
    io.stderr.write(`tsibox: unknown command ${JSON.stringify(name)}\n${overview()}`);
    return EXIT_USAGE;
  }
  if (cmd.rawArgs === true) return runCommand(cmd, { positionals: rest, options: {} }, io);
  const dashdash = rest.indexOf('--');
  const own = dashdash < 0 ? rest : rest.slice(0, dashdash); // after `--` belongs to the guest program
  if (own.includes('--help') || own.includes('-h')) {
    io.stdout.write(commandHelp(cmd));
    return EXIT_OK;
  }
  let parsed: ParsedArgs;
  try {
    parsed = parseArgs(rest, cmd.options);
  } catch (err) {
    return report(cmd, err, io);
  }
  return runCommand(cmd, parsed, io);
}

async function runCommand(cmd: Command, args: ParsedArgs, io: CliIo): Promise<number> {
  try {
    return await cmd.run(args, io);
  } catch (err) {
    return report(cmd, err, io);
  }
}

function report(cmd: Command, err: unknown, io: CliIo): number {
  if (err instanceof UsageError) {
    io.stderr.write(`tsibox: ${err.message}\nusage: tsibox ${cmd.usage}\n`);
    return EXIT_USAGE;
  }
  if (err instanceof TsiboxError) {
    io.stderr.write(`tsibox: ${err.message} [${err.code}]\n`);
    return EXIT_FAILURE;
  }
  io.stderr.write(`tsibox: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  return EXIT_FAILURE;
}
