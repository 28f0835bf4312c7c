// Boots our kernel + initramfs on the KVM engine N times and prints median times:
// to the kernel's "Run /init" line and for a whole `/bin/true` run. Used by
// scripts/hw-kvm-check.sh on machines that may run guest ring 0 natively.
import { ensureKernel, ensureInitramfs, buildCmdline, parseStatusMarker } from '../src/guest/index.js';
import { runLinuxOnKvm, KVM_BASE_CMDLINE } from '../src/vmm/boot/run-linux.js';
import { probeRing0 } from '../src/engine/ring0-probe.js';

const args = process.argv.slice(2);
const boots = Number(args[args.indexOf('--boots') + 1] ?? 10) || 10;
const median = (xs: number[]): number => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)] ?? NaN; };

const ring0 = await probeRing0();
console.log(`ring0: ${ring0.native ? 'native' : 'emulated'} (ratio ${ring0.ratio.toFixed(1)})`);
if (!ring0.native) {
  console.log('linux-boot: skipped: guest ring 0 is emulated here, a boot cannot finish (docs/kvm-linux-boot.md)');
  process.exit(0);
}
const kernel = await ensureKernel();
const initrd = await ensureInitramfs();
const cmdline = buildCmdline(KVM_BASE_CMDLINE, { argv: ['/bin/true'] });
const toInit: number[] = [];
const whole: number[] = [];
for (let i = 0; i < boots; i++) {
  const r = await runLinuxOnKvm({ kernel: kernel.vmlinux, initrd, cmdline, timeoutMs: 30_000, milestones: ['Run /init'] });
  const status = parseStatusMarker(r.output);
  if (r.exit.reason !== 'reset' || status !== 0) {
    console.log(`linux-boot: run ${i} ended with ${r.exit.reason} ${r.exit.detail ?? ''} status ${status}`);
    console.log(r.output.slice(-2000));
    process.exit(1);
  }
  if (r.milestones['Run /init'] !== undefined) toInit.push(r.milestones['Run /init']);
  whole.push(r.ms);
}
console.log(`linux-boot-to-init-median-ms: ${median(toInit).toFixed(1)} (${toInit.length} boots)`);
console.log(`linux-true-run-median-ms: ${median(whole).toFixed(1)} (${whole.length} runs)`);
