// `tsibox bench boot`: the median wall time of a whole `/bin/true` sandbox (engine
// start, guest boot, init, workload, exit status back, teardown), alternating with its
// baseline in the same run:
//  --engine qemu: against plain QEMU booting the same kernel and initramfs with no
//    devices of ours (status read from the serial console);
//  --engine kvm: the in-process KVM engine against the QEMU engine (QEMU with -accel
//    kvm where ring 0 is native), same kernel, initramfs and devices: does our VMM add
//    cost? Only where KVM runs ring 0 natively (e.g. inside scripts/svm-host.sh).
import { pino } from 'pino';
import { TsiboxError } from '../errors.js';
import { runQemu } from '../engine/qemu.js';
import { qemuAccel } from '../engine/select.js';
import { ensureInitramfs, ensureKernel } from '../guest/index.js';
import { Sandbox } from '../sandbox.js';
import { machineInfo } from './machine.js';
import type { BenchDefinition } from './registry.js';
import { median, round } from './stats.js';

export const bootBench: BenchDefinition = {
  name: 'boot',
  summary: 'whole /bin/true sandbox: --engine qemu vs plain QEMU, or --engine kvm vs the QEMU engine (same kernel + initramfs)',
  defaultIterations: 1,
  defaultRuns: 7,
  async run(opts) {
    const engine = opts.engine ?? 'qemu';
    if (engine !== 'qemu' && engine !== 'kvm') throw new TsiboxError('NOT_SUPPORTED', `bench boot measures --engine qemu or kvm (got ${engine})`);
    const kernel = (await ensureKernel({ onProgress: (l) => opts.progress?.(l) })).bzImage;
    const initrd = await ensureInitramfs({ onProgress: (l) => opts.progress?.(l) });
    const accel = await qemuAccel();
    const logger = pino({ level: 'silent' });
    const ours: number[] = [];
    const plain: number[] = [];
    // One warm-up of each (page cache, probe), then alternate.
    for (let i = -1; i < opts.runs; i++) {
      let t0 = performance.now();
      const r = await Sandbox.run({ engine, argv: ['/bin/true'], kernel, initrd, logger });
      const a = performance.now() - t0;
      if (r.exitCode !== 0) throw new TsiboxError('VM_ERROR', `/bin/true in the sandbox exited ${r.exitCode}`);
      t0 = performance.now();
      const p = engine === 'kvm'
        ? await Sandbox.run({ engine: 'qemu', argv: ['/bin/true'], kernel, initrd, logger })
        : await runQemu({ plain: true, kernel, initrd, accel, init: { argv: ['/bin/true'] }, logger });
      const b = performance.now() - t0;
      if (p.exitCode !== 0) throw new TsiboxError('VM_ERROR', `/bin/true in the baseline exited ${p.exitCode}`);
      if (i >= 0) {
        ours.push(a);
        plain.push(b);
        opts.progress?.(`run ${i + 1}/${opts.runs}: ${engine} sandbox ${round(a)} ms, ${engine === 'kvm' ? 'QEMU-engine sandbox' : 'plain QEMU'} ${round(b)} ms`);
      }
    }
    const value = median(ours);
    const baseline = median(plain);
    return [{
      bench: 'boot', value: round(value), unit: 'ms', baseline: round(baseline), ratio: round(value / baseline, 3),
      lowerIsBetter: true, iterations: 1, runs: opts.runs, engine, accel,
      note: engine === 'kvm'
        ? 'sandbox = Sandbox.run /bin/true under the KVM engine (console, rng, vsock over virtio-mmio); baseline = the same under the QEMU engine (vhost-user), QEMU -accel ' + accel + '; times under a nested/TCG host say nothing about hardware'
        : 'sandbox = Sandbox.run /bin/true (stdio+status virtio-serial ports, vhost-user rng + vsock); baseline = QEMU microvm, same kernel/initramfs/accel, serial console only',
      machine: machineInfo(),
    }];
  },
};
