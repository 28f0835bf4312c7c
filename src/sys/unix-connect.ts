// Connecting to a listening AF_UNIX stream socket and keeping the raw fd (Node's
// net.Socket reads its data itself, which would lose SCM_RIGHTS descriptors). Used by
// the vhost-user front end to reach external back ends (virtiofsd, qemu-storage-daemon).
import koffi from 'koffi';
import { TsiboxError } from '../errors.js';
import { closeFd, errno, syscallError } from './libc.js';

const libc = koffi.load('libc.so.6');
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SUN_PATH_MAX = 108;

const fn = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  connect: libc.func('int connect(int fd, const void *addr, unsigned int len)'),
};

/**
 * A connected, blocking, close-on-exec AF_UNIX stream socket to `path`; the caller
 * owns the fd. Throws SYSCALL with `errno` set (ENOENT: no socket yet, ECONNREFUSED:
 * nobody listens) so a caller can retry while a back end starts; INVALID_ARGUMENT
 * when the path does not fit sun_path (107 bytes).
 */
export function connectUnix(path: string): number {
  const bytes = Buffer.from(path, 'utf8');
  if (bytes.length >= SUN_PATH_MAX) throw new TsiboxError('INVALID_ARGUMENT', `unix socket path is longer than ${SUN_PATH_MAX - 1} bytes: ${path}`);
  const fd = fn.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw syscallError('socket(AF_UNIX)');
  const addr = Buffer.alloc(2 + SUN_PATH_MAX);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, 2);
  if ((fn.connect(fd, addr, 2 + bytes.length + 1) as number) === 0) return fd;
  const e = errno();
  closeFd(fd);
  throw syscallError(`connect(${path})`, e);
}
