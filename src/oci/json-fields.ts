// Reading hostile JSON (a bundle's config.json, a state file someone edited): bounded
// size, every field's type checked, every failure a TsiboxError INVALID_ARGUMENT that
// names the field (`process.args[2]`, `mounts[4].source`).
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { TsiboxError } from '../errors.js';

/** Reads and parses a JSON file of at most `maxBytes`; `what` names it in errors. */
export function readJsonFile(path: string, maxBytes: number, what: string): unknown {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new TsiboxError('INVALID_ARGUMENT', `${what}: cannot open ${path}: ${(err as Error).message}`, { cause: err });
  }
  let text: string;
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new TsiboxError('INVALID_ARGUMENT', `${what}: ${path} is not a regular file`);
    if (st.size > maxBytes) throw new TsiboxError('INVALID_ARGUMENT', `${what}: ${path} is ${st.size} bytes, more than the ${maxBytes} allowed`);
    // Read one byte past the limit: a file that grew after fstat is refused too.
    const buf = Buffer.alloc(maxBytes + 1);
    let n = 0;
    for (;;) {
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
      if (n > maxBytes) throw new TsiboxError('INVALID_ARGUMENT', `${what}: ${path} is more than the ${maxBytes} bytes allowed`);
    }
    text = buf.subarray(0, n).toString('utf8');
  } finally {
    closeSync(fd);
  }
  return parseJsonText(text, what);
}

/** JSON.parse whose failures (syntax, nesting deep enough to exhaust the stack) are INVALID_ARGUMENT. */
export function parseJsonText(text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new TsiboxError('INVALID_ARGUMENT', `${what}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
}

export function invalid(field: string, message: string): TsiboxError {
  return new TsiboxError('INVALID_ARGUMENT', `config.json: ${field} ${message}`);
}

/** A JSON object (not an array, not null). */
export type JsonObject = Record<string, unknown>;

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function objectField(v: unknown, field: string): JsonObject {
  if (!isObject(v)) throw invalid(field, `must be an object, got ${typeName(v)}`);
  return v;
}

export function optionalObject(v: unknown, field: string): JsonObject | undefined {
  return v === undefined || v === null ? undefined : objectField(v, field);
}

/** A string of at most `max` UTF-16 units and without NUL (nothing we pass on may hold one). */
export function stringField(v: unknown, field: string, max: number): string {
  if (typeof v !== 'string') throw invalid(field, `must be a string, got ${typeName(v)}`);
  if (v.length > max) throw invalid(field, `is longer than ${max} characters`);
  if (v.includes('\0')) throw invalid(field, 'contains a NUL character');
  return v;
}

export function optionalString(v: unknown, field: string, max: number): string | undefined {
  return v === undefined || v === null ? undefined : stringField(v, field, max);
}

export function booleanField(v: unknown, field: string): boolean {
  if (typeof v !== 'boolean') throw invalid(field, `must be true or false, got ${typeName(v)}`);
  return v;
}

export function optionalBoolean(v: unknown, field: string): boolean | undefined {
  return v === undefined || v === null ? undefined : booleanField(v, field);
}

/** A whole number in [min, max] (both safe integers). */
export function integerField(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw invalid(field, `must be a whole number, got ${typeName(v)}`);
  if (v < min || v > max) throw invalid(field, `must be ${min}..${max}, got ${v}`);
  return v;
}

export function optionalInteger(v: unknown, field: string, min: number, max: number): number | undefined {
  return v === undefined || v === null ? undefined : integerField(v, field, min, max);
}

/** An array of at most `maxItems`, each checked by `item` (called with `field[i]`). */
export function arrayField<T>(v: unknown, field: string, maxItems: number, item: (x: unknown, f: string) => T): T[] {
  if (!Array.isArray(v)) throw invalid(field, `must be an array, got ${typeName(v)}`);
  if (v.length > maxItems) throw invalid(field, `has ${v.length} entries, more than the ${maxItems} allowed`);
  return v.map((x, i) => item(x, `${field}[${i}]`));
}

export function optionalArray<T>(v: unknown, field: string, maxItems: number, item: (x: unknown, f: string) => T): T[] | undefined {
  return v === undefined || v === null ? undefined : arrayField(v, field, maxItems, item);
}

/** A string → string map of at most `maxEntries` (annotations). Keys that are not own data are impossible: JSON.parse makes own properties. */
export function stringMap(v: unknown, field: string, maxEntries: number, maxKey: number, maxValue: number): Map<string, string> {
  const o = objectField(v, field);
  const keys = Object.keys(o);
  if (keys.length > maxEntries) throw invalid(field, `has ${keys.length} entries, more than the ${maxEntries} allowed`);
  const out = new Map<string, string>();
  for (const k of keys) {
    stringField(k, `${field} key ${JSON.stringify(k.slice(0, 40))}`, maxKey);
    out.set(k, stringField(o[k], `${field}[${JSON.stringify(k)}]`, maxValue));
  }
  return out;
}

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : typeof v;
}
