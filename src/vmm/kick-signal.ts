// Kicking a vCPU out of KVM_RUN, the way QEMU does it: the kick signal stays blocked
// in the vCPU thread except while KVM_RUN runs (KVM_SET_SIGNAL_MASK). A kick sent
// while the thread is outside KVM_RUN stays pending and makes the next KVM_RUN
// return EINTR at once, so no kick is ever lost and no signal handler is needed.
import { sys, errno, syscallError, EAGAIN } from '../sys/libc.js';

const SIGSET_BYTES = 128; // glibc sigset_t
const SIG_BLOCK = 0;

/** SIGRTMIN+6: unused by Node and libuv. */
export function kickSignal(): number {
  return (sys.libcSigrtmin() as number) + 6;
}

function sigset(signo: number): Buffer {
  const b = Buffer.alloc(SIGSET_BYTES);
  const bit = signo - 1;
  b[bit >> 3] = 1 << (bit & 7);
  return b;
}

/**
 * Blocks `signo` in the calling thread and returns the 8-byte kernel sigset to hand
 * to KVM_SET_SIGNAL_MASK (the thread's old mask, which does not block `signo`).
 */
export function blockKickInThisThread(signo: number): Buffer {
  const old = Buffer.alloc(SIGSET_BYTES);
  if ((sys.pthreadSigmask(SIG_BLOCK, sigset(signo), old) as number) !== 0) throw syscallError('pthread_sigmask');
  const runMask = Buffer.from(old.subarray(0, 8));
  const bit = signo - 1;
  runMask[bit >> 3]! &= ~(1 << (bit & 7));
  return runMask;
}

export class KickConsumer {
  readonly #set: Buffer;
  readonly #zero = Buffer.alloc(16); // struct timespec {0, 0}
  readonly #info = Buffer.alloc(128);

  constructor(signo: number) {
    this.#set = sigset(signo);
  }

  /** Takes a pending kick off the thread, if there is one. */
  consume(): void {
    for (let i = 0; i < 4; i++) {
      const r = sys.sigtimedwait(this.#set, this.#info, this.#zero) as number;
      if (r < 0 && errno() === EAGAIN) return;
    }
  }
}

export function kickThread(tid: number, signo: number): void {
  sys.tgkill(sys.getpid() as number, tid, signo);
}
