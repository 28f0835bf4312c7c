// The C baseline of the virtqueue benches: native/bench/ringwalk.c, a tight loop doing
// the same ring walk a device does, compiled on demand into the temp directory.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TsiboxError } from '../errors.js';

/** Runs the C baseline, compiling it into the temp directory first if needed. */
export function runRingwalk(seconds: number, batch: number, bytes: number, fillRandom: boolean): number {
  const bin = ringwalkBinary();
  const out = execFileSync(bin, [String(seconds), String(batch), String(bytes), fillRandom ? '1' : '0'], { encoding: 'utf8' });
  const rate = Number(out.trim());
  if (!Number.isFinite(rate) || rate <= 0) throw new TsiboxError('DEVICE_ERROR', `ringwalk printed ${JSON.stringify(out)}`);
  return rate;
}

function ringwalkBinary(): string {
  const source = fileURLToPath(new URL('../../../native/bench/ringwalk.c', import.meta.url));
  if (!existsSync(source)) throw new TsiboxError('NOT_SUPPORTED', `baseline source ${source} is missing`);
  // Keyed by the source's hash so an edited source is rebuilt.
  const tag = createHash('sha256').update(readFileSync(source)).digest('hex').slice(0, 12);
  const bin = join(tmpdir(), `tsibox-ringwalk-${tag}`);
  if (!existsSync(bin)) {
    try {
      execFileSync('gcc', ['-O2', '-o', bin, source], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (err) {
      throw new TsiboxError('NOT_SUPPORTED', 'cannot build the C baseline (is gcc installed?)', { cause: err });
    }
  }
  return bin;
}
