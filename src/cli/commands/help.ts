import { UsageError, describeOptions } from '../args.js';
import { expectPositionals, findCommand, listCommands, type Command } from '../registry.js';

export function overview(): string {
  const cmds = listCommands();
  const w = Math.max(...cmds.map((c) => c.name.length));
  return [
    'usage: tsibox <command> [options]',
    '',
    'commands:',
    ...cmds.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    '',
    'tsibox help <command> shows a command\'s options.',
  ].join('\n') + '\n';
}

export function commandHelp(cmd: Command): string {
  const opts = describeOptions(cmd.options);
  return [
    `usage: tsibox ${cmd.usage}`,
    '',
    cmd.summary,
    ...(opts.length ? ['', 'options:', ...opts] : []),
    ...(cmd.help ? ['', cmd.help] : []),
  ].join('\n') + '\n';
}

export const helpCommand: Command = {
  name: 'help',
  summary: 'show this list, or one command\'s options',
  usage: 'help [command]',
  options: {},
  async run(args, io) {
    expectPositionals(this, args, 0, 1);
    const name = args.positionals[0];
    if (name === undefined) {
      io.stdout.write(overview());
      return 0;
    }
    const cmd = findCommand(name);
    if (!cmd) throw new UsageError(`unknown command ${JSON.stringify(name)}`);
    io.stdout.write(commandHelp(cmd));
    return 0;
  },
};
