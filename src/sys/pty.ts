// Pseudo-terminals: opening a pair, raw mode, window size. Through koffi, with the
// struct layouts of x86-64 glibc.
import koffi from 'koffi';
import { TsiboxError } from '../errors.js';
import { closeFd, sys, syscallError, O_CLOEXEC, O_RDWR } from './libc.js';

const libc = koffi.load('libc.so.6');

const O_NOCTTY = 0o400;
const TCSANOW = 0;
const TIOCGWINSZ = 0x5413;
const TIOCSWINSZ = 0x5414;
const TIOCSCTTY = 0x540e;
/** sizeof(struct termios) in glibc x86-64: 4 tcflag_t, c_line, c_cc[32], padding, 2 speed_t. */
const TERMIOS_SIZE = 60;
/** struct winsize: ws_row, ws_col, ws_xpixel, ws_ypixel (unsigned short each). */
const WINSIZE_SIZE = 8;

const fn = {
  posixOpenpt: libc.func('int posix_openpt(int flags)'),
  grantpt: libc.func('int grantpt(int fd)'),
  unlockpt: libc.func('int unlockpt(int fd)'),
  ptsnameR: libc.func('int ptsname_r(int fd, void *buf, size_t buflen)'),
  tcgetattr: libc.func('int tcgetattr(int fd, void *termios)'),
  tcsetattr: libc.func('int tcsetattr(int fd, int action, const void *termios)'),
  cfmakeraw: libc.func('void cfmakeraw(void *termios)'),
  tcgetsid: libc.func('int tcgetsid(int fd)'),
  getsid: libc.func('int getsid(int pid)'),
};

/** A terminal size in character cells. */
export interface WindowSize {
  cols: number;
  rows: number;
}

export interface Pty {
  /** The controlling side (what a terminal emulator or conmon holds); close-on-exec. */
  master: number;
  /** The side a program uses as its terminal; close-on-exec. */
  slave: number;
  /** e.g. "/dev/pts/3". */
  slavePath: string;
}

export interface OpenPtyOptions {
  /** Initial window size, set before the slave is opened. */
  size?: WindowSize;
  /**
   * Open the slave without O_NOCTTY: a session leader that has no controlling terminal
   * then acquires this one (open(2) O_NOCTTY; credentials(7)), so the kernel sends
   * it SIGWINCH when the master's window size changes, and SIGHUP when the master is
   * closed. Harmless for any other process (nothing is acquired). Default false.
   */
  controlling?: boolean;
}

function checkSize(size: WindowSize): void {
  for (const [name, v] of [['cols', size.cols], ['rows', size.rows]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff) throw new TsiboxError('INVALID_ARGUMENT', `terminal ${name} must be an integer in 0..65535, got ${v}`);
  }
}

/**
 * Opens a pseudo-terminal pair (pty(7), posix_openpt(3), grantpt(3), unlockpt(3),
 * ptsname(3)): the master with O_RDWR|O_NOCTTY|O_CLOEXEC, the slave O_RDWR|O_CLOEXEC
 * and O_NOCTTY unless `controlling`. The caller owns both descriptors. Both are
 * blocking; hand the slave to `tty.ReadStream` (libuv reopens it non-blocking) rather
 * than reading it with fs.
 *
 * Errors: INVALID_ARGUMENT (a size outside 0..65535), SYSCALL (errno set; no descriptor
 * is left open).
 */
export function openPty(options: OpenPtyOptions = {}): Pty {
  if (options.size !== undefined) checkSize(options.size);
  const master = fn.posixOpenpt(O_RDWR | O_NOCTTY | O_CLOEXEC) as number;
  if (master < 0) throw syscallError('posix_openpt');
  try {
    if ((fn.grantpt(master) as number) !== 0) throw syscallError('grantpt');
    if ((fn.unlockpt(master) as number) !== 0) throw syscallError('unlockpt');
    const name = Buffer.alloc(128);
    const r = fn.ptsnameR(master, name, name.length) as number;
    // ptsname_r returns the error number (and sets errno too).
    if (r !== 0) throw syscallError('ptsname_r', r);
    const slavePath = name.subarray(0, name.indexOf(0)).toString('utf8');
    if (options.size !== undefined) setWindowSize(master, options.size.cols, options.size.rows);
    const slave = sys.open(slavePath, O_RDWR | O_CLOEXEC | (options.controlling === true ? 0 : O_NOCTTY)) as number;
    if (slave < 0) throw syscallError(`open(${slavePath})`);
    return { master, slave, slavePath };
  } catch (err) {
    closeFd(master);
    throw err;
  }
}

/**
 * Puts the terminal `fd` in raw mode (termios(3): tcgetattr, cfmakeraw, tcsetattr with
 * TCSANOW): no echo, no line editing, no signal characters, no CR/NL translation either
 * way, 8-bit bytes, read returns as soon as one byte is there. The mode belongs to the
 * terminal, not to the descriptor: every descriptor of it sees it.
 *
 * Errors: SYSCALL (ENOTTY when `fd` is not a terminal).
 */
export function setRaw(fd: number): void {
  const t = Buffer.alloc(TERMIOS_SIZE);
  if ((fn.tcgetattr(fd, t) as number) !== 0) throw syscallError('tcgetattr');
  fn.cfmakeraw(t);
  if ((fn.tcsetattr(fd, TCSANOW, t) as number) !== 0) throw syscallError('tcsetattr');
}

/**
 * The window size of the terminal `fd` in character cells (ioctl_tty(2), TIOCGWINSZ);
 * either side of a pty answers the same. Errors: SYSCALL (ENOTTY).
 */
export function getWindowSize(fd: number): WindowSize {
  const w = Buffer.alloc(WINSIZE_SIZE);
  if ((sys.ioctlBuf(fd, TIOCGWINSZ, w) as number) !== 0) throw syscallError('ioctl(TIOCGWINSZ)');
  return { rows: w.readUInt16LE(0), cols: w.readUInt16LE(2) };
}

/**
 * Sets the window size of the terminal `fd` in character cells (ioctl_tty(2),
 * TIOCSWINSZ; pixel sizes 0). When it changes, the kernel sends SIGWINCH to the
 * terminal's foreground process group. Errors: INVALID_ARGUMENT (outside 0..65535),
 * SYSCALL (ENOTTY).
 */
export function setWindowSize(fd: number, cols: number, rows: number): void {
  checkSize({ cols, rows });
  const w = Buffer.alloc(WINSIZE_SIZE);
  w.writeUInt16LE(rows, 0);
  w.writeUInt16LE(cols, 2);
  if ((sys.ioctlBuf(fd, TIOCSWINSZ, w) as number) !== 0) throw syscallError('ioctl(TIOCSWINSZ)');
}

/**
 * Makes the terminal `fd` this process's controlling terminal (ioctl_tty(2),
 * TIOCSCTTY with 0: never steals it from another session). Only a session leader that
 * has none can: then the kernel sends it SIGWINCH when the window size changes and
 * SIGHUP when the master is closed (whose default action ends the process). Returns
 * false where it cannot (EPERM: not a session leader, or it already has one); never
 * throws.
 */
export function takeControllingTerminal(fd: number): boolean {
  return (sys.ioctlInt(fd, TIOCSCTTY, 0) as number) === 0 && isControllingTerminal(fd);
}

/**
 * Whether the terminal `fd` is this process's controlling terminal and this process
 * leads its session (tcgetsid(3), getsid(2)): then it receives the terminal's SIGWINCH
 * (it is in the foreground process group it got when it acquired the terminal) and
 * SIGHUP. False on any error (e.g. ENOTTY: a terminal nobody controls).
 */
export function isControllingTerminal(fd: number): boolean {
  const sid = fn.tcgetsid(fd) as number;
  if (sid < 0) return false;
  return sid === process.pid && (fn.getsid(0) as number) === process.pid;
}
