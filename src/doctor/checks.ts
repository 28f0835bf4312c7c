// The host checks `tsibox doctor` runs. Each returns a CheckResult and never throws.
import { execFile } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Kvm, KVM_DEVICE } from '../kvm/system.js';
import { KVM_API_VERSION, KVM_CAP } from '../kvm/ioctl-numbers.js';
import { probeRing0, NATIVE_RATIO_LIMIT } from '../engine/ring0-probe.js';
import type { CheckResult } from './check.js';
import { kernelPaths, cacheRoot, packageRoot } from '../guest/index.js';
import { describeKind, kvmKind } from '../engine/select.js';

const execFileP = promisify(execFile);

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function checkKvmAccess(): CheckResult {
  try {
    closeSync(openSync(KVM_DEVICE, 'r+'));
    return { name: 'kvm-access', status: 'ok', detail: `${KVM_DEVICE} opens read-write` };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const hint = code === 'ENOENT' ? 'no KVM on this host (the QEMU engine still works)'
      : code === 'EACCES' || code === 'EPERM' ? 'add yourself to the kvm group, or run as root' : '';
    return { name: 'kvm-access', status: 'fail', detail: `cannot open ${KVM_DEVICE}: ${code ?? message(err)}${hint ? ` (${hint})` : ''}` };
  }
}

/** API version and capabilities. Fails as one row when /dev/kvm cannot be opened. */
export function checkKvmApi(): CheckResult[] {
  let kvm: Kvm;
  try {
    kvm = Kvm.open();
  } catch (err) {
    return [{ name: 'kvm-api', status: 'fail', detail: message(err) }];
  }
  try {
    const version = kvm.apiVersion();
    const rows: CheckResult[] = [{
      name: 'kvm-api', status: version === KVM_API_VERSION ? 'ok' : 'fail',
      detail: `API version ${version}${version === KVM_API_VERSION ? '' : ` (need ${KVM_API_VERSION})`}`, data: { version },
    }];
    const caps: Array<[string, number, boolean]> = [
      ['irqchip', KVM_CAP.IRQCHIP, true],
      ['user-memory', KVM_CAP.USER_MEMORY, true],
      ['ioeventfd', KVM_CAP.IOEVENTFD, true],
      ['irqfd', KVM_CAP.IRQFD, true],
      ['pit2', KVM_CAP.PIT2, true],
      ['set-tss-addr', KVM_CAP.SET_TSS_ADDR, true],
      ['mp-state', KVM_CAP.MP_STATE, false],
      ['immediate-exit', KVM_CAP.IMMEDIATE_EXIT, false],
    ];
    const have: Record<string, number> = {};
    for (const [name, cap] of caps) have[name] = kvm.checkExtension(cap);
    const missingRequired = caps.filter(([n, , req]) => req && have[n] === 0).map(([n]) => n);
    const missingOptional = caps.filter(([n, , req]) => !req && have[n] === 0).map(([n]) => n);
    const present = caps.filter(([n]) => have[n] !== 0).map(([n]) => n);
    rows.push({
      name: 'kvm-caps',
      status: missingRequired.length ? 'fail' : missingOptional.length ? 'warn' : 'ok',
      detail: [
        `has ${present.join(', ')}`,
        ...(missingRequired.length ? [`missing (required): ${missingRequired.join(', ')}`] : []),
        ...(missingOptional.length ? [`missing (optional): ${missingOptional.join(', ')}`] : []),
      ].join('\n'),
      data: have,
    });
    const recommended = kvm.checkExtension(KVM_CAP.NR_VCPUS);
    const max = kvm.checkExtension(KVM_CAP.MAX_VCPUS) || recommended;
    rows.push({
      name: 'kvm-vcpus', status: max >= 1 ? 'ok' : 'warn',
      detail: `max ${max} vCPUs per VM (recommended ${recommended || 'unknown'})`, data: { max, recommended },
    });
    return rows;
  } catch (err) {
    return [{ name: 'kvm-api', status: 'fail', detail: message(err) }];
  } finally {
    kvm.close();
  }
}

/** What backs /dev/kvm (the loaded module): this, not the timed probe, picks the engine. */
export function checkKvmModule(): CheckResult {
  const k = kvmKind();
  const status = k.kind === 'hardware' ? 'ok' : 'warn';
  const why = k.kind === 'hardware' ? 'Linux guests run under the KVM engine (engine auto picks it)'
    : k.kind === 'pvm' ? 'Linux guests cannot boot under this KVM; engine auto picks QEMU (scripts/svm-host.sh gives a KVM with native ring 0 for tests)'
      : k.kind === 'absent' ? 'no KVM: the QEMU engine runs guests under TCG'
        : 'unknown KVM module: engine auto asks the ring-0 probe';
  return { name: 'kvm-module', status, detail: `${describeKind(k)}; ${why}`, data: { ...k } };
}

/** Whether the nested SVM test host (scripts/svm-host.sh, a source checkout only) can run here. */
export async function checkSvmHost(): Promise<CheckResult | null> {
  const script = join(packageRoot(), 'scripts', 'svm-host.sh');
  if (!existsSync(script)) return null;
  try {
    const { stdout } = await execFileP('bash', [script, '--check'], { timeout: 10_000 });
    return { name: 'svm-test-host', status: 'ok', detail: `${stdout.trim().replace(/^ok: /, '')} (npm run test:kvm runs the e2e suite under the KVM engine there)` };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { name: 'svm-test-host', status: 'warn', detail: `${(e.stdout ?? '').trim() || (e.stderr ?? '').trim() || message(err)}` };
  }
}

export async function checkRing0(): Promise<CheckResult> {
  try {
    const p = await probeRing0();
    const fmt = (ns: number): string => (ns >= 1000 ? `${(ns / 1000).toFixed(2)} µs` : `${ns.toFixed(2)} ns`);
    const verdict = p.native ? 'native' : 'emulated';
    return {
      name: 'kvm-ring0',
      status: p.native ? 'ok' : 'warn',
      detail: `${verdict}: loop at CPL0 ${fmt(p.cpl0NsPerIter)}/iter, CPL3 ${fmt(p.cpl3NsPerIter)}/iter, ratio ${Math.round(p.ratio)} (native < ${NATIVE_RATIO_LIMIT})`
        + (p.native ? '' : '\na timing heuristic: the kvm-module row decides the engine'),
      data: { verdict, ...p },
    };
  } catch (err) {
    return { name: 'kvm-ring0', status: 'fail', detail: `probe failed: ${message(err)}` };
  }
}

/** Runs `cmd args` and returns the first non-empty output line, or null if it cannot run. */
async function firstLine(cmd: string, args: string[]): Promise<string | null> {
  try {
    const { stdout, stderr } = await execFileP(cmd, args, { timeout: 10_000 });
    return `${stdout}\n${stderr}`.split('\n').map((l) => l.trim()).find((l) => l.length > 0) ?? '';
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stdout?: string; stderr?: string };
    if (e.code === 'ENOENT') return null;
    // Some tools print their version and exit non-zero.
    return `${e.stdout ?? ''}\n${e.stderr ?? ''}`.split('\n').map((l) => l.trim()).find((l) => l.length > 0) ?? null;
  }
}

export async function checkTool(name: string, cmd: string, args: string[], why: string): Promise<CheckResult> {
  const line = await firstLine(cmd, args);
  if (line === null) return { name, status: 'warn', detail: `${cmd} not found (${why})` };
  return { name, status: 'ok', detail: line || `${cmd} present`, data: { version: line } };
}

export function kernelCacheDir(): string {
  return join(cacheRoot(), 'kernel');
}

/** The kernel for the current sources (src/guest), else whatever builds the cache holds. */
export function checkGuestKernel(): CheckResult {
  let current: ReturnType<typeof kernelPaths>;
  try {
    current = kernelPaths();
  } catch {
    current = undefined;
  }
  if (current !== undefined) {
    return { name: 'guest-kernel', status: 'ok', detail: `built for the current sources: ${current.dir}`, data: { ...current } };
  }
  const any = checkKernelCache();
  if (any.status !== 'ok') return any;
  return { ...any, status: 'warn', detail: `none for the current sources (tsibox kernel builds it); older builds in ${any.detail}` };
}

/** Looks for a built guest kernel: <cache>/tsibox/kernel/<build>/ holding bzImage or vmlinux. */
export function checkKernelCache(dir = kernelCacheDir()): CheckResult {
  const found: string[] = [];
  if (existsSync(dir)) {
    for (const entry of readdirSync(dir)) {
      const d = join(dir, entry);
      try {
        if (!statSync(d).isDirectory()) continue;
      } catch { continue; }
      const images = ['bzImage', 'vmlinux'].filter((f) => existsSync(join(d, f)));
      if (images.length) found.push(`${entry} (${images.join(', ')})`);
    }
  }
  if (found.length === 0) return { name: 'guest-kernel', status: 'warn', detail: `no kernel cached in ${dir} (tsibox kernel builds one)`, data: { dir, builds: [] } };
  return { name: 'guest-kernel', status: 'ok', detail: `${dir}: ${found.join('; ')}`, data: { dir, builds: found } };
}

export interface DoctorOptions {
  /** Skip the timed ring-0 probe. */
  skipProbe?: boolean;
}

export async function runDoctor(opts: DoctorOptions = {}): Promise<CheckResult[]> {
  const results: CheckResult[] = [checkKvmAccess()];
  const kvmOk = results[0]!.status === 'ok';
  results.push(checkKvmModule());
  if (kvmOk) {
    results.push(...checkKvmApi());
    if (!opts.skipProbe) results.push(await checkRing0());
  }
  const tools = await Promise.all([
    checkTool('qemu', 'qemu-system-x86_64', ['--version'], 'the QEMU engine needs it'),
    checkTool('passt', 'passt', ['--version'], 'virtio-net through passt needs it'),
    checkTool('gcc', 'gcc', ['--version'], 'building native/ needs it'),
  ]);
  results.push(...tools, checkGuestKernel());
  const svm = await checkSvmHost();
  if (svm !== null) results.push(svm);
  return results;
}
