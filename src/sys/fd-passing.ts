// Handing one file descriptor to another process over a unix socket it listens on, the
// way runc's `--console-socket` does (utils.SendFile): connect, one sendmsg carrying a
// name as data and the descriptor as SCM_RIGHTS, close.
import { TsiboxError } from '../errors.js';
import { closeFd } from './libc.js';
import { sendWithFds } from './socket.js';
import { connectUnix } from './unix-connect.js';

/**
 * Connects to the AF_UNIX stream socket listening at `socketPath` and sends `fd` there
 * (unix(7), SCM_RIGHTS; sendmsg(2)) in one message whose data is `name` (UTF-8, no
 * terminating NUL, as runc's utils.SendFile: the file's name, which conmon logs and
 * containerd ignores). The receiver gets
 * its own descriptor for the same open file; `fd` stays open here, the caller closes
 * it. The connection is closed before returning. Blocks while connecting (instant
 * when someone listens; until accept when their backlog is full).
 *
 * Errors: INVALID_ARGUMENT (`socketPath` longer than sun_path's 107 bytes, `name`
 * empty or 4096 bytes or more), SYSCALL with errno (ENOENT: no such socket,
 * ECONNREFUSED: nobody listens, EACCES, ENOTSOCK...).
 */
export function sendFd(socketPath: string, fd: number, name: string): void {
  const data = Buffer.from(name, 'utf8');
  // Receivers read the name into a fixed buffer (conmon's recvfd: 4096 bytes, runc
  // refuses names that long); on a stream socket SCM_RIGHTS needs at least one data byte.
  if (data.length === 0 || data.length >= 4096) throw new TsiboxError('INVALID_ARGUMENT', `the name sent with a descriptor must be 1..4095 bytes, got ${data.length}`);
  if (!Number.isInteger(fd) || fd < 0) throw new TsiboxError('INVALID_ARGUMENT', `not a file descriptor: ${fd}`);
  const sock = connectUnix(socketPath);
  try {
    sendWithFds(sock, data, [fd]);
  } finally {
    closeFd(sock);
  }
}
