// Unix-socket calls Node does not offer: socketpair(2), and recvmsg(2)/sendmsg(2) with
// SCM_RIGHTS (file descriptors passed over the socket), plus memfd_create(2) and
// shared mmap for the vhost-user memory table. All through koffi.
import koffi from 'koffi';
import { TsiboxError } from '../errors.js';
import { sys, errno, syscallError, view, EAGAIN, EINTR, MAP_SHARED, PROT_READ, PROT_WRITE } from './libc.js';
import { addSeals, Seal } from './seals.js';

const libc = koffi.load('libc.so.6');

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CTRUNC = 0x8;
const MSG_CMSG_CLOEXEC = 0x40000000;
const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;

const fn = {
  socketpair: libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)'),
  recvmsg: libc.func('long recvmsg(int fd, void *msg, int flags)'),
  sendmsg: libc.func('long sendmsg(int fd, void *msg, int flags)'),
  malloc: libc.func('void *malloc(size_t size)'),
  free: libc.func('void free(void *ptr)'),
  memfdCreate: libc.func('int memfd_create(const char *name, unsigned int flags)'),
  ftruncate: libc.func('int ftruncate(int fd, long length)'),
};

/** Most file descriptors one message may carry (vhost-user sends at most 8 regions). */
export const MAX_FDS_PER_MESSAGE = 16;
const CMSG_HDR = 16; // cmsg_len (size_t), cmsg_level (int), cmsg_type (int)
const CONTROL_SIZE = CMSG_HDR + 4 * MAX_FDS_PER_MESSAGE;
const MSGHDR_SIZE = 56;
const IOVEC_SIZE = 16;

/** A connected pair of AF_UNIX stream sockets, both close-on-exec. */
export function socketPair(): [number, number] {
  const sv = [0, 0];
  if ((fn.socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) as number) !== 0) throw syscallError('socketpair');
  return [sv[0]!, sv[1]!];
}

export type RecvResult =
  | { kind: 'data'; bytes: Buffer; fds: number[] }
  | { kind: 'again' }
  | { kind: 'eof' };

/**
 * Reads from a stream socket without blocking, collecting SCM_RIGHTS descriptors
 * (received close-on-exec). One instance per socket; it owns a small native buffer.
 */
export class FdSocketReader {
  readonly fd: number;
  readonly #capacity: number;
  readonly #mem: bigint;
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  #closed = false;

  constructor(fd: number, capacity = 64 * 1024) {
    this.fd = fd;
    this.#capacity = capacity;
    const total = MSGHDR_SIZE + IOVEC_SIZE + CONTROL_SIZE + capacity;
    const p = fn.malloc(total) as bigint | null;
    if (p === null || p === 0n) throw new TsiboxError('SYSCALL', 'malloc for a socket buffer failed');
    this.#mem = p;
    this.#bytes = new Uint8Array(view(p, total));
    this.#view = new DataView(this.#bytes.buffer);
  }

  /** One recvmsg. Descriptors that arrived with a truncated control message are closed and reported as an error. */
  read(maxBytes = this.#capacity): RecvResult {
    if (this.#closed) throw new TsiboxError('INVALID_STATE', 'socket reader is closed');
    const v = this.#view;
    const base = this.#mem;
    const iovOff = MSGHDR_SIZE;
    const ctlOff = iovOff + IOVEC_SIZE;
    const dataOff = ctlOff + CONTROL_SIZE;
    this.#bytes.fill(0, 0, dataOff);
    // struct msghdr
    v.setBigUint64(16, base + BigInt(iovOff), true); // msg_iov
    v.setBigUint64(24, 1n, true); // msg_iovlen
    v.setBigUint64(32, base + BigInt(ctlOff), true); // msg_control
    v.setBigUint64(40, BigInt(CONTROL_SIZE), true); // msg_controllen
    // struct iovec
    v.setBigUint64(iovOff, base + BigInt(dataOff), true);
    v.setBigUint64(iovOff + 8, BigInt(Math.max(1, Math.min(maxBytes, this.#capacity))), true);
    let n: number;
    for (;;) {
      n = Number(fn.recvmsg(this.fd, base, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
      if (n >= 0 || errno() !== EINTR) break;
    }
    if (n < 0) {
      const e = errno();
      if (e === EAGAIN) return { kind: 'again' };
      throw syscallError('recvmsg', e);
    }
    const fds = this.#collectFds(ctlOff, Number(v.getBigUint64(40, true)));
    if ((v.getInt32(48, true) & MSG_CTRUNC) !== 0) {
      for (const fd of fds) sys.close(fd);
      throw new TsiboxError('DEVICE_ERROR', `more than ${MAX_FDS_PER_MESSAGE} file descriptors in one message`);
    }
    if (n === 0) {
      for (const fd of fds) sys.close(fd);
      return { kind: 'eof' };
    }
    return { kind: 'data', bytes: Buffer.from(this.#bytes.subarray(dataOff, dataOff + n)), fds };
  }

  #collectFds(off: number, len: number): number[] {
    const v = this.#view;
    const fds: number[] = [];
    let p = off;
    const end = off + Math.min(len, CONTROL_SIZE);
    while (p + CMSG_HDR <= end) {
      const cmsgLen = Number(v.getBigUint64(p, true));
      if (cmsgLen < CMSG_HDR || p + cmsgLen > end) break;
      if (v.getInt32(p + 8, true) === SOL_SOCKET && v.getInt32(p + 12, true) === SCM_RIGHTS) {
        for (let q = p + CMSG_HDR; q + 4 <= p + cmsgLen; q += 4) fds.push(v.getInt32(q, true));
      }
      p += (cmsgLen + 7) & ~7;
    }
    return fds;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    fn.free(this.#mem);
  }
}

/**
 * Sends all of `data` (blocking while the peer's buffer is full is not expected for
 * the small replies sent here; EAGAIN is an error), with `fds` as SCM_RIGHTS on the
 * first byte. Never raises SIGPIPE.
 */
export function sendWithFds(fd: number, data: Uint8Array, fds: readonly number[] = []): void {
  if (fds.length > MAX_FDS_PER_MESSAGE) throw new TsiboxError('INVALID_ARGUMENT', 'too many descriptors for one message');
  const ctlLen = fds.length === 0 ? 0 : CMSG_HDR + 4 * fds.length;
  const total = MSGHDR_SIZE + IOVEC_SIZE + CONTROL_SIZE + data.length;
  const p = fn.malloc(total) as bigint | null;
  if (p === null || p === 0n) throw new TsiboxError('SYSCALL', 'malloc for a socket message failed');
  try {
    const bytes = new Uint8Array(view(p, total));
    bytes.fill(0, 0, MSGHDR_SIZE + IOVEC_SIZE + CONTROL_SIZE);
    const v = new DataView(bytes.buffer);
    const iovOff = MSGHDR_SIZE;
    const ctlOff = iovOff + IOVEC_SIZE;
    const dataOff = ctlOff + CONTROL_SIZE;
    bytes.set(data, dataOff);
    let sent = 0;
    while (sent < data.length || (sent === 0 && data.length === 0)) {
      v.setBigUint64(16, p + BigInt(iovOff), true);
      v.setBigUint64(24, 1n, true);
      const withFds = sent === 0 && ctlLen > 0;
      v.setBigUint64(32, withFds ? p + BigInt(ctlOff) : 0n, true);
      v.setBigUint64(40, BigInt(withFds ? ctlLen : 0), true);
      if (withFds) {
        v.setBigUint64(ctlOff, BigInt(ctlLen), true);
        v.setInt32(ctlOff + 8, SOL_SOCKET, true);
        v.setInt32(ctlOff + 12, SCM_RIGHTS, true);
        fds.forEach((f, i) => v.setInt32(ctlOff + CMSG_HDR + 4 * i, f, true));
      }
      v.setBigUint64(iovOff, p + BigInt(dataOff + sent), true);
      v.setBigUint64(iovOff + 8, BigInt(data.length - sent), true);
      const n = Number(fn.sendmsg(fd, p, MSG_NOSIGNAL | MSG_DONTWAIT));
      if (n < 0) {
        const e = errno();
        if (e === EINTR) continue;
        throw syscallError('sendmsg', e);
      }
      sent += n;
      if (data.length === 0) break;
    }
  } finally {
    fn.free(p);
  }
}

/**
 * An anonymous shared-memory file (memfd), close-on-exec, of `size` bytes. `sealed`:
 * its size is then sealed (shrink, grow, and the seals themselves), as QEMU's
 * memory-backend-memfd does, and as a vhost-user back end requires of guest RAM.
 */
export function memfdCreate(name: string, size: number, opts: { sealed?: boolean } = {}): number {
  const sealed = opts.sealed === true;
  const fd = fn.memfdCreate(name, MFD_CLOEXEC | (sealed ? MFD_ALLOW_SEALING : 0)) as number;
  if (fd < 0) throw syscallError('memfd_create');
  try {
    if ((fn.ftruncate(fd, size) as number) !== 0) throw syscallError('ftruncate of a memfd');
    if (sealed) addSeals(fd, Seal.SHRINK | Seal.GROW | Seal.SEAL);
  } catch (err) {
    sys.close(fd);
    throw err;
  }
  return fd;
}

/** mmap(MAP_SHARED) of `length` bytes of `fd` from offset 0. Returns the address. */
export function mmapShared(fd: number, length: number): bigint {
  const p = sys.mmap(null, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) as bigint | null;
  if (p === null || p === BigInt(-1) || p === 0xffff_ffff_ffff_ffffn) throw syscallError(`mmap of ${length} shared bytes`);
  return p;
}

export function munmap(address: bigint, length: number): void {
  sys.munmap(address, length);
}
