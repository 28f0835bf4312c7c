// A KVM virtual machine: memory, in-kernel irqchip and PIT, vCPUs in worker threads,
// buses for the exits they cannot handle themselves, ioeventfds and irqfds, and a
// lifecycle that always ends (guest exit, error, timeout or stop) with every thread
// joined and every fd closed.
import type { Writable } from 'node:stream';
import type { Logger } from 'pino';
import { TsiboxError } from '../errors.js';
import { Kvm } from '../kvm/system.js';
import { KvmVmFd, type IoEventFdSpec } from '../kvm/vm-fd.js';
import { KvmVcpuFd } from '../kvm/vcpu-fd.js';
import { KVM_CAP, KVM_MP_STATE } from '../kvm/ioctl-numbers.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { Bus } from './bus.js';
import { EventFd, EventFdWatcher } from './eventfd.js';
import { VcpuThread } from './vcpu-thread.js';
import { kickSignal } from './kick-signal.js';
import { filterCpuid, type CpuidFeature } from './x86/cpuid.js';
import { bootMsrs, setBootFpu, setBootLapic } from './x86/cpu-state.js';
import { LAYOUT, MAX_VCPUS } from './x86/layout.js';
import { silentLogger } from '../log.js';
import type { VcpuEndReason, VcpuStats } from './vcpu-channel.js';

export interface VmOptions {
  /** Guest RAM in MiB (default 64). */
  memoryMiB?: number;
  /** vCPU count (default 1, at most 16). */
  vcpus?: number;
  /** Receives COM1 output. Default: discarded. */
  serial?: Writable;
  /** Raise IRQ 4 for UART transmit interrupts (Linux's 8250 driver wants them). */
  serialIrq?: boolean;
  /** CPUID features to hide from the guest. */
  cpuidHide?: readonly CpuidFeature[];
  /** An access to a port / MMIO address no device claims: end the VM ('error', default) or ignore it. */
  unhandledPio?: 'error' | 'ignore';
  unhandledMmio?: 'error' | 'ignore';
  /**
   * Guest RAM is GuestMemory.shared() (a sealed memfd another process can map: vhost-user
   * back ends) instead of anonymous(). Default false.
   */
  sharedMemory?: boolean;
  logger?: Logger;
}

export type VmExitReason = VcpuEndReason | 'halted' | 'stopped' | 'timeout';

export interface VmExit {
  reason: VmExitReason;
  /** The value written to the debug-exit port (reason 'exit'). */
  code?: number;
  detail?: string;
  /** Per-vCPU exit counters. */
  stats: VcpuStats[];
}

export interface RunOptions {
  /** Stop the VM with reason 'timeout' after this many milliseconds. */
  timeoutMs?: number;
}

type State = 'created' | 'running' | 'ended' | 'closed';

export class Vm {
  readonly memory: GuestMemory;
  readonly pio = new Bus('port I/O bus');
  readonly mmio = new Bus('MMIO bus');
  readonly vcpus: readonly KvmVcpuFd[];
  readonly log: Logger;
  readonly #kvm: Kvm;
  readonly #vmFd: KvmVmFd;
  readonly #opts: VmOptions;
  readonly #threads: VcpuThread[];
  readonly #eventFds: EventFd[] = [];
  readonly #watchers: EventFdWatcher[] = [];
  readonly #onClose: Array<() => void> = [];
  #state: State = 'created';
  #exit: Omit<VmExit, 'stats'> | null = null;
  #done: Promise<VmExit> | null = null;
  #started: { promise: Promise<void>; resolve: () => void } = deferred();

  private constructor(kvm: Kvm, vmFd: KvmVmFd, memory: GuestMemory, vcpus: KvmVcpuFd[], opts: VmOptions) {
    this.#kvm = kvm;
    this.#vmFd = vmFd;
    this.memory = memory;
    this.vcpus = vcpus;
    this.#opts = opts;
    this.log = opts.logger ?? silentLogger;
    const signo = kickSignal();
    this.#threads = vcpus.map((v) => new VcpuThread(v, signo, {
      pio: this.pio,
      mmio: this.mmio,
      unhandledPio: opts.unhandledPio ?? 'error',
      unhandledMmio: opts.unhandledMmio ?? 'error',
      onSerial: (bytes) => { opts.serial?.write(bytes); },
      onEnd: (reason, code, detail) => this.#end({ reason, ...(code === undefined ? {} : { code }), ...(detail === undefined ? {} : { detail }) }),
      onBusError: (err, what) => this.log.error({ err, what }, 'device failed'),
    }));
  }

  static create(opts: VmOptions = {}): Vm {
    const memoryMiB = opts.memoryMiB ?? 64;
    const vcpuCount = opts.vcpus ?? 1;
    if (!Number.isInteger(vcpuCount) || vcpuCount < 1 || vcpuCount > MAX_VCPUS) {
      throw new TsiboxError('INVALID_ARGUMENT', `vcpus must be 1..${MAX_VCPUS}, got ${vcpuCount}`);
    }
    if (!Number.isInteger(memoryMiB) || memoryMiB < 2 || memoryMiB > 64 * 1024) {
      throw new TsiboxError('INVALID_ARGUMENT', `memoryMiB must be 2..65536, got ${memoryMiB}`);
    }
    const kvm = Kvm.open();
    const cleanup: Array<() => void> = [() => kvm.close()];
    try {
      for (const [cap, name] of [[KVM_CAP.IRQCHIP, 'IRQCHIP'], [KVM_CAP.IOEVENTFD, 'IOEVENTFD'], [KVM_CAP.IRQFD, 'IRQFD'], [KVM_CAP.USER_MEMORY, 'USER_MEMORY']] as const) {
        if (kvm.checkExtension(cap) === 0) throw new TsiboxError('KVM_UNAVAILABLE', `KVM lacks KVM_CAP_${name}`);
      }
      const vmFd = new KvmVmFd(kvm.createVm());
      cleanup.push(() => vmFd.close());
      vmFd.setTssAddr(LAYOUT.KVM_TSS);
      vmFd.setIdentityMapAddr(LAYOUT.KVM_IDENTITY_MAP);
      vmFd.createIrqchip();
      vmFd.createPit2();
      const memory = opts.sharedMemory === true ? GuestMemory.shared(memoryMiB * 1024 * 1024) : GuestMemory.anonymous(memoryMiB * 1024 * 1024);
      cleanup.push(() => memory.close());
      memory.regions.forEach((r, slot) => vmFd.setUserMemoryRegion(slot, r.guestAddress, r.size, r.hostAddress));
      const runSize = kvm.vcpuMmapSize();
      const supported = kvm.supportedCpuid();
      const vcpus: KvmVcpuFd[] = [];
      for (let i = 0; i < vcpuCount; i++) {
        const vcpu = new KvmVcpuFd(vmFd.createVcpu(i), i, runSize);
        cleanup.push(() => vcpu.close());
        vcpu.setCpuid(filterCpuid(supported, { vcpu: i, vcpuCount, ...(opts.cpuidHide ? { hide: opts.cpuidHide } : {}) }));
        vcpu.setMsrs(bootMsrs());
        setBootFpu(vcpu);
        setBootLapic(vcpu);
        vcpus.push(vcpu);
      }
      return new Vm(kvm, vmFd, memory, vcpus, opts);
    } catch (err) {
      for (const f of cleanup.reverse()) f();
      throw err;
    }
  }

  get state(): State {
    return this.#state;
  }

  /** Makes every vCPU runnable at once (synthetic guests; Linux starts its APs itself). */
  makeAllVcpusRunnable(): void {
    for (const v of this.vcpus) v.setMpState(KVM_MP_STATE.RUNNABLE);
  }

  /** Creates an eventfd the guest signals by writing `spec`'s address; `onSignal` runs on the main loop. */
  addIoEventFd(spec: IoEventFdSpec, onSignal: (count: bigint) => void): EventFd {
    this.#assertOpen();
    const fd = new EventFd();
    this.#eventFds.push(fd);
    this.#vmFd.ioeventfd(fd.fd, spec);
    const watcher = new EventFdWatcher(fd, onSignal);
    this.#watchers.push(watcher);
    return fd;
  }

  /**
   * Like addIoEventFd, but nothing in this process reads the eventfd: another process
   * (a vhost-user back end, given `fd.fd` as its kick fd) does. A watcher here would
   * consume its kicks. The fd is closed by close().
   */
  addUnwatchedIoEventFd(spec: IoEventFdSpec): EventFd {
    this.#assertOpen();
    const fd = new EventFd();
    this.#eventFds.push(fd);
    this.#vmFd.ioeventfd(fd.fd, spec);
    return fd;
  }

  /** Creates an eventfd that raises GSI `gsi` in the guest each time it is signalled. */
  addIrqFd(gsi: number): EventFd {
    this.#assertOpen();
    const fd = new EventFd();
    this.#eventFds.push(fd);
    this.#vmFd.irqfd(fd.fd, gsi);
    return fd;
  }

  /** Sets an interrupt line of the in-kernel irqchip. */
  setIrqLine(irq: number, level: boolean): void {
    this.#assertOpen();
    this.#vmFd.irqLine(irq, level);
  }

  /** Starts the vCPUs; resolves with how the VM ended, once every vCPU thread is gone. */
  run(opts: RunOptions = {}): Promise<VmExit> {
    if (this.#state !== 'created') throw new TsiboxError('INVALID_STATE', `cannot run a VM that is ${this.#state}`);
    this.#state = 'running';
    this.#done = this.#runAll(opts);
    return this.#done;
  }

  async #runAll(opts: RunOptions): Promise<VmExit> {
    const timer = opts.timeoutMs === undefined ? null
      : setTimeout(() => this.#end({ reason: 'timeout', detail: `no exit within ${opts.timeoutMs} ms` }), opts.timeoutMs);
    try {
      const ready = this.#threads.map((t) => t.spawn(this.#vmFd.fd, this.#opts.serialIrq ?? false));
      await Promise.all(ready);
      for (const t of this.#threads) t.go();
      this.#started.resolve();
      await Promise.all(this.#threads.map((t) => t.exited()));
    } catch (err) {
      this.#end({ reason: 'error', detail: (err as Error).message });
      await Promise.all(this.#threads.map((t) => t.exited()));
    } finally {
      if (timer) clearTimeout(timer);
    }
    this.#state = 'ended';
    this.#started.resolve();
    for (const w of this.#watchers) w.stop();
    const allParked = this.#threads.every((t) => t.parked);
    const exit = this.#exit ?? (allParked ? { reason: 'halted' as const } : { reason: 'error' as const, detail: 'vCPU threads ended without a reason' });
    const stats = this.#threads.map((t) => t.stats ?? { exits: 0, pioExits: 0, mmioExits: 0, busRoundTrips: 0, kicks: 0 });
    this.log.debug({ exit, stats }, 'vm ended');
    return { ...exit, stats };
  }

  /** Resolves once every vCPU thread is up and has been let into the guest (or the VM ended first). */
  started(): Promise<void> {
    return this.#started.promise;
  }

  /** Stops a running VM (reason 'stopped'); resolves when every vCPU thread is gone. */
  async stop(): Promise<VmExit | null> {
    if (this.#done === null) return null;
    this.#end({ reason: 'stopped' });
    return this.#done;
  }

  #end(exit: Omit<VmExit, 'stats'>): void {
    if (this.#exit === null) this.#exit = exit;
    for (const t of this.#threads) t.requestStop();
  }

  /**
   * Runs `cb` when close() starts, after the vCPUs stopped and before any fd or the
   * guest memory is released (devices detach from guest memory here). Callbacks run
   * in registration order; one that throws is logged and the others still run.
   */
  onClose(cb: () => void): void {
    this.#assertOpen();
    this.#onClose.push(cb);
  }

  /** Releases every fd and the guest memory. Stops the VM first if it runs. */
  async close(): Promise<void> {
    if (this.#state === 'closed') return;
    if (this.#state === 'running') await this.stop();
    this.#state = 'closed';
    for (const cb of this.#onClose.splice(0)) {
      try {
        cb();
      } catch (err) {
        this.log.error({ err }, 'onClose callback threw');
      }
    }
    for (const w of this.#watchers) w.stop();
    for (const fd of this.#eventFds) fd.close();
    for (const v of this.vcpus) v.close();
    this.#vmFd.close();
    this.#kvm.close();
    this.memory.close();
  }

  #assertOpen(): void {
    if (this.#state === 'closed') throw new TsiboxError('INVALID_STATE', 'the VM is closed');
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => { resolve = r; });
  return { promise, resolve };
}
