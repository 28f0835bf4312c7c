// What both engines do the same way before and around a boot: the kernel command line
// with init's description (moved into an extra initramfs archive when it is too long
// for the command line), the initramfs with the extra archives appended, and feeding
// the workload's stdin. One copy, so the engines cannot drift.
import { readFileSync } from 'node:fs';
import type { Readable, Writable } from 'node:stream';
import type { Logger } from 'pino';
import { TsiboxError } from '../errors.js';
import { buildCmdline, cmdlineArchive, initTokens, padTo4, PRIVATE_CMDLINE_FILE, type InitConfig } from '../guest/cmdline.js';

/**
 * How long the host waits, after init reported the workload's exit status, for the VM
 * to end by itself (init needs at most about 7 s: 2 s for leftover processes to die,
 * 5 s for sync, then reboot). Past it the engine ends the VM and returns the status;
 * a guest whose power-off hangs cannot hold the caller (docs/guest-init.md).
 */
export const POWEROFF_GRACE_MS = 10_000;

/** What either engine takes to run one guest (runKvm, runQemu add their own). */
export interface GuestRunOptions {
  /** Paths of the guest kernel (bzImage) and initramfs. */
  kernel: string;
  initrd: string;
  init: InitConfig;
  cpus?: number;
  memoryMiB?: number;
  /** Archives appended to the initramfs (e.g. guest helper programs). */
  extraArchives?: Buffer[];
  /** Guest kernel parameters after the base command line (e.g. `tsi.unix_paths=...`). */
  kernelArgs?: readonly string[];
  stdin?: Readable | Buffer | string;
  stdout?: Writable;
  stderr?: Writable;
  /** ms; the run then fails with VM_TIMEOUT. */
  timeoutMs?: number;
  logger: Logger;
  /** Ends the VM when aborted; the run then throws the signal's reason (e.g. NETWORK_ERROR). */
  abort?: AbortSignal;
}

export interface BootArguments {
  cmdline: string;
  /** The whole initramfs when archives were appended; null: use the file as it is. */
  initrd: Buffer | null;
}

/**
 * The command line `base` + init's tokens, and the initramfs. The environment never goes
 * on the command line: the host's `ps` shows QEMU's `-append` to every user, and the
 * guest's /proc/cmdline to every guest user, while an environment holds secrets (runc
 * keeps it in /proc/PID/environ, readable by its owner only). It travels in an extra
 * newc archive (`/.tsibox/cmdline.private`, 0600, removed by init once read); all the
 * tokens go in `/.tsibox/cmdline` when they do not fit the kernel's command-line limit.
 */
export function bootArguments(base: string, init: InitConfig, initrdPath: string, extraArchives: readonly Buffer[] = []): BootArguments {
  const archives = [...extraArchives];
  const { env, ...visible } = init;
  const envTokens = env === undefined ? [] : initTokens({ env });
  let cmdline: string;
  try {
    cmdline = buildCmdline(base, visible);
    if (envTokens.length > 0) archives.push(cmdlineArchive(envTokens, PRIVATE_CMDLINE_FILE));
  } catch (err) {
    if (!(err instanceof TsiboxError && err.code === 'INVALID_ARGUMENT' && /command line is/.test(err.message))) throw err;
    cmdline = base;
    archives.push(cmdlineArchive([...initTokens(visible), ...envTokens]));
  }
  if (archives.length === 0) return { cmdline, initrd: null };
  // newc archives concatenate; each but the last is padded to 4 bytes.
  const parts: Uint8Array[] = [readFileSync(initrdPath), ...archives];
  return { cmdline, initrd: Buffer.concat(parts.map((p, i) => (i < parts.length - 1 ? new Uint8Array(padTo4(p)) : p))) };
}

/** Feeds the workload's stdin into `sink` (ended afterwards); returns what stops a piped stream. */
export function feedStdin(src: Readable | Buffer | string | undefined, sink: Writable): () => void {
  if (src === undefined) {
    sink.end();
    return () => {};
  }
  if (typeof src === 'string' || Buffer.isBuffer(src)) {
    sink.end(src);
    return () => {};
  }
  src.pipe(sink);
  return () => { src.unpipe(sink); };
}
