// runc-style command-line flags (urfave/cli, Go's flag package): `--name value`,
// `--name=value`, the same with one dash (`-root /x`), one-letter aliases (`-f`),
// booleans with an optional `=true|false`. Global flags stop at the first word that is
// not a flag (the subcommand); a subcommand's flags may come before or after its
// positionals, up to `--`. Mistakes throw OciUsageError.
import { TsiboxError } from '../errors.js';

/** A command-line mistake (INVALID_ARGUMENT), reported with the usage line. */
export class OciUsageError extends TsiboxError {
  constructor(message: string) {
    super('INVALID_ARGUMENT', message);
    this.name = 'OciUsageError';
  }
}

export interface FlagSpec {
  type: 'string' | 'boolean' | 'integer';
  short?: string;
}
export type FlagSpecs = Readonly<Record<string, FlagSpec>>;

export interface ParsedFlags {
  flags: Record<string, string | boolean | number>;
  positionals: string[];
}

/** Parses flags; with `stopAtPositional` the first positional and everything after it are left in `positionals` unparsed. */
export function parseFlags(argv: readonly string[], specs: FlagSpecs, stopAtPositional = false): ParsedFlags {
  const flags: ParsedFlags['flags'] = {};
  const positionals: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      if (stopAtPositional) {
        positionals.push(...argv.slice(i));
        break;
      }
      positionals.push(arg);
      continue;
    }
    const body = arg.replace(/^--?/, '');
    const eq = body.indexOf('=');
    const given = eq < 0 ? body : body.slice(0, eq);
    const name = Object.hasOwn(specs, given) ? given : Object.keys(specs).find((k) => specs[k]!.short === given);
    if (name === undefined) throw new OciUsageError(`unknown flag ${arg.slice(0, eq < 0 ? undefined : arg.indexOf('='))}`);
    const spec = specs[name]!;
    if (Object.hasOwn(flags, name)) throw new OciUsageError(`--${name} given twice`);
    if (spec.type === 'boolean') {
      if (eq < 0) flags[name] = true;
      else {
        const v = body.slice(eq + 1);
        if (v !== 'true' && v !== 'false') throw new OciUsageError(`--${name} takes true or false, got ${JSON.stringify(v)}`);
        flags[name] = v === 'true';
      }
      continue;
    }
    let raw: string;
    if (eq >= 0) raw = body.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined) throw new OciUsageError(`--${name} needs a value`);
      raw = next;
      i++;
    }
    if (spec.type === 'integer') {
      if (!/^[0-9]{1,9}$/.test(raw)) throw new OciUsageError(`--${name} must be a whole number, got ${JSON.stringify(raw)}`);
      flags[name] = Number(raw);
    } else flags[name] = raw;
  }
  return { flags, positionals };
}

/** Linux signal numbers by name (without SIG), for `kill`. */
const SIGNALS: Readonly<Record<string, number>> = {
  HUP: 1, INT: 2, QUIT: 3, ILL: 4, TRAP: 5, ABRT: 6, IOT: 6, BUS: 7, FPE: 8, KILL: 9, USR1: 10, SEGV: 11, USR2: 12,
  PIPE: 13, ALRM: 14, TERM: 15, STKFLT: 16, CHLD: 17, CONT: 18, STOP: 19, TSTP: 20, TTIN: 21, TTOU: 22, URG: 23,
  XCPU: 24, XFSZ: 25, VTALRM: 26, PROF: 27, WINCH: 28, IO: 29, POLL: 29, PWR: 30, SYS: 31,
};

/** `kill`'s signal: a number 1..64, or a name with or without SIG, any case (runc's rule). */
export function parseSignal(raw: string): number {
  if (/^[0-9]{1,2}$/.test(raw)) {
    const n = Number(raw);
    if (n >= 1 && n <= 64) return n;
  }
  const name = raw.toUpperCase().replace(/^SIG/, '');
  const n = Object.hasOwn(SIGNALS, name) ? SIGNALS[name] : undefined;
  if (n === undefined) throw new OciUsageError(`unknown signal ${JSON.stringify(raw)}`);
  return n;
}
