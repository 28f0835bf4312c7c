// Benches whose guest is a simulator (the software virtio driver, GuestVsock, TsiGuest)
// keep their bodies in the test tree (test/support/bench/), which is not shipped. Their
// registrations stay here so `tsibox help` lists them; run() loads the body through a
// path computed at run time, so no shipped module imports test code.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { TsiboxError } from '../errors.js';

function bodyUrl(name: string, base: string | URL): URL {
  return new URL(`../../test/support/bench/${name}.js`, base);
}

/** Whether the test tree's bench body `name` is here (a build of a source checkout). */
export function hasTestTree(name: string, base: string | URL = import.meta.url): boolean {
  return existsSync(fileURLToPath(bodyUrl(name, base)));
}

/**
 * Loads test/support/bench/<name>.js next to this build (dist/src/bench/ →
 * dist/test/support/bench/). An installed package has no test tree: NOT_SUPPORTED.
 */
export async function loadTestTreeBench<T>(bench: string, name: string, base: string | URL = import.meta.url): Promise<T> {
  const url = bodyUrl(name, base);
  if (!hasTestTree(name, base)) {
    throw new TsiboxError('NOT_SUPPORTED',
      `bench ${bench} drives a simulated guest from the test tree (test/support/bench/${name}.ts) and runs from a source checkout (npm run build), not from an installed package`);
  }
  return await import(url.href) as T;
}
