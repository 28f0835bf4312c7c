// Where the package's own files are, whether running from dist/ or an installed copy.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TsiboxError } from './errors.js';

function findPackageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'native'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new TsiboxError('NOT_SUPPORTED', 'cannot find the package root (package.json beside native/) above this module');
    dir = up;
  }
}

export const PACKAGE_ROOT = findPackageRoot();
export const NATIVE_BUILD = join(PACKAGE_ROOT, 'native', 'build');

export function testGuestPath(name: string): string {
  return join(NATIVE_BUILD, 'testguest', `${name}.bin`);
}
