// Main-thread side of one vCPU: its worker, its control block, the bus round trips it
// asks for, and the kick that gets it out of KVM_RUN.
import { Worker } from 'node:worker_threads';
import { KVM_RUN_OFFSETS } from '../kvm/structs.js';
import type { KvmVcpuFd } from '../kvm/vcpu-fd.js';
import type { Bus } from './bus.js';
import { kickThread } from './kick-signal.js';
import {
  CTL, RPC_REQUEST, RPC_DONE, RPC_KIND_PIO, RPC_OK, RPC_UNHANDLED, RPC_FAILED,
  type VcpuMessage, type VcpuStats, type VcpuEndReason, type VcpuWorkerData,
} from './vcpu-channel.js';

export interface VcpuThreadHooks {
  pio: Bus;
  mmio: Bus;
  /** What to do with an access no device claims. */
  unhandledPio: 'error' | 'ignore';
  unhandledMmio: 'error' | 'ignore';
  onSerial(bytes: Uint8Array): void;
  onEnd(reason: VcpuEndReason, code: number | undefined, detail: string | undefined): void;
  onBusError(err: unknown, what: string): void;
}

export class VcpuThread {
  readonly vcpu: KvmVcpuFd;
  readonly #ctl: Int32Array;
  readonly #control: SharedArrayBuffer;
  readonly #hooks: VcpuThreadHooks;
  readonly #kickSignal: number;
  readonly #runBytes: Uint8Array;
  #worker: Worker | null = null;
  #tid = 0;
  #parked = false;
  #stats: VcpuStats | null = null;
  #ready: Promise<void> | null = null;
  #exited: Promise<void> | null = null;

  constructor(vcpu: KvmVcpuFd, kickSignal: number, hooks: VcpuThreadHooks) {
    this.vcpu = vcpu;
    this.#kickSignal = kickSignal;
    this.#hooks = hooks;
    this.#control = new SharedArrayBuffer(CTL.LENGTH * 4);
    this.#ctl = new Int32Array(this.#control);
    this.#runBytes = new Uint8Array(vcpu.runView());
  }

  get parked(): boolean {
    return this.#parked;
  }

  get stats(): VcpuStats | null {
    return this.#stats;
  }

  /** Starts the worker; resolves when it is ready to enter the guest. */
  spawn(vmFd: number, serialIrq: boolean): Promise<void> {
    const data: VcpuWorkerData = {
      vcpuId: this.vcpu.id,
      vcpuFd: this.vcpu.fd,
      vmFd,
      runAddress: this.vcpu.runAddress,
      runSize: this.vcpu.runSize,
      kickSignal: this.#kickSignal,
      control: this.#control,
      serialIrq,
    };
    const worker = new Worker(new URL('./vcpu-worker.js', import.meta.url), { workerData: data, stdout: false, stderr: false, execArgv: [] });
    this.#worker = worker;
    this.#ready = new Promise<void>((resolve, reject) => {
      worker.on('message', (msg: VcpuMessage) => {
        if (msg.type === 'ready') { this.#tid = msg.tid; resolve(); return; }
        this.#onMessage(msg);
      });
      worker.once('error', (err) => {
        reject(err);
        this.#hooks.onEnd('error', undefined, `vCPU ${this.vcpu.id} thread crashed: ${err.message}`);
      });
    });
    this.#exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    return this.#ready;
  }

  go(): void {
    Atomics.store(this.#ctl, CTL.GO, 1);
    Atomics.notify(this.#ctl, CTL.GO);
  }

  /** Asks the vCPU to leave its run loop and kicks it out of KVM_RUN. */
  requestStop(): void {
    Atomics.store(this.#ctl, CTL.STOP, 1);
    Atomics.notify(this.#ctl, CTL.GO);
    Atomics.notify(this.#ctl, CTL.RPC_STATE);
    this.#runBytes[KVM_RUN_OFFSETS.immediateExit] = 1;
    if (this.#tid !== 0 && this.#worker !== null) kickThread(this.#tid, this.#kickSignal);
  }

  /** Resolves once the worker thread is gone. */
  exited(): Promise<void> {
    return this.#exited ?? Promise.resolve();
  }

  #onMessage(msg: VcpuMessage): void {
    switch (msg.type) {
      case 'serial': this.#hooks.onSerial(msg.bytes); return;
      case 'bus': this.#serveBus(); return;
      case 'end': this.#hooks.onEnd(msg.reason, msg.code, msg.detail); return;
      case 'parked': this.#parked = true; return;
      case 'done': this.#stats = msg.stats; return;
      case 'ready': return;
    }
  }

  #serveBus(): void {
    const ctl = this.#ctl;
    if (Atomics.load(ctl, CTL.RPC_STATE) !== RPC_REQUEST) return;
    const isPio = ctl[CTL.RPC_KIND] === RPC_KIND_PIO;
    const isWrite = ctl[CTL.RPC_IS_WRITE] !== 0;
    const size = ctl[CTL.RPC_SIZE]!;
    const addr = (ctl[CTL.RPC_ADDR_LO]! >>> 0) + ctl[CTL.RPC_ADDR_HI]! * 0x1_0000_0000;
    const bytes = new Uint8Array(this.#control, CTL.RPC_DATA * 4, 8).subarray(0, size);
    const bus = isPio ? this.#hooks.pio : this.#hooks.mmio;
    let result = RPC_OK;
    try {
      const handled = isWrite ? bus.write(addr, bytes) : bus.read(addr, bytes);
      if (!handled) {
        const policy = isPio ? this.#hooks.unhandledPio : this.#hooks.unhandledMmio;
        if (policy === 'error') result = RPC_UNHANDLED;
        else if (!isWrite) bytes.fill(0xff); // absent hardware reads as all ones
      }
    } catch (err) {
      result = RPC_FAILED;
      this.#hooks.onBusError(err, `${isPio ? 'port' : 'MMIO'} 0x${addr.toString(16)}`);
    }
    Atomics.store(ctl, CTL.RPC_RESULT, result);
    Atomics.store(ctl, CTL.RPC_STATE, RPC_DONE);
    Atomics.notify(ctl, CTL.RPC_STATE);
  }
}
