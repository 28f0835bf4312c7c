/*
 * The workload's terminal (docs/guest-init.md "A terminal for the workload").
 *
 * With tsibox.tty=COLSxROWS, init opens a pseudo-terminal, gives its terminal (the
 * slave) to the workload as stdin, stdout, stderr and controlling terminal, and forks
 * this relay (`tsibox-tty`), which joins the master to the console ports:
 *
 *   host stdin  -> tsibox.stdin port  -> relay -> master -> line discipline -> workload
 *   workload -> line discipline -> master -> relay -> tsibox.stdout port -> host stdout
 *
 * So the guest's own line discipline does what a terminal does: echo, line editing
 * (ICANON), Ctrl-C/Ctrl-Z/Ctrl-\ as signals to the foreground process group (ISIG),
 * CR/LF translation; the host only passes bytes (its terminal in raw mode). The
 * window size is set on the master (here at start, by the exec agent's WINSIZE later),
 * and the kernel sends SIGWINCH to the foreground process group.
 *
 * The relay is a child of init, not init itself: init stays in sigwaitinfo and
 * nothing the host sends reaches PID 1. Bounded by construction: it holds at most one
 * buffer of input (it reads the stdin port only when that buffer is empty, so a
 * program that does not read its terminal stops the host's stdin, not the relay's
 * memory) and one of output (written to the stdout port before the master is read
 * again). The master is non-blocking, so a full terminal input queue never keeps
 * output from flowing.
 *
 * End of the host's stdin reaches the workload as the terminal's end-of-file
 * character (VEOF, Ctrl-D), once, as script(1) does: a closed master would hang the
 * terminal up instead.
 *
 * When the workload ends, init sends TTY_DRAIN_SIGNAL and the relay writes out what
 * the terminal still holds: until the master reads EIO (no process has the terminal
 * open any more, and everything written to it was read), or nothing came for
 * TTY_IDLE_MS (a background process keeps it open), at most TTY_DRAIN_MS. init
 * waits for that before its finish() kills everything, so the last output is not lost.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <unistd.h>

#include "init.h"
#include "tty.h"

/* Host input held at once (read from the stdin port only when it is all written). */
#define IN_BUF 4096
/* One read of the master (n_tty hands out at most 4 KiB per read anyway). */
#define OUT_BUF 16384
/* With no process holding the terminal (EIO) before the drain: look again this much later. */
#define HUP_RETRY_MS 50

static void terr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void terr(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("error: ", fmt, ap);
	va_end(ap);
}

int tty_open_master(unsigned cols, unsigned rows)
{
	int m = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	/* /dev/ptmx (devtmpfs) uses the devpts mounted at /dev/pts; try that one directly too. */
	if (m < 0) m = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (m < 0) {
		terr("tsibox.tty: cannot open a pseudo-terminal (/dev/ptmx): %s", strerror(errno));
		return -1;
	}
	int unlock = 0;
	if (ioctl(m, TIOCSPTLCK, &unlock) < 0) {
		terr("tsibox.tty: unlocking the pseudo-terminal: %s", strerror(errno));
		close(m);
		return -1;
	}
	struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
	if (ioctl(m, TIOCSWINSZ, &ws) < 0) {
		terr("tsibox.tty: setting the window size: %s", strerror(errno));
		close(m);
		return -1;
	}
	return m;
}

int tty_open_slave(int master)
{
	/* TIOCGPTPEER opens the peer of this very master, whatever is mounted where. */
	int s = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (s >= 0) return s;
	char name[64];
	if (ptsname_r(master, name, sizeof name) != 0) {
		terr("tsibox.tty: ptsname: %s", strerror(errno));
		return -1;
	}
	s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (s < 0) terr("tsibox.tty: open %s: %s", name, strerror(errno));
	return s;
}

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void relay_main(int master, int in, int out) __attribute__((noreturn));

static void relay_main(int master, int in, int out)
{
	log_name = "tsibox-tty";
	prctl(PR_SET_NAME, "tsibox-tty", 0, 0, 0);
	/* Every signal stays blocked (as init left them): the drain request comes
	 * through a signalfd, and a blocked SIGPIPE turns into EPIPE. */
	sigset_t drain;
	sigemptyset(&drain);
	sigaddset(&drain, TTY_DRAIN_SIGNAL);
	int sfd = signalfd(-1, &drain, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0) {
		terr("signalfd: %s", strerror(errno));
		_exit(1);
	}
	set_nonblock(master);
	set_nonblock(in);
	/* `out` stays blocking: a written byte has reached the host's queue. */

	static char ib[IN_BUF], ob[OUT_BUF];
	size_t ioff = 0, ilen = 0;
	int in_open = 1, draining = 0;
	long hup_until = 0, idle_end = 0, drain_end = 0;
	for (;;) {
		long now = now_ms();
		if (draining && (now >= idle_end || now >= drain_end)) _exit(0);
		struct pollfd p[3];
		p[0] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		/* A master nobody holds the terminal of reports POLLHUP at once: leave it
		 * out of the poll for a moment instead of spinning. */
		int mfd = now < hup_until ? -1 : master;
		p[1] = (struct pollfd){ .fd = mfd, .events = (short)(POLLIN | (ilen ? POLLOUT : 0)) };
		p[2] = (struct pollfd){ .fd = in_open && !ilen && !draining ? in : -1, .events = POLLIN };
		long next = -1;
		if (draining) next = idle_end < drain_end ? idle_end : drain_end;
		if (mfd < 0 && (next < 0 || hup_until < next)) next = hup_until;
		int timeout = next < 0 ? -1 : next <= now ? 0 : (int)(next - now);
		if (poll(p, 3, timeout) < 0) {
			if (errno != EINTR) { terr("poll: %s", strerror(errno)); sleep_ms(100); }
			continue;
		}
		now = now_ms();
		if (p[0].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
				if (si.ssi_pid != 1 || draining) continue;  /* only init may end us */
				draining = 1;
				drain_end = now + TTY_DRAIN_MS;
				idle_end = now + TTY_IDLE_MS;
				ilen = ioff = 0;  /* nobody is left to read it */
			}
		}
		if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = read(master, ob, sizeof ob);
			if (r > 0) {
				/* A port the host has gone from fails; the bytes are dropped. */
				if (write_all(out, ob, (size_t)r) < 0) { /* dropped */ }
				if (draining) idle_end = now_ms() + TTY_IDLE_MS;
			} else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
				/* EIO: every process closed the terminal and all it wrote was read */
				if (draining) _exit(0);
				hup_until = now + HUP_RETRY_MS;
			}
		}
		if (ilen && mfd >= 0 && (p[1].revents & POLLOUT)) {
			ssize_t w = write(master, ib + ioff, ilen);
			if (w > 0) {
				ioff += (size_t)w;
				ilen -= (size_t)w;
			} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
				ilen = 0;  /* cannot happen with a master; do not spin */
			}
			if (!ilen) ioff = 0;
		}
		if (p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t r = read(in, ib, sizeof ib);
			if (r > 0) {
				ioff = 0;
				ilen = (size_t)r;
			} else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
				/* The host's stdin ended: the terminal's end-of-file character, once. */
				in_open = 0;
				struct termios tio;
				if (tcgetattr(master, &tio) == 0 && tio.c_cc[VEOF] != _POSIX_VDISABLE) {
					ib[0] = (char)tio.c_cc[VEOF];
					ioff = 0;
					ilen = 1;
				}
			}
		}
	}
}

pid_t tty_relay_spawn(int master, int in, int out, const int *close_fds, int nclose)
{
	pid_t pid = fork();
	if (pid < 0) {
		terr("tsibox.tty: fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		for (int i = 0; i < nclose; i++)
			if (close_fds[i] >= 0) close(close_fds[i]);
		relay_main(master, in, out);
	}
	return pid;
}
