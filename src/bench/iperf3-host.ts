// The host side of `tsibox bench iperf`: an `iperf3 -s` on host loopback that the bench
// starts and kills by PID (and that dies with it: pdeathsig, exit hook), the host iperf3
// client that gives the baseline, and the reading of iperf3's JSON report.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { TsiboxError } from '../errors.js';
import { killOnExit, parentDeathWrapper } from '../sys/helper-programs.js';

export interface Iperf3Server {
  port: number;
  pid: number;
  close(): Promise<void>;
}

/** The iperf3 on PATH, or a NOT_SUPPORTED error saying how to install it. */
export function requireIperf3(): void {
  const r = spawnSync('iperf3', ['--version'], { encoding: 'utf8' });
  if (r.error !== undefined || r.status !== 0) {
    throw new TsiboxError('NOT_SUPPORTED', 'iperf3 is not installed on the host (Debian: iperf3; sudo bash scripts/install-guest-deps.sh installs it)');
  }
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve, reject) => { s.once('error', reject); s.listen(0, '127.0.0.1', resolve); });
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => { s.close(() => { r(); }); });
  return port;
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise<void>((resolve) => {
    child.once('close', () => { resolve(); });
    if (child.pid !== undefined) process.kill(child.pid, 'SIGKILL');
  });
}

/**
 * `iperf3 -s` on 127.0.0.1 and a free port. Resolves once it says it listens (the
 * port is picked free just before, so a lost race shows as iperf3 exiting). Its report
 * text is drained and dropped: the clients' JSON carries the numbers.
 */
export async function startIperf3Server(): Promise<Iperf3Server> {
  const port = await freePort();
  // --forceflush: the "Server listening" line must arrive through a pipe at once.
  const argv = [...(parentDeathWrapper() ?? []), 'iperf3', '-s', '-B', '127.0.0.1', '-p', String(port), '--forceflush'];
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  killOnExit(child);
  let said = '';
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => { reject(new TsiboxError('VM_ERROR', `iperf3 -s did not start listening in 10 s: ${said.slice(-300)}`)); }, 10_000);
      const onData = (d: string): void => {
        said += d;
        if (/Server listening on/.test(said)) { clearTimeout(timer); resolve(); }
      };
      child.stdout!.setEncoding('utf8').on('data', onData);
      child.stderr!.setEncoding('utf8').on('data', onData);
      child.once('error', (e) => { clearTimeout(timer); reject(e); });
      child.once('exit', (code) => { clearTimeout(timer); reject(new TsiboxError('VM_ERROR', `iperf3 -s exited (${code}) before listening: ${said.slice(-300)}`)); });
    });
  } catch (e) {
    await stop(child);
    throw e;
  }
  child.stdout!.removeAllListeners('data');
  child.stderr!.removeAllListeners('data');
  child.stdout!.resume();
  child.stderr!.resume();
  return { port, pid: child.pid!, close: () => stop(child) };
}

/**
 * Goodput in Mbit/s from one `iperf3 -c ... -J` report: what the receiving side got
 * (`end.sum_received`), so bytes still queued in socket buffers when the sender
 * stops do not count.
 */
export function receivedMbits(json: string, what: string): number {
  let report: unknown;
  try {
    report = JSON.parse(json);
  } catch {
    throw new TsiboxError('VM_ERROR', `${what}: iperf3 printed no JSON report: ${json.slice(0, 300)}`);
  }
  const r = report as { error?: string; end?: { sum_received?: { bits_per_second?: number } } };
  if (typeof r.error === 'string') throw new TsiboxError('VM_ERROR', `${what}: iperf3: ${r.error}`);
  const bps = r.end?.sum_received?.bits_per_second;
  if (typeof bps !== 'number') throw new TsiboxError('VM_ERROR', `${what}: the iperf3 report has no end.sum_received`);
  return bps / 1e6;
}

/** The baseline: the host's iperf3 client against the same server over loopback. */
export function hostIperf3(port: number, seconds: number, reverse: boolean): number {
  const args = ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-J', ...(reverse ? ['-R'] : [])];
  const r = spawnSync('iperf3', args, { encoding: 'utf8', timeout: (seconds + 30) * 1000 });
  if (r.error !== undefined) throw new TsiboxError('VM_ERROR', `host iperf3 client: ${r.error.message}`);
  return receivedMbits(r.stdout, `host iperf3 client${reverse ? ' -R' : ''}`);
}
