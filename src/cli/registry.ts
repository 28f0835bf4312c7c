// The subcommands `tsibox` knows. Each one registers itself once (see ./commands.ts).
import type { Readable, Writable } from 'node:stream';
import { TsiboxError } from '../errors.js';
import { UsageError, type OptionSpecs, type ParsedArgs } from './args.js';

export interface CliIo {
  stdout: Writable;
  stderr: Writable;
  /** Input for commands that forward it (default process.stdin). */
  stdin?: Readable;
}

export interface Command {
  name: string;
  /** One line for the command list. */
  summary: string;
  /** Usage line without the program name, e.g. "doctor [--json]". */
  usage: string;
  /** More help text after the options (optional). */
  help?: string;
  options: OptionSpecs;
  /**
   * The command parses its own arguments (`tsibox oci` speaks runc's flag syntax): it
   * gets them untouched as `positionals`, and `--help` is its own to answer too.
   */
  rawArgs?: boolean;
  /** Runs with parsed arguments; resolves with the exit status. Throw UsageError for misuse. */
  run(args: ParsedArgs, io: CliIo): Promise<number>;
}

const commands = new Map<string, Command>();

export function registerCommand(cmd: Command): void {
  if (commands.has(cmd.name)) throw new TsiboxError('INVALID_ARGUMENT', `command ${cmd.name} registered twice`);
  commands.set(cmd.name, cmd);
}

export function findCommand(name: string): Command | undefined {
  return commands.get(name);
}

export function listCommands(): Command[] {
  return [...commands.values()];
}

/** Throws UsageError unless there are between min and max positionals. */
export function expectPositionals(cmd: Command, args: ParsedArgs, min: number, max: number): void {
  const n = args.positionals.length;
  if (n < min) throw new UsageError(`${cmd.name}: missing argument (usage: tsibox ${cmd.usage})`);
  if (n > max) throw new UsageError(`${cmd.name}: unexpected argument ${JSON.stringify(args.positionals[max])} (usage: tsibox ${cmd.usage})`);
}
