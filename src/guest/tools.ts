// Guest tools: small static programs from native/guest-tools/ (built by `make -C
// native guest-tools`, gcc -static -Os) that a workload can use, handed to the guest
// as an extra initramfs archive (`Sandbox.run({ extraArchives: [await guestToolsArchive()] })`).
//
//   /usr/bin/tsibox-vsock   connect CID PORT | listen PORT: stdin/stdout over AF_VSOCK
//   /usr/bin/tsibox-tcp     [-v] ADDRESS PORT: stdin/stdout over one TCP connection; exit status = connect() errno
//   /usr/bin/tsibox-sockprobe  TARGET...: the differential socket-conformance probe (test/e2e/tsi-conformance.test.ts)
//   /usr/bin/tsibox-accept  [-n] [-s USEC] -c N PORT: accepts N host connections on a published port (test/e2e/tsi-fidelity.test.ts)
import { execFile } from 'node:child_process';
import { accessSync, existsSync, constants as fsConstants, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TsiboxError } from '../errors.js';
import { cacheRoot, packageRoot } from './build.js';
import { newcArchive } from './cmdline.js';

/** The tools, and where each lands in the guest. */
export const GUEST_TOOLS = {
  'tsibox-vsock': '/usr/bin/tsibox-vsock',
  'tsibox-tcp': '/usr/bin/tsibox-tcp',
  'tsibox-sockprobe': '/usr/bin/tsibox-sockprobe',
  'tsibox-accept': '/usr/bin/tsibox-accept',
} as const;
export type GuestToolName = keyof typeof GUEST_TOOLS;

/**
 * Where make puts native builds: the package's native/build, or the cache when that is
 * read-only and holds no build yet (a read-only checkout with prebuilt tools, like the
 * nested test host's, uses them: make finds nothing to do).
 */
function buildDir(): string {
  const native = join(packageRoot(), 'native');
  try {
    accessSync(native, fsConstants.W_OK);
    return 'build';
  } catch {
    return existsSync(join(native, 'build', 'guest-tools')) ? 'build' : join(cacheRoot(), 'native-build');
  }
}

/**
 * Builds the guest tools when missing or older than their sources (make decides; a
 * no-op call takes a few ms) and returns the path of each binary on the host.
 */
export async function ensureGuestTools(): Promise<Record<GuestToolName, string>> {
  const native = join(packageRoot(), 'native');
  const b = buildDir();
  await new Promise<void>((resolve, reject) => {
    execFile('make', ['-s', '-C', native, `B=${b}`, 'guest-tools'], { encoding: 'utf8' }, (err, _out, stderr) => {
      if (err === null) return resolve();
      const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'make is not installed (Debian: build-essential)' : stderr.trim() || err.message;
      reject(new TsiboxError('GUEST_BUILD', `cannot build the guest tools: ${why}`, { cause: err }));
    });
  });
  const dir = join(b.startsWith('/') ? b : join(native, b), 'guest-tools');
  const out = {} as Record<GuestToolName, string>;
  for (const name of Object.keys(GUEST_TOOLS) as GuestToolName[]) out[name] = join(dir, name);
  return out;
}

/** A gzip'd newc archive with every guest tool at its guest path (mode 0755), built first when needed. */
export async function guestToolsArchive(): Promise<Buffer> {
  const paths = await ensureGuestTools();
  const dirs = new Set<string>();
  const files: Array<{ name: string; mode: number; data: Uint8Array }> = [];
  for (const [name, guestPath] of Object.entries(GUEST_TOOLS) as Array<[GuestToolName, string]>) {
    const rel = guestPath.slice(1);
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
    files.push({ name: rel, mode: 0o100755, data: readFileSync(paths[name]) });
  }
  return newcArchive([...[...dirs].sort().map((name) => ({ name, mode: 0o040755 })), ...files]);
}
