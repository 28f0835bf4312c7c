// Where `tsibox oci` keeps its containers: one directory per id under the global --root
// (default /run/tsibox-oci), holding state.json, written atomically (a temporary file,
// fsync, rename) so that a reader sees the old state or the new one, never half of
// either. Commands on one id serialise on a lock (`<root>/<id>.lock`, flock); status
// changes go through status.ts's one transition table.
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { join, isAbsolute } from 'node:path';
import { randomBytes } from 'node:crypto';
import { TsiboxError } from '../errors.js';
import { lockPath, type FileLock, type LockOptions } from './lock.js';
import { ContainerStatus, isContainerStatus, transition } from './status.js';
import { integerField, isObject, optionalInteger, readJsonFile, stringField, stringMap } from './json-fields.js';

export const DEFAULT_STATE_ROOT = '/run/tsibox-oci';
/** The runtime-spec version our state JSON follows. */
export const STATE_OCI_VERSION = '1.0.2';
const STATE_FILE = 'state.json';
/** config.json is at most 4 MiB (MAX_CONFIG_BYTES), and the state holds its annotations. */
const MAX_STATE_BYTES = 5 * 1024 * 1024;
/**
 * runc's rule for ids: letters, digits and _ + - . ; not "." or "..". At most 250
 * characters: the id names a directory and `<id>.lock` (NAME_MAX 255).
 */
const ID = /^[A-Za-z0-9_+\-.]{1,250}$/;

/** What we keep about a container (a superset of the OCI state). */
export interface StoredState {
  id: string;
  status: ContainerStatus;
  /** The container process: the VMM process that waits for start, then runs the VM (set from created on). */
  pid?: number;
  /** Absolute bundle path. */
  bundle: string;
  /** The config's ociVersion. */
  configOciVersion: string;
  annotations: Record<string, string>;
  /** ISO time of create. */
  created: string;
}

/** The runtime-spec state (runtime.md "State"), as `state` prints it. */
export interface OciState {
  ociVersion: string;
  id: string;
  status: ContainerStatus;
  pid?: number;
  bundle: string;
  annotations?: Record<string, string>;
}

/** Throws INVALID_ARGUMENT unless `id` is a container id we accept (it names a directory). */
export function checkContainerId(id: string): string {
  if (!ID.test(id) || id === '.' || id === '..') throw new TsiboxError('INVALID_ARGUMENT', `invalid container id ${JSON.stringify(id.slice(0, 80))}: letters, digits and _ + - . only (1..250)`);
  return id;
}

export class StateStore {
  readonly root: string;
  readonly #lockOptions: LockOptions;

  constructor(root: string = DEFAULT_STATE_ROOT, lockOptions: LockOptions = {}) {
    if (!isAbsolute(root)) throw new TsiboxError('INVALID_ARGUMENT', `--root must be an absolute path, got ${JSON.stringify(root)}`);
    this.root = root;
    this.#lockOptions = lockOptions;
  }

  dir(id: string): string {
    return join(this.root, checkContainerId(id));
  }

  /** Runs `fn` holding the container's lock; the lock is released however fn ends. */
  async withLock<T>(id: string, fn: () => T | Promise<T>): Promise<T> {
    checkContainerId(id);
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
    const lock: FileLock = await lockPath(join(this.root, `${id}.lock`), this.#lockOptions);
    try {
      return await fn();
    } finally {
      lock.release();
    }
  }

  /** The stored state, or null when there is no such container. A corrupt file is INVALID_STATE. */
  read(id: string): StoredState | null {
    const path = join(this.dir(id), STATE_FILE);
    let json: unknown;
    try {
      json = readJsonFile(path, MAX_STATE_BYTES, `state of ${id}`);
    } catch (err) {
      if ((err as { cause?: NodeJS.ErrnoException }).cause?.code === 'ENOENT') return null;
      if (err instanceof TsiboxError) throw new TsiboxError('INVALID_STATE', `state of container ${id} is corrupt: ${err.message}`, { cause: err });
      throw err;
    }
    return parseStored(id, json);
  }

  /** Records a new container as `creating`. INVALID_STATE when the id exists. Call under withLock. */
  create(init: Omit<StoredState, 'status' | 'pid' | 'created'>): StoredState {
    const dir = this.dir(init.id);
    mkdirSync(this.root, { recursive: true, mode: 0o700 });
    try {
      mkdirSync(dir, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new TsiboxError('INVALID_STATE', `container ${init.id} already exists`);
      throw err;
    }
    const state: StoredState = { ...init, status: ContainerStatus.Creating, created: new Date().toISOString() };
    this.#write(state);
    return state;
  }

  /** Moves a container to `to` (status.ts decides whether it may), with a new pid if given. Call under withLock. */
  update(id: string, to: ContainerStatus, patch: { pid?: number } = {}): StoredState {
    const cur = this.read(id);
    if (cur === null) throw notFound(id);
    const next: StoredState = { ...cur, status: transition(id, cur.status, to), ...(patch.pid !== undefined ? { pid: patch.pid } : {}) };
    this.#write(next);
    return next;
  }

  /** Removes the container's directory (nothing when absent). Call under withLock. */
  remove(id: string): void {
    rmSync(this.dir(id), { recursive: true, force: true });
    try {
      unlinkSync(join(this.root, `${id}.lock`));
    } catch { /* absent already */ }
  }

  #write(state: StoredState): void {
    const dir = this.dir(state.id);
    const tmp = join(dir, `.${STATE_FILE}.${process.pid}.${randomBytes(4).toString('hex')}`);
    const fd = openSync(tmp, 'wx', 0o600);
    try {
      writeSync(fd, JSON.stringify(state) + '\n');
      fsyncSync(fd);
    } catch (err) {
      closeSync(fd);
      rmSync(tmp, { force: true });
      throw err;
    }
    closeSync(fd);
    renameSync(tmp, join(dir, STATE_FILE));
  }
}

export function notFound(id: string): TsiboxError {
  // containerd and podman match "does not exist" in a runtime's error to tell a missing container apart.
  return new TsiboxError('INVALID_STATE', `container ${id} does not exist`);
}

/**
 * Whether a process exists (signal 0; EPERM means it exists under another user) and has
 * not exited: a zombie its parent has not reaped yet (/proc/PID/stat state Z) is gone.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses; the state follows the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false; // gone between the two looks
  }
}

/**
 * The OCI state of a stored container. A created or running container whose process is
 * gone is reported stopped (it died without a command of ours seeing it).
 */
export function ociState(s: StoredState, alive: (pid: number) => boolean = processAlive): OciState {
  const gone = (s.status === 'created' || s.status === 'running') && (s.pid === undefined || !alive(s.pid));
  const status = gone ? ContainerStatus.Stopped : s.status;
  return {
    ociVersion: STATE_OCI_VERSION,
    id: s.id,
    status,
    // runc reports pid 0 once stopped; `creating` has no pid yet.
    ...(status === 'stopped' ? { pid: 0 } : s.pid !== undefined ? { pid: s.pid } : {}),
    bundle: s.bundle,
    ...(Object.keys(s.annotations).length > 0 ? { annotations: s.annotations } : {}),
  };
}

function parseStored(id: string, json: unknown): StoredState {
  const bad = (what: string): TsiboxError => new TsiboxError('INVALID_STATE', `state of container ${id} is corrupt: ${what}`);
  if (!isObject(json)) throw bad('not an object');
  try {
    const storedId = stringField(json['id'], 'id', 1024);
    if (storedId !== id) throw bad(`it names ${JSON.stringify(storedId)}`);
    const status = json['status'];
    if (!isContainerStatus(status)) throw bad(`status ${JSON.stringify(status)}`);
    const pid = optionalInteger(json['pid'], 'pid', 1, 2 ** 22);
    const bundle = stringField(json['bundle'], 'bundle', 4096);
    const annotations = json['annotations'] === undefined ? new Map<string, string>() : stringMap(json['annotations'], 'annotations', 1024, 1024, 64 * 1024);
    integerField(Date.parse(stringField(json['created'], 'created', 64)), 'created', 0, Number.MAX_SAFE_INTEGER);
    return {
      id,
      status,
      ...(pid !== undefined ? { pid } : {}),
      bundle,
      configOciVersion: stringField(json['configOciVersion'], 'configOciVersion', 64),
      annotations: Object.fromEntries(annotations),
      created: json['created'] as string,
    };
  } catch (err) {
    if (err instanceof TsiboxError && err.code === 'INVALID_ARGUMENT') throw bad(err.message.replace(/^config\.json: /, ''));
    throw err;
  }
}
