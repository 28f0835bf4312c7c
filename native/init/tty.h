/*
 * The workload's terminal (tty.c, docs/guest-init.md "A terminal for the workload"):
 * with tsibox.tty=COLSxROWS init gives the workload a pseudo-terminal and a relay
 * process joins its master to the stdin and stdout console ports.
 */
#ifndef TSIBOX_TTY_H
#define TSIBOX_TTY_H

#include <signal.h>
#include <sys/types.h>

/* Largest terminal dimension (struct winsize holds unsigned shorts). */
#define TTY_MAX_DIM 65535

/*
 * What init sends the relay when the workload ended: relay what the terminal still
 * holds, then exit. The relay acts on it only when it comes from init (PID 1).
 */
#define TTY_DRAIN_SIGNAL SIGUSR1

/*
 * How long the relay drains after TTY_DRAIN_SIGNAL: it exits once the terminal is
 * closed by every process (read gives EIO) and all of it was written, or once nothing
 * came for TTY_IDLE_MS (a background process still holds the terminal), and at the
 * latest after TTY_DRAIN_MS. init waits TTY_DRAIN_WAIT_MS for it, then goes on.
 */
#define TTY_IDLE_MS 250
#define TTY_DRAIN_MS 2000
#define TTY_DRAIN_WAIT_MS 3000

/*
 * Open a pseudo-terminal master (close-on-exec) whose terminal is @cols x @rows.
 * Returns the fd, or -1 with a message on log_fd.
 */
int tty_open_master(unsigned cols, unsigned rows);

/* Open the terminal (slave) of @master: O_RDWR | O_NOCTTY | O_CLOEXEC; -1 with a message. */
int tty_open_slave(int master);

/*
 * Fork the relay (`tsibox-tty`): bytes from @in (the stdin port) go to @master,
 * bytes from @master go to @out (the stdout port). The descriptors in @close_fds
 * (@nclose of them, -1 entries skipped) are closed in the relay. Returns its pid, or
 * -1 with a message.
 */
pid_t tty_relay_spawn(int master, int in, int out, const int *close_fds, int nclose);

#endif
