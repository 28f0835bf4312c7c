// The body of a vCPU thread: KVM_RUN in a loop. Exits of the few devices that live
// here (UART, i8042, debug ports) are handled in place; every other port or MMIO
// access is a synchronous round trip to the main thread's buses.
import { parentPort, workerData } from 'node:worker_threads';
import { sys, errno, EINTR, EAGAIN } from '../sys/libc.js';
import { KvmVcpuFd } from '../kvm/vcpu-fd.js';
import { KvmVmFd } from '../kvm/vm-fd.js';
import { KVM, KVM_EXIT, KVM_EXIT_IO_OUT, exitReasonName } from '../kvm/ioctl-numbers.js';
import { KVM_RUN_OFFSETS as RUN } from '../kvm/structs.js';
import { blockKickInThisThread, KickConsumer } from './kick-signal.js';
import { Serial8250, COM1_PORT, COM1_IRQ } from './legacy/serial.js';
import { PORT } from './legacy/ports.js';
import {
  CTL, RPC_IDLE, RPC_REQUEST, RPC_KIND_PIO, RPC_KIND_MMIO, RPC_OK, RPC_UNHANDLED,
  type VcpuWorkerData, type VcpuMessage, type VcpuStats, type VcpuEndReason,
} from './vcpu-channel.js';

const data = workerData as VcpuWorkerData;
const port = parentPort!;
const ctl = new Int32Array(data.control);
const vcpu = new KvmVcpuFd(data.vcpuFd, data.vcpuId, data.runSize, data.runAddress);
const vm = new KvmVmFd(data.vmFd);
const runBuf = vcpu.runView();
const run = new DataView(runBuf);
const runBytes = new Uint8Array(runBuf);
const rpcBytes = new Uint8Array(data.control, CTL.RPC_DATA * 4, 8);
const stats: VcpuStats = { exits: 0, pioExits: 0, mmioExits: 0, busRoundTrips: 0, kicks: 0 };

function post(msg: VcpuMessage): void {
  port.postMessage(msg);
}

// Serial output is batched: flushed on newline, at 256 bytes, before any other kind
// of exit and when the loop ends.
let serialOut = new Uint8Array(256);
let serialLen = 0;
function flushSerial(): void {
  if (serialLen === 0) return;
  post({ type: 'serial', bytes: serialOut.slice(0, serialLen) });
  serialLen = 0;
}
const serial = new Serial8250({
  output(byte) {
    serialOut[serialLen++] = byte;
    if (byte === 0x0a || serialLen === serialOut.length) flushSerial();
  },
  interrupt: data.serialIrq ? () => { vm.irqLine(COM1_IRQ, true); vm.irqLine(COM1_IRQ, false); } : undefined,
});

interface EndState { reason: VcpuEndReason; code?: number; detail?: string }
let end: EndState | null = null as EndState | null;
let parked = false;

function finish(reason: VcpuEndReason, code?: number, detail?: string): void {
  if (end === null) end = { reason, ...(code === undefined ? {} : { code }), ...(detail === undefined ? {} : { detail }) };
}

/** Handles a port access locally; returns false when it belongs to the main thread. */
function localPio(p: number, isOut: boolean, bytes: Uint8Array, size: number): boolean {
  if (p >= COM1_PORT && p < COM1_PORT + 8) {
    if (isOut) serial.write(p - COM1_PORT, bytes[0]!);
    else { bytes.fill(0, 0, size); bytes[0] = serial.read(p - COM1_PORT); }
    return true;
  }
  switch (p) {
    case PORT.I8042_COMMAND:
      if (isOut) { if (bytes[0] === 0xfe) finish('reset'); }
      else bytes.fill(0, 0, size); // status: no data, input buffer empty
      return true;
    case PORT.I8042_DATA:
      if (!isOut) bytes.fill(0, 0, size);
      return true;
    case PORT.DEBUG_EXIT:
      if (isOut) finish('exit', readLe(bytes, size));
      else bytes.fill(0, 0, size);
      return true;
    case PORT.PARK:
      if (isOut) parked = true;
      else bytes.fill(0, 0, size);
      return true;
    case PORT.NULL:
      if (!isOut) bytes.fill(0, 0, size);
      return true;
    default:
      return false;
  }
}

function readLe(b: Uint8Array, size: number): number {
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + b[i]!;
  return v;
}

/** Synchronous bus access on the main thread. Returns false if the VM must end. */
function busAccess(kind: number, addr: number, isWrite: boolean, bytes: Uint8Array, size: number): boolean {
  flushSerial();
  stats.busRoundTrips++;
  ctl[CTL.RPC_KIND] = kind;
  ctl[CTL.RPC_IS_WRITE] = isWrite ? 1 : 0;
  ctl[CTL.RPC_SIZE] = size;
  ctl[CTL.RPC_ADDR_LO] = addr % 0x1_0000_0000 | 0;
  ctl[CTL.RPC_ADDR_HI] = Math.floor(addr / 0x1_0000_0000);
  rpcBytes.fill(0);
  if (isWrite) rpcBytes.set(bytes.subarray(0, size));
  Atomics.store(ctl, CTL.RPC_STATE, RPC_REQUEST);
  post({ type: 'bus' });
  while (Atomics.load(ctl, CTL.RPC_STATE) === RPC_REQUEST) {
    if (Atomics.load(ctl, CTL.STOP) !== 0) return false;
    Atomics.wait(ctl, CTL.RPC_STATE, RPC_REQUEST, 50);
  }
  const result = Atomics.load(ctl, CTL.RPC_RESULT);
  Atomics.store(ctl, CTL.RPC_STATE, RPC_IDLE);
  if (result !== RPC_OK) {
    const what = kind === RPC_KIND_PIO ? `port 0x${addr.toString(16)}` : `MMIO address 0x${addr.toString(16)}`;
    finish('error', undefined, result === RPC_UNHANDLED
      ? `guest ${isWrite ? 'wrote' : 'read'} ${size} byte(s) at ${what}, where no device is mapped`
      : `device at ${what} failed on a ${isWrite ? 'write' : 'read'}`);
    return false;
  }
  if (!isWrite) bytes.set(rpcBytes.subarray(0, size));
  return true;
}

function handleIo(): void {
  stats.pioExits++;
  const isOut = run.getUint8(RUN.io.direction) === KVM_EXIT_IO_OUT;
  const size = run.getUint8(RUN.io.size);
  const p = run.getUint16(RUN.io.port, true);
  const count = run.getUint32(RUN.io.count, true);
  const offset = run.getUint32(RUN.io.dataOffset, true);
  if (size === 0 || size > 4 || offset + count * size > runBytes.length) {
    finish('error', undefined, `malformed KVM_EXIT_IO (size ${size}, count ${count})`);
    return;
  }
  for (let i = 0; i < count && end === null; i++) {
    const bytes = runBytes.subarray(offset + i * size, offset + (i + 1) * size);
    if (!localPio(p, isOut, bytes, size)) {
      if (!isOut || !(p >= COM1_PORT && p < COM1_PORT + 8)) flushSerial();
      if (!busAccess(RPC_KIND_PIO, p, isOut, bytes, size)) return;
    }
  }
}

function handleMmio(): void {
  stats.mmioExits++;
  const addr = Number(run.getBigUint64(RUN.mmio.physAddr, true));
  const len = run.getUint32(RUN.mmio.len, true);
  const isWrite = run.getUint8(RUN.mmio.isWrite) !== 0;
  if (len === 0 || len > 8) {
    finish('error', undefined, `malformed KVM_EXIT_MMIO (len ${len})`);
    return;
  }
  busAccess(RPC_KIND_MMIO, addr, isWrite, runBytes.subarray(RUN.mmio.data, RUN.mmio.data + 8), len);
}

function describeInternalError(): string {
  const sub = run.getUint32(RUN.internal.suberror, true);
  const n = Math.min(run.getUint32(RUN.internal.ndata, true), 16);
  const words: string[] = [];
  for (let i = 0; i < n; i++) words.push('0x' + run.getBigUint64(RUN.internal.data + i * 8, true).toString(16));
  const kinds: Record<number, string> = { 1: 'emulation failure', 2: 'simultaneous exception', 3: 'delivery event', 4: 'unexpected exit reason' };
  return `KVM internal error: ${kinds[sub] ?? `suberror ${sub}`}${words.length ? ` [${words.join(' ')}]` : ''}`;
}

function runLoop(): void {
  const kick = new KickConsumer(data.kickSignal);
  const fd = vcpu.fd;
  const ioctl = sys.ioctlInt;
  const KVM_RUN_REQ = KVM.RUN;
  for (;;) {
    if (end !== null || parked || Atomics.load(ctl, CTL.STOP) !== 0) break;
    const r = ioctl(fd, KVM_RUN_REQ, 0) as number;
    if (r < 0) {
      const e = errno();
      if (e === EINTR || e === EAGAIN) {
        stats.kicks++;
        kick.consume();
        continue;
      }
      finish('error', undefined, `KVM_RUN failed: errno ${e} (${sys.strerror(e)})`);
      break;
    }
    stats.exits++;
    const reason = run.getUint32(RUN.exitReason, true);
    switch (reason) {
      case KVM_EXIT.IO: handleIo(); break;
      case KVM_EXIT.MMIO: handleMmio(); break;
      case KVM_EXIT.HLT: parked = true; break;
      case KVM_EXIT.INTR: stats.kicks++; break;
      case KVM_EXIT.SHUTDOWN: finish('shutdown', undefined, 'the guest triple-faulted (KVM_EXIT_SHUTDOWN)'); break;
      case KVM_EXIT.SYSTEM_EVENT: {
        const type = run.getUint32(RUN.systemEvent.type, true);
        // 1 = shutdown, 2 = reset, 3 = crash
        if (type === 2) finish('reset');
        else finish(type === 1 ? 'shutdown' : 'error', undefined, `KVM system event ${type}`);
        break;
      }
      case KVM_EXIT.INTERNAL_ERROR: finish('error', undefined, describeInternalError()); break;
      case KVM_EXIT.FAIL_ENTRY: {
        const hw = run.getBigUint64(RUN.failEntry.reason, true);
        finish('error', undefined, `KVM_EXIT_FAIL_ENTRY: hardware entry failure reason 0x${hw.toString(16)}`);
        break;
      }
      default: finish('error', undefined, `unexpected KVM exit ${exitReasonName(reason)}`);
    }
  }
}

const runMask = blockKickInThisThread(data.kickSignal);
vcpu.setSignalMask(runMask);
post({ type: 'ready', tid: sys.gettid() as number });
// Wait for the go (all vCPUs start together) or an early stop.
while (Atomics.load(ctl, CTL.GO) === 0 && Atomics.load(ctl, CTL.STOP) === 0) Atomics.wait(ctl, CTL.GO, 0, 100);
try {
  runLoop();
} catch (err) {
  finish('error', undefined, `vCPU ${data.vcpuId} thread failed: ${(err as Error).message}`);
}
flushSerial();
if (end !== null) post({ type: 'end', ...end });
else if (parked) post({ type: 'parked' });
post({ type: 'done', stats });
