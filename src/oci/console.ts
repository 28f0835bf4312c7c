// The container's terminal (process.terminal: true): runc's `--console-socket`
// protocol (runc docs/terminals.md, runtime-spec config.md "terminal"). The runtime
// makes a pty, hands the master to the engine (conmon, containerd's shim) over the
// console socket, and the container's process uses the slave. Here that process is the
// monitor, which relays the slave to the guest's own terminal: the host slave is raw,
// the guest's line discipline does echo, line editing and Ctrl-C.
import tty from 'node:tty';
import { PassThrough, Writable, type Readable } from 'node:stream';
import { closeFd } from '../sys/libc.js';
import { sendFd } from '../sys/fd-passing.js';
import { getWindowSize, openPty, setRaw, takeControllingTerminal, type WindowSize } from '../sys/pty.js';

/** How often the window size is read when no SIGWINCH can come (ms). */
const RESIZE_POLL_MS = 250;
/** The name sent with the master, as runc (its os.File for the master is "/dev/ptmx"). */
const MASTER_NAME = '/dev/ptmx';

export interface ConsoleRelay {
  /** What the user types (read from the pty slave, byte for byte). Ends when the engine closes the master. */
  readonly input: Readable;
  /**
   * What the user sees (written to the pty slave, byte for byte: no LF → CR LF). Never
   * blocks the event loop; applies backpressure while the engine does not read. end()
   * leaves the terminal open (a terminal has no half-close); after the master is
   * closed, or after close(), writes are discarded without error.
   */
  readonly output: Writable;
  /**
   * How resizes are noticed: 'sigwinch' when the slave became this process's
   * controlling terminal (it leads a session that had none, e.g. spawned with
   * `detached: true`), else 'poll' (TIOCGWINSZ every 250 ms).
   */
  readonly resizeWatch: 'sigwinch' | 'poll';
  /**
   * Calls fn with the new size (character cells) whenever the engine resizes the
   * terminal. If it was resized between openConsole and this call, fn is called once
   * soon with the current size.
   */
  onResize(fn: (cols: number, rows: number) => void): void;
  /** Closes the slave side and stops watching for resizes; idempotent. Nothing of it then keeps the event loop alive. */
  close(): void;
}

/**
 * Creates the pty (window size `size`, character cells), hands the master to
 * `socketPath` (SCM_RIGHTS, runc's protocol; our copy of the master is closed), the
 * slave already in raw mode (cfmakeraw(3)), and relays the slave.
 *
 * Once the engine has the master, a session leader without a controlling terminal
 * takes the slave as its own (TIOCSCTTY): it then gets SIGWINCH on resizes (used
 * here), and SIGHUP when the engine closes the master, whose default action ends the
 * process: install a SIGHUP listener to outlive the engine. Any other process polls
 * the size instead (`resizeWatch`).
 *
 * Errors: INVALID_ARGUMENT (path longer than 107 bytes, size outside 0..65535),
 * SYSCALL with errno (ENOENT: no socket at the path, ECONNREFUSED: nobody listens; pty
 * calls). Nothing is left open, and no terminal taken, when it throws.
 */
export async function openConsole(socketPath: string, size: { cols: number; rows: number }): Promise<ConsoleRelay> {
  // O_NOCTTY: a controlling terminal is taken only once the engine has the master, so
  // that a failure here (our master closed: a hangup) does not SIGHUP a session leader.
  const pty = openPty({ size });
  try {
    // Raw before the engine has it: it never sees a cooked terminal (echo, CR/LF).
    setRaw(pty.slave);
    sendFd(socketPath, pty.master, MASTER_NAME);
  } catch (err) {
    closeFd(pty.slave);
    throw err;
  } finally {
    // The engine holds the master now; ours would keep the terminal from ever hanging up.
    closeFd(pty.master);
  }
  return new Relay(pty.slave, size, takeControllingTerminal(pty.slave));
}

class Relay implements ConsoleRelay {
  readonly input: PassThrough;
  readonly output: Writable;
  readonly resizeWatch: 'sigwinch' | 'poll';
  /** Our slave descriptor, kept for TIOCGWINSZ; libuv reads and writes its own reopened one. */
  readonly #fd: number;
  readonly #tty: tty.ReadStream;
  readonly #initial: WindowSize;
  #size: WindowSize;
  readonly #listeners: Array<(cols: number, rows: number) => void> = [];
  #timer: NodeJS.Timeout | null = null;
  readonly #onSigwinch = (): void => { this.#check(); };
  /** The terminal can no longer be written: the master was closed, or close() was called. */
  #gone = false;
  #closed = false;

  constructor(fd: number, size: WindowSize, controlling: boolean) {
    this.#fd = fd;
    this.#initial = { cols: size.cols, rows: size.rows };
    this.#size = this.#initial;
    // tty.ReadStream, not fs streams (they block a threadpool thread per read) and not
    // tty.WriteStream (it makes writes synchronous). libuv reopens the slave by name,
    // non-blocking; the stream is a Duplex, so it carries output too.
    this.#tty = new tty.ReadStream(fd);
    this.input = new PassThrough();
    this.#tty.on('error', () => { this.#hangup(); });
    this.#tty.on('end', () => { this.#hangup(); });
    this.#tty.pipe(this.input);
    const ttyStream = this.#tty;
    this.output = new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        if (this.#gone) return cb();
        // EIO/EPIPE once the master is gone: the user is gone too, drop the bytes.
        ttyStream.write(chunk, () => cb());
      },
      final: (cb) => cb(),
    });
    if (controlling) {
      this.resizeWatch = 'sigwinch';
      // Signal handles are unref'd by Node: this does not keep the process alive.
      process.on('SIGWINCH', this.#onSigwinch);
    } else {
      this.resizeWatch = 'poll';
      this.#timer = setInterval(() => { this.#check(); }, RESIZE_POLL_MS);
      this.#timer.unref();
    }
  }

  onResize(fn: (cols: number, rows: number) => void): void {
    this.#listeners.push(fn);
    const now = this.#size;
    if (now.cols !== this.#initial.cols || now.rows !== this.#initial.rows) {
      setImmediate(() => { if (!this.#closed) fn(now.cols, now.rows); });
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopWatching();
    this.#gone = true;
    this.#tty.unpipe(this.input);
    this.#tty.destroy();
    closeFd(this.#fd);
    if (!this.input.writableEnded) this.input.end();
  }

  #hangup(): void {
    this.#gone = true;
    this.#stopWatching();
    if (!this.input.writableEnded) this.input.end();
  }

  #stopWatching(): void {
    process.removeListener('SIGWINCH', this.#onSigwinch);
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  #check(): void {
    if (this.#closed) return;
    let now: WindowSize;
    try {
      now = getWindowSize(this.#fd);
    } catch {
      return;
    }
    if (now.cols === this.#size.cols && now.rows === this.#size.rows) return;
    this.#size = now;
    for (const fn of this.#listeners) fn(now.cols, now.rows);
  }
}
