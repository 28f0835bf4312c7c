// A listening AF_UNIX stream socket that hands out raw connected fds (Node's net.Server
// reads its connections itself, which would lose SCM_RIGHTS descriptors). Used where
// QEMU insists on a socket path: its `-netdev vhost-user` refuses `fd=` chardevs.
import koffi, { type node as koffiNode } from 'koffi';
import { TsiboxError } from '../errors.js';
import { closeFd, syscallError } from './libc.js';

const libc = koffi.load('libc.so.6');
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SUN_PATH_MAX = 108;

const fn = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  bind: libc.func('int bind(int fd, const void *addr, unsigned int len)'),
  listen: libc.func('int listen(int fd, int backlog)'),
  accept4: libc.func('int accept4(int fd, void *addr, void *len, int flags)'),
};

export class UnixListener {
  readonly path: string;
  #fd: number;
  #poll: koffiNode.PollHandle | null = null;

  private constructor(path: string, fd: number) {
    this.path = path;
    this.#fd = fd;
  }

  /** Binds and listens on `path` (which must not exist). */
  static listen(path: string): UnixListener {
    return new UnixListener(path, bindListen(path, SOCK_NONBLOCK));
  }

  /** The first connection's fd (blocking mode, close-on-exec); the caller owns it. */
  acceptOnce(): Promise<number> {
    return new Promise((resolve, reject) => {
      if (this.#fd < 0) {
        reject(new TsiboxError('INVALID_STATE', 'listener is closed'));
        return;
      }
      this.#poll = koffi.node.poll(this.#fd, { readable: true }, () => {
        const c = fn.accept4(this.#fd, null, null, SOCK_CLOEXEC) as number;
        if (c < 0) return; // spurious wake-up (EAGAIN): keep waiting
        this.#stopPoll();
        resolve(c);
      });
    });
  }

  #stopPoll(): void {
    if (this.#poll === null) return;
    this.#poll.stop();
    this.#poll.close();
    this.#poll = null;
  }

  /** Stops listening (idempotent). A pending acceptOnce() never settles. */
  close(): void {
    this.#stopPoll();
    closeFd(this.#fd);
    this.#fd = -1;
  }
}

/**
 * A blocking listening socket on `path` (which must not exist), for handing to another
 * process that accepts on it (virtiofsd --fd=N); the caller owns the fd. Blocking,
 * because a child's accept() on an O_NONBLOCK socket fails at once with EAGAIN.
 */
export function listeningSocketFd(path: string): number {
  return bindListen(path, 0);
}

function bindListen(path: string, extraFlags: number): number {
  const bytes = Buffer.from(path, 'utf8');
  if (bytes.length >= SUN_PATH_MAX) throw new TsiboxError('INVALID_ARGUMENT', `unix socket path is longer than ${SUN_PATH_MAX - 1} bytes: ${path}`);
  const fd = fn.socket(AF_UNIX, SOCK_STREAM | extraFlags | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw syscallError('socket(AF_UNIX)');
  const addr = Buffer.alloc(2 + SUN_PATH_MAX);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  if ((fn.bind(fd, addr, 2 + bytes.length + 1) as number) !== 0) {
    const err = syscallError(`bind(${path})`);
    closeFd(fd);
    throw err;
  }
  if ((fn.listen(fd, 4) as number) !== 0) {
    const err = syscallError('listen');
    closeFd(fd);
    throw err;
  }
  return fd;
}
