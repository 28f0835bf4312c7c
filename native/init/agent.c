/*
 * tsibox guest exec agent (docs/exec-agent.md).
 *
 * A child of init that runs more processes in the guest for the host. The host
 * connects to guest vsock port AGENT_PORT, one stream connection per process, and
 * sends EXEC (argv, env, workdir, user), then STDIN data, STDIN_EOF and SIGNALs; the
 * agent answers STARTED (or START_FAILED), STDOUT/STDERR data, STDIN_ACKs and EXIT,
 * then closes. One single-threaded poll loop serves up to MAX_EXECS connections.
 * A connection whose first frame is SIGNAL or WINSIZE is about the main workload
 * instead: its signal (through init) or its terminal's window size; then it closes.
 *
 * Bounded by construction, whatever the host does:
 *  - host -> guest: every frame has a per-type size limit checked on its header;
 *    stdin is windowed (the host may have at most STDIN_WINDOW bytes not yet
 *    acknowledged), so the agent can always read its socket (a SIGNAL is never
 *    stuck behind stdin a child does not read) and holds at most one window per exec;
 *  - guest -> host: one frame at a time per exec; a child's stdout/stderr pipe is
 *    read only once the previous frame has left, and vsock's credit keeps the send
 *    side from filling beyond what the host consumed. A slow host stalls the child
 *    (a full pipe), never the agent's memory.
 * A malformed message closes its own connection and kills that process group; the
 * agent never exits because of a host, and init (PID 1) is a different process.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "agent.h"
#include "init.h"

/* ---------- wire format (docs/exec-agent.md §2) ---------- */

#define HDR 8                   /* 'E' 'X' version type len(u32 le) */
#define MAGIC0 'E'
#define MAGIC1 'X'
#define VERSION 1

enum {
	/* host -> guest */
	T_EXEC = 1, T_STDIN = 2, T_STDIN_EOF = 3, T_SIGNAL = 4, T_WINSIZE = 5,
	/* guest -> host */
	T_STARTED = 16, T_START_FAILED = 17, T_STDOUT = 18, T_STDERR = 19,
	T_STDIN_ACK = 20, T_EXIT = 21, T_ERROR = 22,
};

/* ERROR codes */
enum { E_BUSY = 1, E_BAD_MESSAGE = 2, E_TIMEOUT = 3, E_INTERNAL = 4 };

#define EXEC_FIXED 20                   /* flags uid gid argc envc */
#define EXEC_F_USER 1u
#define MAX_EXEC_PAYLOAD (256 * 1024)   /* argv + env + workdir of one EXEC */
#define MAX_DATA 65536                  /* STDIN / STDOUT / STDERR payload */
#define STDIN_WINDOW (128 * 1024)
#define MAX_ARGS 4096                   /* argc and envc, each */
#define MAX_TEXT 512                    /* message of START_FAILED / ERROR */
#define MAX_EXECS 64
/* WINSIZE: cols and rows, each 1..MAX_TTY_DIM (struct winsize holds unsigned shorts) */
#define MAX_TTY_DIM 65535
/* A connection that sends no EXEC within this long is closed (its slot is freed). */
#define EXEC_WAIT_MS 10000
/* After the process exited: how long the pipes may stay idle (a background
 * grandchild holding them) before EXIT goes out anyway. Counted only while the
 * agent could have read (nothing waiting to be sent). */
#define DRAIN_MS 1000
/* A last frame (EXIT, ERROR) the host does not take within this long is dropped with
 * its connection: a host that stopped reading cannot hold a slot for ever. */
#define CLOSE_WAIT_MS 10000
/* Bytes read from one connection per loop turn, so one busy host connection cannot
 * starve the others. */
#define READ_BUDGET (256 * 1024)
#define ACCEPT_BUDGET 16

static const struct agent_config *acfg;

/* ---------- messages (rate: host-triggered ones only in debug mode) ---------- */

static void aerr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void adbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void aerr(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vmsg("error: ", fmt, ap);
	va_end(ap);
}

static void adbg(const char *fmt, ...)
{
	if (!debug_on) return;
	va_list ap;
	va_start(ap, fmt);
	vmsg("", fmt, ap);
	va_end(ap);
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_header(uint8_t *p, int type, uint32_t len)
{
	p[0] = MAGIC0;
	p[1] = MAGIC1;
	p[2] = VERSION;
	p[3] = (uint8_t)type;
	put32(p + 4, len);
}

/* ---------- one connection = one exec ---------- */

struct exec {
	int sock;
	long since_ms;          /* accepted at: EXEC must come within EXEC_WAIT_MS */
	int have_exec;
	/* the frame being received */
	uint8_t hdr[HDR];
	size_t hdr_got;
	uint8_t *msg;
	uint32_t msg_len, msg_got;
	/* the process */
	pid_t pid;              /* 0: none (not started, or start failed before fork) */
	int reaped;
	int exit_status, exit_signal;
	int status_rd, in_wr, out_rd, err_rd;   /* -1 once closed */
	int result;             /* 0 unknown, 1 STARTED due, 2 START_FAILED due, 3 sent */
	struct exec_failure fail;
	int failed;
	/* stdin from the host: at most STDIN_WINDOW bytes */
	uint8_t *in;
	size_t in_off, in_len;
	int in_eof;             /* STDIN_EOF received */
	int in_closed;          /* the child's stdin is closed: STDIN is discarded (and acked) */
	uint32_t ack;           /* bytes written or discarded, not yet acknowledged */
	/* the frame being sent */
	uint8_t *out;           /* HDR + MAX_DATA */
	size_t out_len, out_off;
	int exit_sent;
	int closing;            /* close once `out` has left (after EXIT or ERROR) */
	long closing_since;
	int turn;               /* stdout or stderr first, alternately */
	long drain_deadline;    /* 0: not counting */
	int dead;               /* freed at the end of the loop turn */
};

static struct exec *execs[MAX_EXECS];
static size_t nexecs;

static void close_fd(int *fd)
{
	if (*fd >= 0) close(*fd);
	*fd = -1;
}

/* Kill the process group (the child leads it after setsid), or the child alone
 * when it has not got that far. */
static void kill_child(struct exec *x, int sig)
{
	if (x->pid <= 0 || x->reaped) return;
	if (kill(-x->pid, sig) < 0) kill(x->pid, sig);
}

static void stdin_discard(struct exec *x)
{
	x->ack += (uint32_t)x->in_len;
	x->in_len = 0;
	x->in_off = 0;
	x->in_closed = 1;
	close_fd(&x->in_wr);
}

/* The connection is over before EXIT went out: nobody can reach the process any
 * more, so it is killed (it would otherwise outlive its host). */
static void drop(struct exec *x, const char *why)
{
	adbg("exec %d: connection dropped: %s", (int)x->pid, why);
	kill_child(x, SIGKILL);
	x->dead = 1;
}

/* Queue ERROR (when nothing else is half sent), then close; the process is killed. */
static void fail_conn(struct exec *x, int code, const char *text)
{
	adbg("exec %d: %s", (int)x->pid, text);
	kill_child(x, SIGKILL);
	if (x->out_len || !x->out) {
		x->dead = 1;
		return;
	}
	size_t n = strnlen(text, MAX_TEXT);
	put_header(x->out, T_ERROR, (uint32_t)(4 + n));
	put32(x->out + HDR, (uint32_t)code);
	memcpy(x->out + HDR + 4, text, n);
	x->out_len = HDR + 4 + n;
	x->out_off = 0;
	x->closing = 1;
	x->closing_since = now_ms();
}

/* ---------- starting a process ---------- */

struct exec_req {
	int have_user;
	uid_t uid;
	gid_t gid;
	const char *workdir;    /* "" = the workload's */
	char **argv;
	char **envp;
	const char *path;       /* PATH from envp */
};

static void exec_child(const struct exec_req *r, int stw, int in, int out, int er)
{
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Its own session and group: SIGNAL reaches the whole tree, as a terminal would. */
	setsid();
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(er, 2) < 0)
		child_fail(stw, ST_SETUP, errno, "dup2 stdio");
	/* The originals are close-on-exec, like every other descriptor of the agent. */
	for (size_t i = 0; i < acfg->nrl; i++) {
		struct rlimit rl = { acfg->rl[i].cur, acfg->rl[i].max };
		if (setrlimit(acfg->rl[i].resource, &rl) < 0) child_fail(stw, ST_SETUP, errno, "setrlimit");
	}
	const char *wd = *r->workdir ? r->workdir : acfg->workdir;
	if (wd && *wd && mkdir_p(wd, 0755) < 0) child_fail(stw, ST_SETUP, errno, "create workdir");
	if (r->have_user) {
		if (setgroups(0, NULL) < 0) child_fail(stw, ST_SETUP, errno, "setgroups");
		if (setgid(r->gid) < 0) child_fail(stw, ST_SETUP, errno, "setgid");
		if (setuid(r->uid) < 0) child_fail(stw, ST_SETUP, errno, "setuid");
	}
	if (wd && *wd && chdir(wd) < 0) child_fail(stw, ST_SETUP, errno, "chdir workdir");
	exec_search(stw, r->argv[0], r->argv, r->envp, r->path);
}

/* A start that failed before there was a child: START_FAILED then EXIT, no process. */
static void start_failed_here(struct exec *x, int e, const char *what)
{
	x->fail = (struct exec_failure){ ST_SETUP, e, { 0 } };
	snprintf(x->fail.what, sizeof x->fail.what, "%s", what);
	x->failed = 1;
	x->result = 2;
	x->reaped = 1;
	x->exit_status = ST_SETUP;
	stdin_discard(x);
	close_fd(&x->out_rd);
	close_fd(&x->err_rd);
}

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void start(struct exec *x, struct exec_req *r)
{
	int st[2] = { -1, -1 }, in[2] = { -1, -1 }, out[2] = { -1, -1 }, er[2] = { -1, -1 };
	if (pipe2(st, O_CLOEXEC) < 0 || pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0
	    || pipe2(er, O_CLOEXEC) < 0) {
		int e = errno;
		int *all[] = { st, in, out, er };
		for (int i = 0; i < 4; i++) { close_fd(&all[i][0]); close_fd(&all[i][1]); }
		start_failed_here(x, e, "pipe");
		return;
	}
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		int *all[] = { st, in, out, er };
		for (int i = 0; i < 4; i++) { close_fd(&all[i][0]); close_fd(&all[i][1]); }
		start_failed_here(x, e, "fork");
		return;
	}
	if (pid == 0) {
		close(st[0]);
		close(in[1]);
		close(out[0]);
		close(er[0]);
		exec_child(r, st[1], in[0], out[1], er[1]);
	}
	close(st[1]);
	close(in[0]);
	close(out[1]);
	close(er[1]);
	/* Only the agent's ends are non-blocking; the child gets ordinary pipes. */
	set_nonblock(st[0]);
	set_nonblock(in[1]);
	set_nonblock(out[0]);
	set_nonblock(er[0]);
	x->pid = pid;
	x->status_rd = st[0];
	x->in_wr = in[1];
	x->out_rd = out[0];
	x->err_rd = er[0];
	adbg("exec %d: %s", (int)pid, r->argv[0]);
}

/* One string of the EXEC payload at *@off: NUL-terminated inside @len. */
static char *take_string(uint8_t *p, uint32_t len, uint32_t *off)
{
	if (*off >= len) return NULL;
	uint8_t *nul = memchr(p + *off, 0, len - *off);
	if (!nul) return NULL;
	char *s = (char *)p + *off;
	*off = (uint32_t)(nul - p) + 1;
	return s;
}

/* EXEC: flags uid gid argc envc, then workdir, argv[], env[] as NUL-terminated strings. */
static void on_exec(struct exec *x)
{
	uint8_t *p = x->msg;
	uint32_t len = x->msg_len;
	uint32_t flags = get32(p), argc = get32(p + 12), envc = get32(p + 16);
	if (flags & ~EXEC_F_USER) return fail_conn(x, E_BAD_MESSAGE, "EXEC: unknown flags");
	if (argc < 1 || argc > MAX_ARGS || envc > MAX_ARGS)
		return fail_conn(x, E_BAD_MESSAGE, "EXEC: argc must be 1..4096 and envc 0..4096");
	size_t base = 0;
	while (acfg->env && acfg->env[base]) base++;
	char **argv = calloc(argc + 1, sizeof *argv);
	char **envp = calloc(base + envc + 1, sizeof *envp);
	if (!argv || !envp) {
		free(argv);
		free(envp);
		return fail_conn(x, E_INTERNAL, "EXEC: out of memory");
	}
	struct exec_req r = { 0 };
	uint32_t off = EXEC_FIXED;
	const char *bad = NULL;
	r.workdir = take_string(p, len, &off);
	if (!r.workdir) bad = "EXEC: workdir is not a NUL-terminated string";
	for (uint32_t i = 0; !bad && i < argc; i++)
		if (!(argv[i] = take_string(p, len, &off))) bad = "EXEC: argv is cut short";
	/* The workload's environment, then the EXEC's entries replacing same-named ones. */
	size_t n = 0;
	for (; n < base; n++) envp[n] = acfg->env[n];
	for (uint32_t i = 0; !bad && i < envc; i++) {
		char *kv = take_string(p, len, &off);
		char *eq = kv ? strchr(kv, '=') : NULL;
		if (!kv) { bad = "EXEC: env is cut short"; break; }
		if (!eq || eq == kv) { bad = "EXEC: an env entry is not KEY=VALUE"; break; }
		size_t klen = (size_t)(eq - kv) + 1;
		size_t j = 0;
		while (j < n && strncmp(envp[j], kv, klen)) j++;
		envp[j] = kv;
		if (j == n) n++;
	}
	if (!bad && off != len) bad = "EXEC: bytes after the last string";
	if (bad) {
		free(argv);
		free(envp);
		return fail_conn(x, E_BAD_MESSAGE, bad);
	}
	for (size_t j = 0; j < n && !r.path; j++)
		if (!strncmp(envp[j], "PATH=", 5)) r.path = envp[j] + 5;
	r.argv = argv;
	r.envp = envp;
	r.have_user = (flags & EXEC_F_USER) != 0 || acfg->have_user;
	r.uid = (flags & EXEC_F_USER) ? (uid_t)get32(p + 4) : acfg->uid;
	r.gid = (flags & EXEC_F_USER) ? (gid_t)get32(p + 8) : acfg->gid;
	x->have_exec = 1;
	start(x, &r);
	free(argv);
	free(envp);
}

/* ---------- host -> guest ---------- */

static void stdin_write(struct exec *x)
{
	while (x->in_len && x->in_wr >= 0) {
		ssize_t w = write(x->in_wr, x->in + x->in_off, x->in_len);
		if (w < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN) return;
			/* EPIPE: the child closed its stdin; what the host sends is dropped. */
			stdin_discard(x);
			return;
		}
		x->in_off += (size_t)w;
		x->in_len -= (size_t)w;
		x->ack += (uint32_t)w;
	}
	if (!x->in_len) x->in_off = 0;
	if (!x->in_len && x->in_eof) close_fd(&x->in_wr);
}

/* The header is complete: is this frame allowed here, and how long may it be? */
static const char *check_header(struct exec *x)
{
	uint8_t *h = x->hdr;
	uint32_t len = get32(h + 4);
	if (h[0] != MAGIC0 || h[1] != MAGIC1) return "bad magic";
	if (h[2] != VERSION) return "unsupported protocol version";
	switch (h[3]) {
	case T_EXEC:
		if (x->have_exec) return "a second EXEC";
		if (len < EXEC_FIXED || len > MAX_EXEC_PAYLOAD) return "EXEC length out of range";
		break;
	case T_STDIN:
		if (!x->have_exec) return "STDIN before EXEC";
		if (x->in_eof) return "STDIN after STDIN_EOF";
		if (len > MAX_DATA) return "STDIN frame too long";
		if (x->in_len + len > STDIN_WINDOW) return "STDIN past the window";
		break;
	case T_STDIN_EOF:
		if (!x->have_exec) return "STDIN_EOF before EXEC";
		if (x->in_eof) return "a second STDIN_EOF";
		if (len) return "STDIN_EOF with a payload";
		break;
	case T_SIGNAL:
		/* first on a connection: for the main workload (init forwards it) */
		if (len != 4) return "SIGNAL length is not 4";
		break;
	case T_WINSIZE:
		/* only first on a connection: the main workload's terminal */
		if (x->have_exec) return "WINSIZE after EXEC";
		if (len != 8) return "WINSIZE length is not 8";
		break;
	default:
		return "unknown message type";
	}
	x->msg_len = len;
	return NULL;
}

static void on_frame(struct exec *x)
{
	switch (x->hdr[3]) {
	case T_EXEC:
		on_exec(x);
		return;
	case T_STDIN:
		if (x->in_closed || x->reaped) {
			x->ack += x->msg_len;
			return;
		}
		if (!x->in) {
			x->in = malloc(STDIN_WINDOW);
			if (!x->in) return fail_conn(x, E_INTERNAL, "stdin: out of memory");
		}
		if (x->in_off + x->in_len + x->msg_len > STDIN_WINDOW) {
			memmove(x->in, x->in + x->in_off, x->in_len);
			x->in_off = 0;
		}
		memcpy(x->in + x->in_off + x->in_len, x->msg, x->msg_len);
		x->in_len += x->msg_len;
		stdin_write(x);
		return;
	case T_STDIN_EOF:
		x->in_eof = 1;
		if (!x->in_len) close_fd(&x->in_wr);
		return;
	case T_SIGNAL: {
		uint32_t sig = get32(x->msg);
		if (sig < 1 || sig >= (uint32_t)NSIG) return fail_conn(x, E_BAD_MESSAGE, "SIGNAL number out of range");
		if (!x->have_exec) {
			/*
			 * The main workload is init's child, not ours: init takes the
			 * number from a queued real-time signal that only it and we
			 * use, and checks it came from this agent. Done: close.
			 */
			union sigval v = { .sival_int = (int)sig };
			if (sigqueue(1, AGENT_SIGNAL_MAIN, v) < 0)
				return fail_conn(x, E_INTERNAL, "cannot signal the main workload");
			adbg("signal %u to the main workload", sig);
			x->dead = 1;
			return;
		}
		kill_child(x, (int)sig);
		return;
	}
	case T_WINSIZE: {
		uint32_t cols = get32(x->msg), rows = get32(x->msg + 4);
		if (cols < 1 || cols > MAX_TTY_DIM || rows < 1 || rows > MAX_TTY_DIM)
			return fail_conn(x, E_BAD_MESSAGE, "WINSIZE: cols and rows must be 1..65535");
		if (acfg->tty_fd < 0)
			return fail_conn(x, E_BAD_MESSAGE, "WINSIZE: the workload has no terminal (tsibox.tty)");
		/* On the master: the kernel sends SIGWINCH to the terminal's foreground
		 * process group when the size changed. Done: close. */
		struct winsize ws = { .ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols };
		if (ioctl(acfg->tty_fd, TIOCSWINSZ, &ws) < 0)
			return fail_conn(x, E_INTERNAL, "WINSIZE: TIOCSWINSZ failed");
		adbg("window size %ux%u", cols, rows);
		x->dead = 1;
		return;
	}
	}
}

/* Read what the host sent; every complete frame is handled at once. */
static void sock_read(struct exec *x)
{
	size_t budget = READ_BUDGET;
	while (!x->dead && !x->closing && budget) {
		uint8_t *dst;
		size_t want;
		if (x->hdr_got < HDR) {
			dst = x->hdr + x->hdr_got;
			want = HDR - x->hdr_got;
		} else {
			dst = x->msg + x->msg_got;
			want = x->msg_len - x->msg_got;
		}
		ssize_t r = recv(x->sock, dst, want, 0);
		if (r == 0) return drop(x, "the host closed the connection");
		if (r < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN) return;
			return drop(x, strerror(errno));
		}
		budget -= (size_t)r < budget ? (size_t)r : budget;
		if (x->hdr_got < HDR) {
			x->hdr_got += (size_t)r;
			if (x->hdr_got < HDR) continue;
			const char *bad = check_header(x);
			if (bad) return fail_conn(x, E_BAD_MESSAGE, bad);
			x->msg_got = 0;
			if (x->msg_len) {
				x->msg = malloc(x->msg_len);
				if (!x->msg) return fail_conn(x, E_INTERNAL, "out of memory");
				continue;
			}
		} else {
			x->msg_got += (uint32_t)r;
			if (x->msg_got < x->msg_len) continue;
		}
		on_frame(x);
		free(x->msg);
		x->msg = NULL;
		x->hdr_got = 0;
		x->msg_len = 0;
	}
}

static void status_read(struct exec *x)
{
	struct exec_failure f;
	ssize_t r;
	do r = read(x->status_rd, &f, sizeof f); while (r < 0 && errno == EINTR);
	if (r < 0 && errno == EAGAIN) return;
	close_fd(&x->status_rd);
	/* The record is smaller than PIPE_BUF: written whole, read whole. */
	if (r == (ssize_t)sizeof f) {
		x->fail = f;
		x->fail.what[sizeof f.what - 1] = 0;
		x->failed = 1;
		x->result = 2;
	} else {
		x->result = 1;
	}
}

/* ---------- guest -> host ---------- */

/* Send what is left of `out`. Returns 1 when all of it has gone. */
static int flush(struct exec *x)
{
	while (x->out_off < x->out_len) {
		ssize_t w = send(x->sock, x->out + x->out_off, x->out_len - x->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN) return 0;
			drop(x, strerror(errno));
			return 0;
		}
		x->out_off += (size_t)w;
	}
	x->out_len = x->out_off = 0;
	return 1;
}

static int frame32(struct exec *x, int type, uint32_t a)
{
	put_header(x->out, type, 4);
	put32(x->out + HDR, a);
	x->out_len = HDR + 4;
	return 1;
}

/* One read of a child's pipe into `out` as a STDOUT/STDERR frame. */
static int read_pipe(struct exec *x, int *fd, int type)
{
	if (*fd < 0) return 0;
	ssize_t r;
	do r = read(*fd, x->out + HDR, MAX_DATA); while (r < 0 && errno == EINTR);
	if (r < 0 && errno == EAGAIN) return 0;
	if (r <= 0) {
		close_fd(fd);
		return 0;
	}
	put_header(x->out, type, (uint32_t)r);
	x->out_len = HDR + (size_t)r;
	x->drain_deadline = 0;
	return 1;
}

/* Put the next frame into the empty `out`. Returns 0 when there is nothing to send. */
static int fill(struct exec *x)
{
	if (x->result == 1) {
		x->result = 3;
		return frame32(x, T_STARTED, (uint32_t)x->pid);
	}
	if (x->result == 2) {
		x->result = 3;
		char text[MAX_TEXT];
		int n = snprintf(text, sizeof text, "%s: %s", x->fail.what, strerror(x->fail.err));
		if (n < 0) n = 0;
		if ((size_t)n >= sizeof text) n = sizeof text - 1;
		put_header(x->out, T_START_FAILED, (uint32_t)(8 + n));
		put32(x->out + HDR, (uint32_t)x->fail.status);
		put32(x->out + HDR + 4, (uint32_t)x->fail.err);
		memcpy(x->out + HDR + 8, text, (size_t)n);
		x->out_len = HDR + 8 + (size_t)n;
		return 1;
	}
	if (x->result != 3 || x->exit_sent) return 0;
	if (x->ack) {
		uint32_t a = x->ack;
		x->ack = 0;
		return frame32(x, T_STDIN_ACK, a);
	}
	x->turn = !x->turn;
	if (x->turn ? read_pipe(x, &x->out_rd, T_STDOUT) || read_pipe(x, &x->err_rd, T_STDERR)
		    : read_pipe(x, &x->err_rd, T_STDERR) || read_pipe(x, &x->out_rd, T_STDOUT))
		return 1;
	if (x->reaped && x->out_rd < 0 && x->err_rd < 0 && x->status_rd < 0) {
		put_header(x->out, T_EXIT, 8);
		put32(x->out + HDR, (uint32_t)x->exit_status);
		put32(x->out + HDR + 4, (uint32_t)x->exit_signal);
		x->out_len = HDR + 8;
		x->exit_sent = 1;
		x->closing = 1;
		x->closing_since = now_ms();
		return 1;
	}
	return 0;
}

/* Move as much as the socket takes now; keep the deadlines. */
static void progress(struct exec *x, long now)
{
	if (!x->dead && !x->have_exec && !x->closing && now - x->since_ms >= EXEC_WAIT_MS)
		fail_conn(x, E_TIMEOUT, "no EXEC in time");
	if (!x->dead && x->closing && now - x->closing_since >= CLOSE_WAIT_MS)
		drop(x, "the host did not take the last frame");
	/* Bounded: each turn sends at most a few frames per exec (fairness). */
	for (int i = 0; i < 8 && !x->dead; i++) {
		if (x->out_len) {
			if (!flush(x)) break;
			continue;
		}
		if (x->closing) {
			x->dead = 1;
			break;
		}
		if (!fill(x)) break;
	}
	if (x->dead) return;
	if (x->out_len) {
		x->drain_deadline = 0;
	} else if (x->reaped && (x->out_rd >= 0 || x->err_rd >= 0)) {
		if (!x->drain_deadline) {
			x->drain_deadline = now + DRAIN_MS;
		} else if (now >= x->drain_deadline) {
			adbg("exec %d: output still open %d ms after exit; sending EXIT", (int)x->pid, DRAIN_MS);
			close_fd(&x->out_rd);
			close_fd(&x->err_rd);
			x->drain_deadline = 0;
			if (fill(x)) flush(x);
		}
	}
}

/* ---------- the loop ---------- */

static struct exec *find_pid(pid_t p)
{
	for (size_t i = 0; i < nexecs; i++)
		if (execs[i]->pid == p && !execs[i]->reaped) return execs[i];
	return NULL;
}

static void reap(int sfd)
{
	struct signalfd_siginfo si;
	while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {}
	int ws;
	pid_t p;
	while ((p = waitpid(-1, &ws, WNOHANG)) > 0) {
		struct exec *x = find_pid(p);
		if (!x) continue;       /* its connection is gone; nothing to tell */
		x->reaped = 1;
		if (x->failed) {
			x->exit_status = x->fail.status;
			x->exit_signal = 0;
		} else {
			x->exit_status = status_of(ws);
			x->exit_signal = WIFSIGNALED(ws) ? WTERMSIG(ws) : 0;
		}
		stdin_discard(x);
		adbg("exec %d: exited, status %d", (int)p, x->exit_status);
	}
}

static void free_exec(struct exec *x)
{
	close_fd(&x->sock);
	close_fd(&x->status_rd);
	close_fd(&x->in_wr);
	close_fd(&x->out_rd);
	close_fd(&x->err_rd);
	free(x->msg);
	free(x->in);
	free(x->out);
	free(x);
}

/* A refusal on a socket that gets no exec slot: one small frame, best effort. */
static void refuse(int s, int code, const char *text)
{
	uint8_t buf[HDR + 4 + 64];
	size_t n = strnlen(text, 64);
	put_header(buf, T_ERROR, (uint32_t)(4 + n));
	put32(buf + HDR, (uint32_t)code);
	memcpy(buf + HDR + 4, text, n);
	if (send(s, buf, HDR + 4 + n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) { /* the host is gone */ }
	close(s);
}

static void accept_all(int lfd, long now)
{
	for (int i = 0; i < ACCEPT_BUDGET; i++) {
		struct sockaddr_vm peer;
		socklen_t plen = sizeof peer;
		int s = accept4(lfd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (s < 0) {
			if (errno == EINTR) continue;
			if (errno != EAGAIN) adbg("accept: %s", strerror(errno));
			return;
		}
		/* Only the host may run processes (a guest process reaching its own CID
		 * through a loopback transport must not). */
		if (plen < sizeof peer || peer.svm_cid != VMADDR_CID_HOST) {
			close(s);
			continue;
		}
		if (nexecs >= MAX_EXECS) {
			refuse(s, E_BUSY, "too many execs running");
			continue;
		}
		struct exec *x = calloc(1, sizeof *x);
		uint8_t *out = malloc(HDR + MAX_DATA);
		if (!x || !out) {
			free(x);
			free(out);
			refuse(s, E_INTERNAL, "out of memory");
			continue;
		}
		x->sock = s;
		x->out = out;
		x->since_ms = now;
		x->status_rd = x->in_wr = x->out_rd = x->err_rd = -1;
		execs[nexecs++] = x;
	}
}

enum { R_SOCK, R_STATUS, R_STDIN, R_PIPE };

static void agent_main(int lfd) __attribute__((noreturn));

static void agent_main(int lfd)
{
	log_name = "tsibox-agent";
	prctl(PR_SET_NAME, "tsibox-agent", 0, 0, 0);
	/* init blocks every signal and so do we: SIGCHLD comes through a signalfd, and a
	 * blocked SIGPIPE makes a write to a closed pipe fail with EPIPE instead. */
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	int sfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0) {
		aerr("signalfd: %s", strerror(errno));
		_exit(1);
	}
	static struct pollfd pfd[2 + MAX_EXECS * 5];
	static struct { struct exec *x; int role; } who[2 + MAX_EXECS * 5];
	for (;;) {
		long now = now_ms(), next = -1;
		size_t n = 0;
		pfd[n++] = (struct pollfd){ .fd = lfd, .events = POLLIN };
		pfd[n++] = (struct pollfd){ .fd = sfd, .events = POLLIN };
#define WATCH(X, FD, EV, ROLE) do { \
		who[n].x = (X); who[n].role = (ROLE); \
		pfd[n++] = (struct pollfd){ .fd = (FD), .events = (EV) }; } while (0)
		for (size_t i = 0; i < nexecs; i++) {
			struct exec *x = execs[i];
			WATCH(x, x->sock, (x->closing ? 0 : POLLIN) | (x->out_len ? POLLOUT : 0), R_SOCK);
			if (x->status_rd >= 0) WATCH(x, x->status_rd, POLLIN, R_STATUS);
			if (x->in_wr >= 0 && x->in_len) WATCH(x, x->in_wr, POLLOUT, R_STDIN);
			if (!x->out_len && x->result == 3) {
				if (x->out_rd >= 0) WATCH(x, x->out_rd, POLLIN, R_PIPE);
				if (x->err_rd >= 0) WATCH(x, x->err_rd, POLLIN, R_PIPE);
			}
			long d = x->closing ? x->closing_since + CLOSE_WAIT_MS
				: !x->have_exec ? x->since_ms + EXEC_WAIT_MS : x->drain_deadline;
			if (d > 0 && (next < 0 || d < next)) next = d;
		}
#undef WATCH
		int timeout = next < 0 ? -1 : next <= now ? 0 : (int)(next - now);
		int r = poll(pfd, n, timeout);
		if (r < 0 && errno != EINTR) {
			aerr("poll: %s", strerror(errno));
			sleep_ms(100);
			continue;
		}
		now = now_ms();
		if (r > 0) {
			if (pfd[1].revents) reap(sfd);
			for (size_t i = 2; i < n; i++) {
				struct exec *x = who[i].x;
				short ev = pfd[i].revents;
				if (!ev || x->dead) continue;
				switch (who[i].role) {
				case R_SOCK:
					if (ev & (POLLIN | POLLHUP | POLLERR)) sock_read(x);
					if ((ev & POLLOUT) && !x->dead) flush(x);
					break;
				case R_STATUS:
					if (x->status_rd >= 0) status_read(x);
					break;
				case R_STDIN:
					stdin_write(x);
					break;
				default:
					break;  /* progress() reads the pipes when `out` is free */
				}
			}
			/* After the old sockets: a new slot's descriptors are not in pfd yet. */
			if (pfd[0].revents) accept_all(lfd, now);
		}
		size_t keep = 0;
		for (size_t i = 0; i < nexecs; i++) {
			struct exec *x = execs[i];
			progress(x, now);
			if (x->dead) free_exec(x);
			else execs[keep++] = x;
		}
		nexecs = keep;
	}
}

pid_t agent_spawn(const struct agent_config *cfg, int close_fd)
{
	int lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		adbg("exec agent: socket(AF_VSOCK): %s (no agent)", strerror(errno));
		return -1;
	}
	struct sockaddr_vm addr;
	memset(&addr, 0, sizeof addr);
	addr.svm_family = AF_VSOCK;
	addr.svm_cid = VMADDR_CID_ANY;
	addr.svm_port = AGENT_PORT;
	/* Listening before the fork: from now on a host connect is queued, not refused. */
	if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, MAX_EXECS) < 0) {
		adbg("exec agent: vsock port %d: %s (no agent)", AGENT_PORT, strerror(errno));
		close(lfd);
		return -1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		aerr("exec agent: fork: %s", strerror(errno));
		close(lfd);
		return -1;
	}
	if (pid == 0) {
		if (close_fd >= 0) close(close_fd);
		acfg = cfg;
		agent_main(lfd);
	}
	close(lfd);
	return pid;
}
