// `tsibox run --root DIR [--root-read-only] [--mount HOST:GUEST[:ro]]...` → the
// Sandbox's root, rootReadOnly and mounts options (checked further by the sandbox).
import type { DirectoryMount } from '../engine/directory-share-options.js';
import { UsageError } from './args.js';

/** The flags' Sandbox options; UsageError for a malformed --mount or --root-read-only without --root. */
export function rootOptions(o: Record<string, unknown>): { root?: string; rootReadOnly?: boolean; mounts?: DirectoryMount[] } {
  const out: { root?: string; rootReadOnly?: boolean; mounts?: DirectoryMount[] } = {};
  if (typeof o['root'] === 'string') out.root = o['root'];
  if (o['root-read-only'] === true) {
    if (out.root === undefined) throw new UsageError('--root-read-only needs --root');
    out.rootReadOnly = true;
  }
  const specs = Array.isArray(o['mount']) ? o['mount'].map(String) : [];
  if (specs.length > 0) out.mounts = specs.map(parseMount);
  return out;
}

/** 'HOST:GUEST', 'HOST:GUEST:ro' or 'HOST:GUEST:rw' (paths without ':'). */
export function parseMount(spec: string): DirectoryMount {
  const parts = spec.split(':');
  const mode = parts.length === 3 ? parts[2] : parts.length === 2 ? 'rw' : undefined;
  const [hostPath, guestPath] = parts;
  if ((mode !== 'ro' && mode !== 'rw') || !hostPath || !guestPath) {
    throw new UsageError(`--mount wants HOST:GUEST[:ro] (absolute paths without ':'), got ${JSON.stringify(spec)}`);
  }
  return { hostPath, guestPath, ...(mode === 'ro' ? { readOnly: true } : {}) };
}
