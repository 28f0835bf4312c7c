// A small argument parser: `--name value`, `--name=value`, boolean `--flag`, one-letter
// aliases (`-t`; boolean ones group: `-ab`), `--` ends options, everything else is
// positional. Mistakes throw UsageError (exit status 2).
import { TsiboxError } from '../errors.js';

/** A command-line mistake: TsiboxError INVALID_ARGUMENT that the CLI reports with its usage and exit status 2. */
export class UsageError extends TsiboxError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', message);
    this.name = 'UsageError';
  }
}

export type OptionType = 'boolean' | 'string' | 'integer';

export interface OptionSpec {
  type: OptionType;
  /** Shown by help, e.g. "N". */
  value?: string;
  description: string;
  /** Inclusive bounds for 'integer'. */
  min?: number;
  max?: number;
  /** Allowed values for 'string' or 'integer'. */
  choices?: readonly (string | number)[];
  /** The option may repeat ('string' only); its value is then a string[]. */
  repeatable?: boolean;
  /** A one-letter alias: `-x` (`-x VALUE` for a non-boolean; boolean ones group: `-xy`). */
  short?: string;
}

export type OptionSpecs = Record<string, OptionSpec>;

export interface ParsedArgs {
  positionals: string[];
  options: Record<string, string | number | boolean | string[]>;
}

export function parseArgs(argv: readonly string[], specs: OptionSpecs): ParsedArgs {
  const positionals: string[] = [];
  const options: Record<string, string | number | boolean | string[]> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--') || arg === '-') {
      if (!arg.startsWith('-') || arg === '-') {
        positionals.push(arg);
        continue;
      }
      // -x, -xy (booleans), -x VALUE (the last letter may take a value)
      const letters = arg.slice(1);
      for (let j = 0; j < letters.length; j++) {
        const entry = Object.entries(specs).find(([, s]) => s.short === letters[j]);
        if (entry === undefined) throw new UsageError(letters.length === 1 ? `unknown option ${arg}` : `unknown option -${letters[j]!} in ${arg}`);
        const [name, spec] = entry;
        if (name in options && spec.repeatable !== true) throw new UsageError(`--${name} given twice`);
        if (spec.type === 'boolean') {
          options[name] = true;
          continue;
        }
        const next = argv[i + 1];
        if (j !== letters.length - 1 || next === undefined || next.startsWith('-')) throw new UsageError(`-${letters[j]!} (--${name}) needs a value`);
        i++;
        const value = convert(name, next, spec);
        if (spec.repeatable === true) {
          const list = options[name];
          options[name] = [...(Array.isArray(list) ? list : []), String(value)];
        } else options[name] = value;
      }
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const spec = Object.hasOwn(specs, name) ? specs[name] : undefined;
    if (!spec) throw new UsageError(`unknown option --${name}`);
    if (name in options && spec.repeatable !== true) throw new UsageError(`--${name} given twice`);
    if (spec.type === 'boolean') {
      if (eq >= 0) throw new UsageError(`--${name} takes no value`);
      options[name] = true;
      continue;
    }
    let raw: string;
    if (eq >= 0) raw = arg.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new UsageError(`--${name} needs a value`);
      raw = next;
      i++;
    }
    const value = convert(name, raw, spec);
    if (spec.repeatable === true) {
      const list = options[name];
      options[name] = [...(Array.isArray(list) ? list : []), String(value)];
    } else options[name] = value;
  }
  return { positionals, options };
}

function convert(name: string, raw: string, spec: OptionSpec): string | number {
  let value: string | number = raw;
  if (spec.type === 'integer') {
    if (!/^[0-9]+$/.test(raw)) throw new UsageError(`--${name} must be a whole number, got ${JSON.stringify(raw)}`);
    const n = Number(raw);
    if (!Number.isSafeInteger(n)) throw new UsageError(`--${name} is too large`);
    if (spec.min !== undefined && n < spec.min) throw new UsageError(`--${name} must be at least ${spec.min}, got ${n}`);
    if (spec.max !== undefined && n > spec.max) throw new UsageError(`--${name} must be at most ${spec.max}, got ${n}`);
    value = n;
  }
  if (spec.choices && !spec.choices.includes(value)) {
    throw new UsageError(`--${name} must be one of ${spec.choices.join(', ')}, got ${raw}`);
  }
  return value;
}

/** "  --name VALUE  description" lines for help texts. */
export function describeOptions(specs: OptionSpecs): string[] {
  const rows = Object.entries(specs).map(([name, s]) => [`${s.short !== undefined ? `-${s.short}, ` : ''}--${name}${s.type === 'boolean' ? '' : ` ${s.value ?? 'VALUE'}`}`, s.description] as const);
  const w = Math.max(0, ...rows.map(([l]) => l.length));
  return rows.map(([l, d]) => `  ${l.padEnd(w)}  ${d}`);
}
