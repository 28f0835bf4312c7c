import t from 'tap';
import { existsSync } from 'node:fs';
import { tsibox } from './helpers.js';

const hasKvm = existsSync('/dev/kvm');

for (const name of ['exits', 'ioeventfd']) {
  t.test(`tsibox bench ${name} prints one JSON line with every field`, { skip: hasKvm ? false : 'no /dev/kvm' }, async (t) => {
    // Enough iterations that the per-iteration signal stands above the noise of the
    // subtracted fixed cost (at 2000 a loaded machine gave a negative difference).
    const r = await tsibox(['bench', name, '--iterations', '20000', '--runs', '1', '--quiet']);
    t.equal(r.code, 0, r.stderr);
    t.equal(r.stderr, '', '--quiet keeps stderr empty');
    const lines = r.stdout.trim().split('\n');
    t.equal(lines.length, 1);
    const row = JSON.parse(lines[0]!) as Record<string, unknown>;
    t.equal(row.bench, name);
    t.equal(row.unit, name === 'exits' ? 'ns/exit' : 'ns/roundtrip');
    t.equal(row.lowerIsBetter, true);
    t.equal(row.iterations, 20000);
    t.equal(row.runs, 1);
    t.equal(row.cpl, 3);
    for (const k of ['value', 'baseline', 'ratio'] as const) {
      t.type(row[k], 'number', `${k} is a number`);
      t.ok((row[k] as number) > 0, `${k} > 0`);
    }
    t.ok(Math.abs((row.ratio as number) - (row.value as number) / (row.baseline as number)) < 0.01, 'ratio = value / baseline');
    t.match(row.machine, { cpus: Number, kernel: String, cpu: String });
  });
}
