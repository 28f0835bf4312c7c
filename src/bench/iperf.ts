// bench iperf: real iperf3 in a real guest (the Debian test root, read-only, over
// virtio-fs) against `iperf3 -s` on host loopback, both directions (`-c` and `-R`),
// through TSI and through virtio-net + passt (or gvproxy with --net). The baseline is
// the host's own iperf3 client against the same server in the same run. Values are
// iperf3's own receiver-side goodput (`end.sum_received`); --iterations is the
// duration of each test in seconds (`-t`).
import { TsiboxError } from '../errors.js';
import { testRootPath } from '../guest/test-root.js';
import { Policy } from '../policy/index.js';
import { Sandbox, type SandboxOptions } from '../sandbox.js';
import { hostIperf3, receivedMbits, requireIperf3, startIperf3Server } from './iperf3-host.js';
import { machineInfo } from './machine.js';
import type { BenchDefinition, BenchOptions, BenchResult } from './registry.js';
import { median, round } from './stats.js';

type Mode = 'tsi' | 'passt' | 'gvproxy';
type Direction = 'guest-to-host' | 'host-to-guest';
const DIRECTIONS: readonly Direction[] = ['guest-to-host', 'host-to-guest'];
/** The host's 127.0.0.1 as the guest names it in each mode. */
const HOST_ALIAS: Record<Mode, string> = { tsi: '10.0.2.2', passt: '10.0.2.2', gvproxy: '192.168.127.254' };
const MARK = '@@tsibox-iperf-reverse@@';

function modes(o: BenchOptions): Mode[] {
  const n = o.net ?? 'passt';
  if (n !== 'passt' && n !== 'gvproxy') throw new TsiboxError('NOT_SUPPORTED', `bench iperf measures TSI and --net passt or gvproxy (got ${n})`);
  return ['tsi', n];
}

function debianRoot(): string {
  const root = testRootPath();
  if (root === undefined) {
    throw new TsiboxError('GUEST_IMAGE', 'bench iperf runs iperf3 in the Debian test root, which is not built: run `sudo bash scripts/build-test-root.sh` (about a minute; needs debootstrap and the Debian archive)');
  }
  return root;
}

/** One sandbox: `iperf3 -c` then `iperf3 -c -R`; Mbit/s received in each direction. */
async function guestIperf(mode: Mode, root: string, port: number, seconds: number, engine: string | undefined): Promise<Record<Direction, number>> {
  const host = HOST_ALIAS[mode];
  const client = `iperf3 -c ${host} -p ${port} -t ${seconds} -J`;
  const policy = new Policy({ default: 'deny', rules: [{ action: 'allow', protocol: 'tcp', cidr: '127.0.0.1', ports: port }] });
  const network: SandboxOptions['network'] = mode === 'tsi' ? { mode, policy, hostLoopbackAlias: host } : { mode, policy };
  const r = await Sandbox.run({
    argv: ['sh', '-c', `${client}; echo ${MARK}; ${client} -R`],
    root, rootReadOnly: true, network, timeoutMs: (2 * seconds + 120) * 1000,
    engine: engine === 'kvm' ? 'kvm' : 'qemu',
  });
  const out = r.stdout?.toString() ?? '';
  const at = out.indexOf(MARK);
  if (at < 0) throw new TsiboxError('VM_ERROR', `bench iperf (${mode}): the guest script failed (${r.exitCode}): ${r.stderr?.toString().slice(-500)}`);
  return {
    'guest-to-host': receivedMbits(out.slice(0, at), `guest iperf3 (${mode})`),
    'host-to-guest': receivedMbits(out.slice(at + MARK.length), `guest iperf3 -R (${mode})`),
  };
}

export const iperfBench: BenchDefinition = {
  name: 'iperf',
  summary: 'iperf3 in the Debian test root through TSI and passt/gvproxy (--net), both ways, Mbit/s, vs the host iperf3 client over loopback (--iterations = seconds)',
  defaultIterations: 10,
  defaultRuns: 3,
  async run(opts): Promise<BenchResult[]> {
    const ms = modes(opts);
    const root = debianRoot();
    requireIperf3();
    const seconds = opts.iterations;
    const ours = new Map<string, number[]>();
    const base: Record<Direction, number[]> = { 'guest-to-host': [], 'host-to-guest': [] };
    const server = await startIperf3Server();
    try {
      for (let i = 0; i < opts.runs; i++) {
        base['guest-to-host'].push(hostIperf3(server.port, seconds, false));
        base['host-to-guest'].push(hostIperf3(server.port, seconds, true));
        const notes = [`host ${round(base['guest-to-host'][i]!)} / ${round(base['host-to-guest'][i]!)}`];
        for (const m of ms) {
          const r = await guestIperf(m, root, server.port, seconds, opts.engine);
          for (const d of DIRECTIONS) ours.set(`${m} ${d}`, [...(ours.get(`${m} ${d}`) ?? []), r[d]]);
          notes.push(`${m} ${round(r['guest-to-host'])} / ${round(r['host-to-guest'])}`);
        }
        opts.progress?.(`iperf run ${i + 1}/${opts.runs} (Mbit/s guest→host / host→guest): ${notes.join(', ')}`);
      }
    } finally {
      await server.close();
    }
    return ms.flatMap((m) => DIRECTIONS.map((d): BenchResult => {
      const samples = ours.get(`${m} ${d}`)!;
      const v = median(samples);
      const b = median(base[d]);
      return {
        bench: `iperf-${m}-${d}`, value: round(v), unit: 'Mbit/s', baseline: round(b), ratio: round(v / b, 4),
        lowerIsBetter: false, iterations: seconds, runs: opts.runs,
        samples: samples.map((x) => round(x)), baselineSamples: base[d].map((x) => round(x)),
        baselineName: `the host's iperf3 client${d === 'host-to-guest' ? ' -R' : ''} against the same iperf3 -s over loopback`,
        method: `iperf3 ${d === 'host-to-guest' ? '-c HOST -R' : '-c HOST'} -t ${seconds} -J in the Debian test root (read-only virtio-fs root), one sandbox per mode and run doing both directions; receiver-side goodput (end.sum_received); median over runs`,
        machine: machineInfo(),
      };
    }));
  },
};
