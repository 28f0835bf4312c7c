import t from 'tap';
import { benchVirtqueueSoftware } from '../support/bench/virtqueue.js';

t.test('software virtqueue bench reports a rate, a C baseline and the ratio', async (t) => {
  for (const device of ['null', 'rng'] as const) {
    const r = await benchVirtqueueSoftware({ device, durationMs: 100, batch: 4 });
    t.equal(r.unit, 'req/s');
    t.ok(r.value > 1000, `${device}: ${Math.round(r.value)} req/s`);
    t.ok(r.baseline > 1000, `${device}: baseline ${Math.round(r.baseline)} req/s`);
    t.ok(Math.abs(r.ratio - r.value / r.baseline) < 1e-9);
  }
});
