// Thin koffi bindings to the libc calls tsibox needs. One place, loaded once.
import koffi from 'koffi';
import { TsiboxError } from '../errors.js';

const libc = koffi.load('libc.so.6');

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
/** madvise(2) advice: drop private anonymous pages (they read back as zeros). */
export const MADV_DONTNEED = 4;
/** madvise(2) advice: punch a hole in a shared mapping's file (tmpfs/memfd), as fallocate(PUNCH_HOLE|KEEP_SIZE). */
export const MADV_REMOVE = 9;
export const EINVAL = 22;
export const EACCES = 13;
export const O_RDWR = 2;
export const O_CLOEXEC = 0o2000000;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EINTR = 4;
export const EAGAIN = 11;
export const EWOULDBLOCK = EAGAIN;
/** flock(2) operations. */
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const LOCK_UN = 8;

export const sys = {
  open: libc.func('int open(const char *path, int flags)'),
  close: libc.func('int close(int fd)'),
  read: libc.func('long read(int fd, void *buf, size_t len)'),
  write: libc.func('long write(int fd, const void *buf, size_t len)'),
  /** ioctl with an integer (or no) argument. */
  ioctlInt: libc.func('int ioctl(int fd, unsigned long request, unsigned long arg)'),
  /** ioctl with a pointer to a caller-owned buffer (read and written by the kernel). */
  ioctlBuf: libc.func('int ioctl(int fd, unsigned long request, void *arg)'),
  mmap: libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off)'),
  munmap: libc.func('int munmap(void *addr, size_t len)'),
  madvise: libc.func('int madvise(void *addr, size_t len, int advice)'),
  eventfd: libc.func('int eventfd(unsigned int initval, int flags)'),
  getpid: libc.func('int getpid()'),
  gettid: libc.func('int gettid()'),
  tgkill: libc.func('int tgkill(int tgid, int tid, int sig)'),
  pthreadSigmask: libc.func('int pthread_sigmask(int how, const void *set, void *old)'),
  sigtimedwait: libc.func('int sigtimedwait(const void *set, void *info, const void *timeout)'),
  strerror: libc.func('const char *strerror(int errnum)'),
  libcSigrtmin: libc.func('int __libc_current_sigrtmin()'),
  /** flock(2): an advisory lock on an open file, released by the kernel when the holder dies. */
  flock: libc.func('int flock(int fd, int operation)'),
};

export function errno(): number {
  return koffi.errno();
}

export function errnoName(e: number): string {
  const names = koffi.os.errno as Record<string, number>;
  for (const [name, value] of Object.entries(names)) if (value === e) return name;
  return `errno ${e}`;
}

/** Throws a SYSCALL TsiboxError naming the call and the current errno. */
export function syscallError(what: string, e: number = errno()): TsiboxError {
  return new TsiboxError('SYSCALL', `${what} failed: ${errnoName(e)} (${sys.strerror(e)})`, { errno: e });
}

export function closeFd(fd: number): void {
  if (fd >= 0) sys.close(fd);
}

export function view(address: bigint, length: number): ArrayBuffer {
  return koffi.view(address, length);
}

export function addressOf(value: unknown): bigint {
  return koffi.address(value);
}
