// tsibox-stress: a bounded random workload on TSI sockets, for the debug guest kernel
// (test/e2e/tsi-stress.test.ts; docs/guest-init.md, "The debug kernel and the TSI stress test").
//
//   tsibox-stress [-t SECONDS] [-p WORKERS] [-s SEED] [-l PORT[,PORT]...] [-E PORT]
//                 [-u UID] TARGET [TARGET]
//
//   TARGET   v4=ADDR,echo=P[,refused=P][,slow=P][,reset=P][,close=P][,idle=P][,udp=P][,udpclosed=P]
//            (v6=ADDR for IPv6): host servers behind a host alias, as
//            test/helpers/conformance-servers.ts starts them (slow: never accepts)
//   -t       how long the workers run (default 30 s)
//   -p       worker processes (default 4, at most 32)
//   -l       guest ports the host publishes: workers listen on them (and on port 0
//            and unpublished ports) and accept what the host sends
//   -E       the ENFILE accept scenario's listener port (published by the host, which
//            connects to it); without -E the scenario is skipped
//   -u       the uid/gid the workers drop to after setup (default 65534)
//
// As root, the supervisor sets up, then forks the workers, which drop privileges
// (setgroups/setgid/setuid) and run random socket operations until the deadline:
// blocking and O_NONBLOCK connects (echo, refused, never-accepting, reset and close
// servers), listen/accept (blocking, nonblocking, interrupted, and the listener
// closed under an accept in another thread or process), send/recv/shutdown/close,
// UDP bind/sendto/recvfrom and connected UDP, connect(AF_UNSPEC) and reconnect,
// poll and epoll, dup + fork (the child uses and closes the copy), signals between
// workers (SIGUSR1/SIGALRM, handlers with and without SA_RESTART), children in
// unshare(CLONE_NEWUSER|CLONE_NEWNET) using inherited TSI sockets, an echo round trip
// whose bytes are compared, two threads on one socket (one connects, listens or sends
// the first datagram while the other makes every other call on it, a second connect
// included, and the socket is sometimes closed under it). Every blocking call is bounded by a per-process kick
// timer (SIGUSR2, never SA_RESTART), every loop by a count and the deadline, tracked
// descriptors by a cap; the supervisor kills what is still running 30 s after the
// deadline (printing /proc/PID/stack first: a task stuck in the kernel is a finding).
//
// ENFILE scenario (-E, as root): an unprivileged process listens on PORT and waits
// for a host connection to queue; the supervisor lowers /proc/sys/fs/file-max to just
// above the current file count, stops the workers, and unprivileged children fill
// the file table (open /dev/null until ENFILE); the listener then calls accept()
// (blocking and nonblocking: ENFILE expected, the queued connection must stay
// queued), the workers run on against the full table for a moment, file-max is
// restored, and the listener accepts the queued connection and answers it.
//
// Output (stdout): one line per operation, "tsibox-stress: op NAME total=N ok=N
// ERRNO=N ...", the ENFILE line, and last "tsibox-stress: summary seconds=S workers=N
// seed=S NAME=N ... impossible=N stuck=N". Exit status 0, or 1 when something
// impossible happened (a syscall result outside its contract, a kernel-internal errno
// such as ERESTARTSYS reaching user space, echoed bytes that differ, a worker killed
// by a signal or stuck past the watchdog), 2 on a usage error.
//
// Built by `make -C native guest-tools` with gcc -static -Os; the stress test packs it
// into an extra initramfs archive at /usr/bin/tsibox-stress.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXW 32           // workers
#define MAXFD 32          // descriptors a worker tracks
#define NBUCKET 136       // 0 ok, 1..133 errno, 134 errno >= 134, 135 stuck
#define B_BIG 134
#define B_STUCK 135
#define WATCHDOG_GRACE 30 // seconds after the deadline before the supervisor kills

// ---- operations -----------------------------------------------------------------

enum op {
  OP_CONNECT, OP_CONNECT_NB, OP_LISTEN, OP_ACCEPT, OP_ACCEPT_NB, OP_ACCEPT_CLOSE_THREAD,
  OP_ACCEPT_CLOSE_PROC, OP_SEND, OP_RECV, OP_SHUTDOWN, OP_CLOSE, OP_UDP, OP_UDP_CONNECT,
  OP_UNSPEC, OP_POLL, OP_EPOLL, OP_DUP_FORK, OP_SIGNAL, OP_UNSHARE, OP_SOCKOPT, OP_ECHO,
  OP_RACE, OP_ENFILE_ACCEPT, OP_ENFILE_AFTER, NOPS
};
static const char *const op_name[NOPS] = {
  "connect", "connect_nb", "listen", "accept", "accept_nb", "accept_close_thread",
  "accept_close_proc", "send", "recv", "shutdown", "close", "udp", "udp_connect",
  "unspec", "poll", "epoll", "dup_fork", "signal", "unshare", "sockopt", "echo",
  "race", "enfile_accept", "enfile_after",
};
// Relative weights of the worker operations (the ENFILE ones are the scenario's).
static const int op_weight[NOPS] = {
  10, 10, 6, 10, 8, 3, 2, 10, 10, 4, 6, 8, 5, 4, 5, 4, 4, 4, 2, 5, 4, 8, 0, 0,
};

// ---- shared state (one anonymous MAP_SHARED mapping) -------------------------------

struct shared {
  unsigned long counts[MAXW + 2][NOPS][NBUCKET];
  unsigned long impossible;
  unsigned long stuck;
  pid_t workers[MAXW];
  int nworkers;
  long filemax_orig;     // >= 0 while lowered: the supervisor restores it at exit
  char enfile_line[512];
};
static struct shared *sh;
static int slot;         // this process's row in counts

// ---- small helpers -----------------------------------------------------------------

static __thread uint64_t rng_state;  // per thread: helper threads seed their own
static uint32_t rnd32(void) {
  uint64_t x = rng_state;
  x ^= x << 13; x ^= x >> 7; x ^= x << 17;
  rng_state = x;
  return (uint32_t)(x >> 11);
}
static unsigned rnd(unsigned n) { return n ? rnd32() % n : 0; }

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void msleep(unsigned ms) {
  struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

static const char *errname(int e) {
  static char b[16];
  const char *n = strerrorname_np(e);
  if (n != NULL) return n;
  snprintf(b, sizeof b, "E%d", e);
  return b;
}

static void impossible(const char *fmt, ...) {
  va_list ap;
  char line[400];
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  unsigned long n = __atomic_add_fetch(&sh->impossible, 1, __ATOMIC_RELAXED);
  if (n <= 50) fprintf(stderr, "tsibox-stress: IMPOSSIBLE (pid %d): %s\n", getpid(), line);
}

// Records one result of `op`: r >= 0 is success, r == -1 a failure with errno e.
// Anything else, or an errno outside what user space can see, is impossible.
static void rec(enum op op, long r, int e) {
  int b;
  if (r >= 0) b = 0;
  else if (r != -1) { impossible("%s returned %ld", op_name[op], r); b = B_BIG; }
  else if (e <= 0) { impossible("%s failed with errno %d", op_name[op], e); b = B_BIG; }
  else if (e >= 512) { impossible("%s failed with kernel-internal errno %d", op_name[op], e); b = B_BIG; }
  else b = e < B_BIG ? e : B_BIG;
  __atomic_add_fetch(&sh->counts[slot][op][b], 1, __ATOMIC_RELAXED);
}
static void rec_stuck(enum op op) {
  __atomic_add_fetch(&sh->counts[slot][op][B_STUCK], 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&sh->stuck, 1, __ATOMIC_RELAXED);
}
#define REC(op, expr) ({ errno = 0; long r_ = (long)(expr); int e_ = errno; rec(op, r_, e_); errno = e_; r_; })

// ---- targets -----------------------------------------------------------------------

enum role { R_ECHO, R_REFUSED, R_SLOW, R_RESET, R_CLOSE, R_IDLE, R_UDP, R_UDPCLOSED, NROLES };
static const char *const role_name[NROLES] = { "echo", "refused", "slow", "reset", "close", "idle", "udp", "udpclosed" };

struct target {
  int family;
  struct in_addr a4;
  struct in6_addr a6;
  int port[NROLES];  // 0: none
};
static struct target targets[2];
static int ntargets;

static int parse_target(char *s, struct target *t) {
  memset(t, 0, sizeof *t);
  for (char *tok = strtok(s, ","); tok != NULL; tok = strtok(NULL, ",")) {
    char *eq = strchr(tok, '=');
    if (eq == NULL) return -1;
    *eq = 0;
    const char *k = tok, *v = eq + 1;
    if (!strcmp(k, "v4")) {
      t->family = AF_INET;
      if (inet_pton(AF_INET, v, &t->a4) != 1) return -1;
      continue;
    }
    if (!strcmp(k, "v6")) {
      t->family = AF_INET6;
      if (inet_pton(AF_INET6, v, &t->a6) != 1) return -1;
      continue;
    }
    int i;
    for (i = 0; i < NROLES; i++) if (!strcmp(k, role_name[i])) break;
    if (i == NROLES) continue;  // other roles of the conformance servers: ignored
    t->port[i] = atoi(v);
    if (t->port[i] <= 0 || t->port[i] > 65535) return -1;
  }
  return t->family != 0 && t->port[R_ECHO] != 0 ? 0 : -1;
}

static socklen_t target_addr(const struct target *t, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (t->family == AF_INET) {
    struct sockaddr_in *s = (struct sockaddr_in *)ss;
    s->sin_family = AF_INET;
    s->sin_addr = t->a4;
    s->sin_port = htons((uint16_t)port);
    return sizeof *s;
  }
  struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
  s->sin6_family = AF_INET6;
  s->sin6_addr = t->a6;
  s->sin6_port = htons((uint16_t)port);
  return sizeof *s;
}

static const struct target *pick_target(void) { return &targets[rnd((unsigned)ntargets)]; }

// A TCP port of `t`: mostly echo, else one of the others it has.
static int pick_stream_port(const struct target *t) {
  static const int roles[] = { R_ECHO, R_ECHO, R_ECHO, R_REFUSED, R_SLOW, R_RESET, R_CLOSE, R_IDLE };
  int p = t->port[roles[rnd(sizeof roles / sizeof roles[0])]];
  return p ? p : t->port[R_ECHO];
}
static int pick_udp_port(const struct target *t) {
  int p = rnd(4) == 0 ? t->port[R_UDPCLOSED] : t->port[R_UDP];
  if (p == 0) p = t->port[R_UDP] ? t->port[R_UDP] : t->port[R_REFUSED];
  return p ? p : 9;
}

static int listen_ports[16];
static int nlisten_ports;
static int enfile_port;
static uid_t drop_uid = 65534;

// ---- signals and the kick timer ----------------------------------------------------

static volatile sig_atomic_t got_usr1, got_alrm, got_kick;
static void on_usr1(int sig) { (void)sig; got_usr1++; }
static void on_alrm(int sig) { (void)sig; got_alrm++; }
static void on_kick(int sig) { (void)sig; got_kick++; }

static void set_handler(int sig, void (*fn)(int), int restart) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = fn;
  sa.sa_flags = restart ? SA_RESTART : 0;
  sigemptyset(&sa.sa_mask);
  sigaction(sig, &sa, NULL);
}

static timer_t kick_timer;
static int have_kick;

// Interrupts this process's blocking calls after `ms`, then every 200 ms until disarmed.
static void arm(unsigned ms) {
  if (!have_kick) return;
  struct itimerspec it = { { 0, 200 * 1000000L }, { ms / 1000, (long)(ms % 1000) * 1000000L } };
  if (ms == 0) it.it_value.tv_nsec = 1;
  timer_settime(kick_timer, 0, &it, NULL);
}
static void disarm(void) {
  if (!have_kick) return;
  struct itimerspec it;
  memset(&it, 0, sizeof it);
  timer_settime(kick_timer, 0, &it, NULL);
}

static void make_kick_timer(void) {
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = SIGUSR2;
  have_kick = timer_create(CLOCK_MONOTONIC, &ev, &kick_timer) == 0;
}

// A forked child: default dispositions, no kick timer (timers are not inherited), and
// an alarm that ends it if it hangs.
static void child_setup(unsigned secs) {
  have_kick = 0;
  signal(SIGALRM, SIG_DFL);
  alarm(secs);
}

// Waits for `pid` at most `ms`, then SIGKILLs it and waits 2 s more; 0 when reaped.
static int reap(pid_t pid, unsigned ms, enum op op) {
  double end = now() + ms / 1000.0;
  int killed = 0;
  for (;;) {
    int st;
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      if (WIFSIGNALED(st) && WTERMSIG(st) != SIGKILL && WTERMSIG(st) != SIGALRM) impossible("%s child killed by signal %d", op_name[op], WTERMSIG(st));
      return 0;
    }
    if (r < 0 && errno != EINTR) return 0;
    if (now() > end) {
      if (killed) { rec_stuck(op); return -1; }
      kill(pid, SIGKILL);
      killed = 1;
      end = now() + 2;
    }
    msleep(5);
  }
}

// ---- tracked descriptors -----------------------------------------------------------

enum kind { K_STREAM, K_CONNECTING, K_LISTENER, K_UDP, K_EPOLL, K_FAILED };
struct tfd { int fd; enum kind kind; int family; };
static struct tfd fds[MAXFD];
static int nfds;

static void untrack_at(int i) { fds[i] = fds[--nfds]; }
static void close_at(int i) {
  int fd = fds[i].fd;
  untrack_at(i);
  REC(OP_CLOSE, close(fd));
}
static void track(int fd, enum kind kind, int family) {
  if (nfds == MAXFD) close_at((int)rnd(MAXFD));
  fds[nfds++] = (struct tfd){ fd, kind, family };
}
// A random tracked descriptor of one of the kinds in `mask` (bit per kind), or -1.
static int pick_fd(unsigned mask) {
  int idx[MAXFD], n = 0;
  for (int i = 0; i < nfds; i++) if (mask & (1u << fds[i].kind)) idx[n++] = i;
  return n ? idx[rnd((unsigned)n)] : -1;
}
#define M(k) (1u << (k))
#define M_DATA (M(K_STREAM) | M(K_CONNECTING) | M(K_UDP) | M(K_FAILED))
#define M_SOCK (M_DATA | M(K_LISTENER))

static char buf[65536];

// ---- the operations ----------------------------------------------------------------

static void op_connect(void) {
  const struct target *t = pick_target();
  struct sockaddr_storage ss;
  socklen_t len = target_addr(t, pick_stream_port(t), &ss);
  int s = socket(t->family, SOCK_STREAM | (rnd(2) ? SOCK_CLOEXEC : 0), 0);
  if (s < 0) { rec(OP_CONNECT, -1, errno); return; }
  arm(200 + rnd(1800));
  long r = REC(OP_CONNECT, connect(s, (struct sockaddr *)&ss, len));
  disarm();
  if (r == 0) {
    if (rnd(2)) send(s, "hello\n", 6, MSG_NOSIGNAL | MSG_DONTWAIT);
    track(s, K_STREAM, t->family);
  } else if (rnd(4) == 0) {
    track(s, errno == EINTR || errno == EALREADY ? K_CONNECTING : K_FAILED, t->family);
  } else {
    close(s);
  }
}

static void op_connect_nb(void) {
  const struct target *t = pick_target();
  struct sockaddr_storage ss;
  socklen_t len = target_addr(t, pick_stream_port(t), &ss);
  int s = socket(t->family, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (s < 0) { rec(OP_CONNECT_NB, -1, errno); return; }
  errno = 0;
  long r = connect(s, (struct sockaddr *)&ss, len);
  int e = errno;
  rec(OP_CONNECT_NB, r == -1 && e == EINPROGRESS ? 0 : r, e);
  switch (rnd(4)) {
  case 0:  // closed while the connect is in flight
    close(s);
    return;
  case 1:  // kept, to be used or closed later
    track(s, r == 0 ? K_STREAM : K_CONNECTING, t->family);
    return;
  default: {
    struct pollfd p = { s, POLLOUT | POLLIN, 0 };
    int n = poll(&p, 1, (int)rnd(600));
    if (n > 1) impossible("poll of 1 fd returned %d", n);
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el) < 0) impossible("getsockopt(SO_ERROR) failed: %s", errname(errno));
    if (err < 0 || err >= 512) impossible("SO_ERROR %d", err);
    if (n == 1 && err == 0 && rnd(2)) {
      // A second connect on a connected (or still connecting) socket.
      errno = 0;
      long r2 = connect(s, (struct sockaddr *)&ss, len);
      if (r2 != -1 && r2 != 0) impossible("second connect returned %ld", r2);
    }
    track(s, err ? K_FAILED : K_CONNECTING, t->family);
  }
  }
}

static void op_listen(void) {
  int fam = rnd(3) == 0 ? AF_INET6 : AF_INET;
  int s = socket(fam, SOCK_STREAM | (rnd(4) == 0 ? SOCK_NONBLOCK : 0), 0);
  if (s < 0) { rec(OP_LISTEN, -1, errno); return; }
  int one = 1;
  if (rnd(2)) setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int port;
  unsigned w = rnd(8);
  if (w < 5 && nlisten_ports > 0) port = listen_ports[rnd((unsigned)nlisten_ports)];
  else if (w < 7) port = 0;
  else port = 7300 + (int)rnd(40);
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t len;
  if (fam == AF_INET) {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    a->sin_addr.s_addr = rnd(6) == 0 ? htonl(INADDR_LOOPBACK) : htonl(INADDR_ANY);
    len = sizeof *a;
  } else {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    a->sin6_addr = in6addr_any;
    int v6only = (int)rnd(2);
    setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only);
    len = sizeof *a;
  }
  if (rnd(10) == 0) port = 0;  // no bind: listen() picks a port
  else if (bind(s, (struct sockaddr *)&ss, len) < 0) {
    rec(OP_LISTEN, -1, errno);
    close(s);
    return;
  }
  long r = REC(OP_LISTEN, listen(s, (int)rnd(17)));
  if (r < 0) { close(s); return; }
  struct sockaddr_storage got;
  socklen_t gl = sizeof got;
  if (getsockname(s, (struct sockaddr *)&got, &gl) == 0) {
    int gp = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port : ((struct sockaddr_in6 *)&got)->sin6_port);
    if (got.ss_family != fam) impossible("listener getsockname family %d, socket family %d", got.ss_family, fam);
    else if (gp == 0) impossible("a listening socket reports port 0");
    else if (port != 0 && gp != port) impossible("listener bound to %d reports port %d", port, gp);
  } else {
    impossible("getsockname on a listener failed: %s", errname(errno));
  }
  if (rnd(8) == 0) {  // listen() again with another backlog
    errno = 0;
    long r2 = listen(s, (int)rnd(5));
    if (r2 != 0 && r2 != -1) impossible("second listen returned %ld", r2);
  }
  track(s, K_LISTENER, fam);
}

static int ensure_listener(void) {
  int i = pick_fd(M(K_LISTENER));
  if (i >= 0) return i;
  op_listen();
  return pick_fd(M(K_LISTENER));
}

// `ss`/`len`: the address accept() filled in, when it was asked for one (len != NULL).
static void check_accepted(int c, const struct sockaddr_storage *ss, const socklen_t *len, int lfam) {
  if (len == NULL) {
    // no address asked for
  } else if (*len > sizeof *ss || *len < sizeof(sa_family_t)) impossible("accept address length %u", (unsigned)*len);
  else if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6) impossible("accepted peer family %d (length %u)", ss->ss_family, (unsigned)*len);
  else if (lfam == AF_INET && ss->ss_family != AF_INET) impossible("IPv4 listener accepted family %d", ss->ss_family);
  // Say something to the host client, read what it sent.
  send(c, "guest\n", 6, MSG_NOSIGNAL | MSG_DONTWAIT);
  recv(c, buf, 256, MSG_DONTWAIT);
}

static void op_accept(int nonblock) {
  enum op op = nonblock ? OP_ACCEPT_NB : OP_ACCEPT;
  int i = ensure_listener();
  if (i < 0) return;
  int lfd = fds[i].fd, lfam = fds[i].family;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int fl = fcntl(lfd, F_GETFL);
  if (nonblock && fl >= 0) fcntl(lfd, F_SETFL, fl | O_NONBLOCK);
  if (!nonblock) arm(50 + rnd(700));
  // Without an address, with one, or (sometimes) an address without a length: EFAULT.
  unsigned how = rnd(8);
  struct sockaddr *addr = how == 0 ? NULL : (struct sockaddr *)&ss;
  socklen_t *lenp = how == 0 || how == 1 ? NULL : &len;
  long c = REC(op, accept4(lfd, addr, lenp, rnd(2) ? SOCK_NONBLOCK : 0));
  if (!nonblock) disarm();
  if (nonblock && fl >= 0) fcntl(lfd, F_SETFL, fl);
  if (c >= 0) {
    check_accepted((int)c, &ss, lenp, lfam);
    if (rnd(2)) track((int)c, K_STREAM, lfam);
    else close((int)c);
  }
}

struct accept_job {
  int fd;
  volatile int done;
  long r;
  int e;
};
static void *accept_thread(void *arg) {
  struct accept_job *j = arg;
  sigset_t m;
  sigemptyset(&m);
  sigaddset(&m, SIGALRM);
  sigaddset(&m, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &m, NULL);
  errno = 0;
  long r = accept(j->fd, NULL, NULL);
  j->e = errno;
  j->r = r;
  if (r >= 0) close((int)r);
  __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

// The listener is closed (or shut down, or replaced by dup2) while another thread
// is blocked in accept() on it; the thread is then kicked with SIGUSR2.
static void op_accept_close_thread(void) {
  int i = ensure_listener();
  if (i < 0) return;
  int lfd = fds[i].fd;
  int fl = fcntl(lfd, F_GETFL);
  if (fl >= 0 && (fl & O_NONBLOCK)) fcntl(lfd, F_SETFL, fl & ~O_NONBLOCK);
  untrack_at(i);
  struct accept_job *j = calloc(1, sizeof *j);
  if (j == NULL) { close(lfd); return; }
  j->fd = lfd;
  pthread_t th;
  if (pthread_create(&th, NULL, accept_thread, j) != 0) { free(j); close(lfd); return; }
  msleep(rnd(60));
  switch (rnd(4)) {
  case 0: REC(OP_CLOSE, close(lfd)); break;
  case 1: REC(OP_SHUTDOWN, shutdown(lfd, SHUT_RDWR)); close(lfd); break;
  case 2: {
    int n = open("/dev/null", O_RDONLY);
    if (n >= 0) { dup2(n, lfd); close(n); }
    close(lfd);
    break;
  }
  default: pthread_kill(th, SIGUSR2); msleep(rnd(20)); close(lfd); break;
  }
  double end = now() + 4;
  while (!__atomic_load_n(&j->done, __ATOMIC_ACQUIRE) && now() < end) {
    pthread_kill(th, SIGUSR2);
    msleep(20);
  }
  if (__atomic_load_n(&j->done, __ATOMIC_ACQUIRE)) {
    pthread_join(th, NULL);
    rec(OP_ACCEPT_CLOSE_THREAD, j->r, j->e);
    free(j);
  } else {
    // Still in accept() 4 s after its listener went away: counted, left behind.
    rec_stuck(OP_ACCEPT_CLOSE_THREAD);
    pthread_detach(th);
  }
}

// The same across processes: a child blocks in accept() on the inherited listener
// while the parent closes or shuts down its copy.
static void op_accept_close_proc(void) {
  int i = ensure_listener();
  if (i < 0) return;
  int lfd = fds[i].fd;
  pid_t pid = fork();
  if (pid < 0) { rec(OP_ACCEPT_CLOSE_PROC, -1, errno); return; }
  if (pid == 0) {
    child_setup(3);
    set_handler(SIGALRM, on_alrm, 0);
    int fl = fcntl(lfd, F_GETFL);
    if (fl >= 0) fcntl(lfd, F_SETFL, fl & ~O_NONBLOCK);
    errno = 0;
    long r = accept(lfd, NULL, NULL);
    rec(OP_ACCEPT_CLOSE_PROC, r, errno);
    if (r >= 0) { send((int)r, "child\n", 6, MSG_NOSIGNAL | MSG_DONTWAIT); close((int)r); }
    _exit(0);
  }
  msleep(rnd(80));
  if (rnd(2)) REC(OP_SHUTDOWN, shutdown(lfd, SHUT_RDWR));
  close_at(i);
  reap(pid, 5000, OP_ACCEPT_CLOSE_PROC);
}

static void op_send(void) {
  int i = pick_fd(M_DATA);
  if (i < 0) { op_connect(); return; }
  size_t n = rnd(4) == 0 ? 1 + rnd(sizeof buf) : 1 + rnd(512);
  for (size_t k = 0; k < n; k += 64) buf[k] = (char)rnd(256);
  int flags = MSG_NOSIGNAL | (rnd(2) ? MSG_DONTWAIT : 0);
  if (!(flags & MSG_DONTWAIT)) arm(100 + rnd(1000));
  long r = REC(OP_SEND, send(fds[i].fd, buf, n, flags));
  if (!(flags & MSG_DONTWAIT)) disarm();
  if (r > (long)n) impossible("send of %zu returned %ld", n, r);
}

static void op_recv(void) {
  int i = pick_fd(M_DATA | M(K_LISTENER));
  if (i < 0) { op_connect(); return; }
  static const int fl[] = { MSG_DONTWAIT, MSG_DONTWAIT, 0, MSG_PEEK | MSG_DONTWAIT, MSG_PEEK, MSG_WAITALL, MSG_DONTWAIT | MSG_TRUNC };
  int flags = fl[rnd(sizeof fl / sizeof fl[0])];
  if (fds[i].kind != K_UDP) flags &= ~MSG_TRUNC;
  size_t n = 1 + rnd(rnd(2) ? 64 : sizeof buf);
  if (!(flags & MSG_DONTWAIT)) arm(50 + rnd(800));
  long r;
  if (rnd(3) == 0) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    r = REC(OP_RECV, recvfrom(fds[i].fd, buf, n, flags, (struct sockaddr *)&ss, &len));
    if (r >= 0 && len > sizeof ss) impossible("recvfrom address length %u", (unsigned)len);
  } else {
    r = REC(OP_RECV, recv(fds[i].fd, buf, n, flags));
  }
  if (!(flags & MSG_DONTWAIT)) disarm();
  if (r > (long)n && !(flags & MSG_TRUNC)) impossible("recv of %zu returned %ld", n, r);
}

static void op_shutdown(void) {
  int i = pick_fd(M_SOCK);
  if (i < 0) { op_connect(); return; }
  int how = rnd(10) == 0 ? 3 : (int)rnd(3);  // 3: invalid, EINVAL
  long r = REC(OP_SHUTDOWN, shutdown(fds[i].fd, how));
  if (how == 3 && r == 0) impossible("shutdown(3) succeeded");
}

static void op_close(void) {
  if (nfds == 0) { op_connect_nb(); return; }
  int i = (int)rnd((unsigned)nfds);
  if (fds[i].kind != K_EPOLL && rnd(4) == 0) {
    struct linger l = { 1, 0 };  // an abortive close
    setsockopt(fds[i].fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  }
  close_at(i);
}

static void op_udp(void) {
  const struct target *t = pick_target();
  int s = socket(t->family, SOCK_DGRAM | (rnd(2) ? SOCK_NONBLOCK : 0), 0);
  if (s < 0) { rec(OP_UDP, -1, errno); return; }
  if (rnd(3) == 0) {
    struct sockaddr_storage b;
    memset(&b, 0, sizeof b);
    b.ss_family = (sa_family_t)t->family;  // wildcard, port 0 (or a random one)
    int port = rnd(2) ? 0 : 7400 + (int)rnd(20);
    if (t->family == AF_INET) ((struct sockaddr_in *)&b)->sin_port = htons((uint16_t)port);
    else ((struct sockaddr_in6 *)&b)->sin6_port = htons((uint16_t)port);
    if (bind(s, (struct sockaddr *)&b, t->family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)) < 0) {
      rec(OP_UDP, -1, errno);
      close(s);
      return;
    }
  }
  struct sockaddr_storage ss;
  socklen_t len = target_addr(t, pick_udp_port(t), &ss);
  int k = 1 + (int)rnd(4);
  for (int j = 0; j < k; j++) {
    size_t n = rnd(8) == 0 ? rnd(9000) : 1 + rnd(200);
    long r = REC(OP_UDP, sendto(s, buf, n, MSG_NOSIGNAL | (rnd(2) ? MSG_DONTWAIT : 0), (struct sockaddr *)&ss, len));
    if (r > (long)n) impossible("sendto of %zu returned %ld", n, r);
  }
  for (int j = 0; j < k; j++) {
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    arm(50 + rnd(500));
    long r = REC(OP_UDP, recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl));
    disarm();
    if (r < 0) break;
    if (fl > sizeof from || (from.ss_family != AF_INET && from.ss_family != AF_INET6)) impossible("recvfrom source family %d length %u", from.ss_family, (unsigned)fl);
  }
  if (rnd(3) == 0) track(s, K_UDP, t->family);
  else close(s);
}

static void op_udp_connect(void) {
  const struct target *t = pick_target();
  int s = socket(t->family, SOCK_DGRAM, 0);
  if (s < 0) { rec(OP_UDP_CONNECT, -1, errno); return; }
  struct sockaddr_storage ss;
  socklen_t len = target_addr(t, pick_udp_port(t), &ss);
  if (REC(OP_UDP_CONNECT, connect(s, (struct sockaddr *)&ss, len)) == 0) {
    REC(OP_UDP_CONNECT, send(s, "ping", 4, MSG_NOSIGNAL | MSG_DONTWAIT));
    arm(50 + rnd(500));
    REC(OP_UDP_CONNECT, recv(s, buf, sizeof buf, 0));
    disarm();
  }
  if (rnd(2)) track(s, K_UDP, t->family);
  else close(s);
}

// connect(AF_UNSPEC) on a socket (disconnect), then maybe connect it again.
static void op_unspec(void) {
  int i = pick_fd(M_DATA);
  if (i < 0) { op_udp_connect(); return; }
  struct sockaddr sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_family = AF_UNSPEC;
  arm(1000);
  REC(OP_UNSPEC, connect(fds[i].fd, &sa, sizeof sa));
  disarm();
  if (rnd(2)) {
    const struct target *t = pick_target();
    if (t->family != fds[i].family) return;
    struct sockaddr_storage ss;
    int type = 0;
    socklen_t tl = sizeof type;
    getsockopt(fds[i].fd, SOL_SOCKET, SO_TYPE, &type, &tl);
    socklen_t len = target_addr(t, type == SOCK_DGRAM ? pick_udp_port(t) : pick_stream_port(t), &ss);
    arm(200 + rnd(1500));
    long r = REC(OP_UNSPEC, connect(fds[i].fd, (struct sockaddr *)&ss, len));
    disarm();
    if (r == 0 && type == SOCK_STREAM) fds[i].kind = K_STREAM;
  }
}

static void op_poll(void) {
  struct pollfd p[MAXFD];
  int n = 0;
  for (int i = 0; i < nfds && n < 16; i++) {
    if (rnd(2) == 0 && n > 0) continue;
    p[n].fd = fds[i].fd;
    p[n].events = (short)((rnd(2) ? POLLIN : 0) | (rnd(2) ? POLLOUT : 0) | (rnd(3) == 0 ? POLLRDHUP : 0) | (rnd(5) == 0 ? POLLPRI : 0));
    p[n].revents = 0;
    n++;
  }
  if (n == 0) { op_connect_nb(); return; }
  arm(1000);
  long r = REC(OP_POLL, poll(p, (nfds_t)n, (int)rnd(150)));
  disarm();
  if (r > n) impossible("poll of %d fds returned %ld", n, r);
  int ready = 0;
  for (int i = 0; i < n; i++) {
    short allowed = (short)(p[i].events | POLLERR | POLLHUP | POLLNVAL);
    if (p[i].revents & ~allowed) impossible("poll revents %#x for events %#x", p[i].revents, p[i].events);
    if (p[i].revents) ready++;
  }
  if (r >= 0 && ready != r) impossible("poll returned %ld but %d entries have revents", r, ready);
}

static void op_epoll(void) {
  int ep;
  int i = pick_fd(M(K_EPOLL));
  if (i >= 0 && rnd(2)) {
    ep = fds[i].fd;
  } else {
    ep = epoll_create1(rnd(2) ? EPOLL_CLOEXEC : 0);
    if (ep < 0) { rec(OP_EPOLL, -1, errno); return; }
    for (int k = 0; k < nfds; k++) {
      if (fds[k].kind == K_EPOLL || rnd(2)) continue;
      struct epoll_event ev = { 0 };
      ev.events = EPOLLIN | (rnd(2) ? EPOLLOUT : 0) | (rnd(3) == 0 ? EPOLLET : 0) | (rnd(4) == 0 ? EPOLLONESHOT : 0) | (rnd(3) == 0 ? EPOLLRDHUP : 0);
      ev.data.fd = fds[k].fd;
      REC(OP_EPOLL, epoll_ctl(ep, EPOLL_CTL_ADD, fds[k].fd, &ev));
    }
    // Kept sometimes: its descriptors get closed while registered.
    if (rnd(2)) track(ep, K_EPOLL, 0);
    else i = -2;
  }
  struct epoll_event evs[8];
  int max = 1 + (int)rnd(8);
  arm(1000);
  long r = REC(OP_EPOLL, epoll_wait(ep, evs, max, (int)rnd(150)));
  disarm();
  if (r > max) impossible("epoll_wait(max %d) returned %ld", max, r);
  if (i == -2) close(ep);
}

// dup() a socket and fork: the child uses the copy and closes it while the parent
// may close its own copies at the same time.
static void op_dup_fork(void) {
  int i = pick_fd(M_SOCK);
  if (i < 0) { op_connect(); return; }
  int fd = fds[i].fd;
  int d = rnd(2) ? dup(fd) : fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) { rec(OP_DUP_FORK, -1, errno); return; }
  pid_t pid = fork();
  if (pid < 0) { rec(OP_DUP_FORK, -1, errno); close(d); return; }
  if (pid == 0) {
    child_setup(3);
    switch (rnd(5)) {
    case 0: send(d, "dup\n", 4, MSG_NOSIGNAL | MSG_DONTWAIT); break;
    case 1: recv(d, buf, 128, MSG_DONTWAIT); break;
    case 2: shutdown(d, (int)rnd(3)); break;
    case 3: { struct pollfd p = { d, POLLIN | POLLOUT, 0 }; poll(&p, 1, (int)rnd(50)); break; }
    default: break;
    }
    long r = close(d);
    rec(OP_DUP_FORK, r, errno);
    if (rnd(2)) close(fd);
    _exit(0);
  }
  // The parent's copy goes now (while the child uses its own) or after the child.
  if (rnd(2)) { close(d); d = -1; }
  if (rnd(4) == 0) close_at(i);
  reap(pid, 5000, OP_DUP_FORK);
  if (d >= 0) close(d);
  rec(OP_DUP_FORK, 0, 0);
}

static void op_signal(void) {
  int n = sh->nworkers;
  pid_t target = n > 0 ? sh->workers[rnd((unsigned)n)] : 0;
  if (target <= 0 || target == getpid()) target = getpid();
  // Our own handlers change between restarting and interrupting ones.
  set_handler(SIGUSR1, on_usr1, (int)rnd(2));
  set_handler(SIGALRM, on_alrm, (int)rnd(2));
  REC(OP_SIGNAL, kill(target, rnd(2) ? SIGUSR1 : SIGALRM));
}

// A child in new user and network namespaces: its own sockets are off TSI, and it
// uses (then closes) TSI sockets inherited from the initial namespace.
static void op_unshare(void) {
  pid_t pid = fork();
  if (pid < 0) { rec(OP_UNSHARE, -1, errno); return; }
  if (pid == 0) {
    child_setup(4);
    int flags = rnd(4) == 0 ? CLONE_NEWUSER : CLONE_NEWUSER | CLONE_NEWNET;
    long r = REC(OP_UNSHARE, unshare(flags));
    (void)r;
    const struct target *t = pick_target();
    struct sockaddr_storage ss;
    socklen_t len = target_addr(t, t->port[R_ECHO], &ss);
    int s = socket(t->family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s >= 0) { REC(OP_UNSHARE, connect(s, (struct sockaddr *)&ss, len)); close(s); }
    s = socket(AF_INET, SOCK_STREAM, 0);
    if (s >= 0) {
      struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(listen_ports[0] ? (uint16_t)listen_ports[0] : 7001) };
      if (bind(s, (struct sockaddr *)&a, sizeof a) == 0) REC(OP_UNSHARE, listen(s, 4));
      close(s);
    }
    s = socket(t->family, SOCK_DGRAM, 0);
    if (s >= 0) {
      len = target_addr(t, pick_udp_port(t), &ss);
      REC(OP_UNSHARE, sendto(s, "x", 1, MSG_DONTWAIT, (struct sockaddr *)&ss, len));
      close(s);
    }
    for (int k = 0; k < nfds && k < 4; k++) {
      int j = (int)rnd((unsigned)nfds);
      if (fds[j].kind == K_EPOLL) continue;
      send(fds[j].fd, "ns\n", 3, MSG_NOSIGNAL | MSG_DONTWAIT);
      recv(fds[j].fd, buf, 64, MSG_DONTWAIT);
      if (rnd(2)) shutdown(fds[j].fd, SHUT_WR);
      close(fds[j].fd);
    }
    if (rnd(2)) op_connect();  // a fresh socket in the new namespace, blocking
    _exit(0);
  }
  reap(pid, 6000, OP_UNSHARE);
}

static void op_sockopt(void) {
  int i = pick_fd(M_SOCK);
  if (i < 0) { op_listen(); return; }
  int fd = fds[i].fd;
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int v = 1;
  socklen_t vl = sizeof v;
  switch (rnd(9)) {
  case 0:
    if (REC(OP_SOCKOPT, getsockname(fd, (struct sockaddr *)&ss, &len)) == 0 && len > sizeof ss) impossible("getsockname length %u", (unsigned)len);
    break;
  case 1:
    if (REC(OP_SOCKOPT, getpeername(fd, (struct sockaddr *)&ss, &len)) == 0 && (len > sizeof ss || (ss.ss_family != AF_INET && ss.ss_family != AF_INET6)))
      impossible("getpeername family %d length %u", ss.ss_family, (unsigned)len);
    break;
  case 2:
    if (REC(OP_SOCKOPT, getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &vl)) == 0 && (v < 0 || v >= 512)) impossible("SO_ERROR %d", v);
    break;
  case 3: REC(OP_SOCKOPT, setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &v, sizeof v)); break;
  case 4: v = 4096 + (int)rnd(65536); REC(OP_SOCKOPT, setsockopt(fd, SOL_SOCKET, rnd(2) ? SO_RCVBUF : SO_SNDBUF, &v, sizeof v)); break;
  case 5: REC(OP_SOCKOPT, ioctl(fd, FIONREAD, &v)); break;
  case 6: {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) REC(OP_SOCKOPT, fcntl(fd, F_SETFL, fl ^ O_NONBLOCK));
    break;
  }
  case 7: {
    struct timeval tv = { 0, (long)(1000 + rnd(500000)) };
    REC(OP_SOCKOPT, setsockopt(fd, SOL_SOCKET, rnd(2) ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, sizeof tv));
    break;
  }
  default: REC(OP_SOCKOPT, setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &v, sizeof v)); break;
  }
}

// A round trip through the host echo server: what comes back is a prefix of what went out.
static void op_echo(void) {
  const struct target *t = pick_target();
  struct sockaddr_storage ss;
  socklen_t len = target_addr(t, t->port[R_ECHO], &ss);
  int s = socket(t->family, SOCK_STREAM, 0);
  if (s < 0) { rec(OP_ECHO, -1, errno); return; }
  static char out[16384], in[16384];
  size_t n = 1 + rnd(sizeof out);
  for (size_t k = 0; k < n; k++) out[k] = (char)rnd32();
  arm(3000);
  long r = REC(OP_ECHO, connect(s, (struct sockaddr *)&ss, len));
  size_t sent = 0, got = 0;
  if (r == 0) {
    while (sent < n) {
      ssize_t w = send(s, out + sent, n - sent, MSG_NOSIGNAL);
      if (w <= 0) break;
      if ((size_t)w > n - sent) { impossible("echo send returned %zd of %zu", w, n - sent); break; }
      sent += (size_t)w;
    }
    while (got < sent) {
      ssize_t g = recv(s, in + got, sent - got, 0);
      if (g <= 0) break;
      if ((size_t)g > sent - got) { impossible("echo recv returned %zd of %zu", g, sent - got); break; }
      got += (size_t)g;
    }
    if (got > 0 && memcmp(in, out, got) != 0) {
      size_t k = 0;
      while (k < got && in[k] == out[k]) k++;
      impossible("echo: %zu bytes back differ from those sent at offset %zu", got, k);
    }
    rec(OP_ECHO, got == n ? 0 : -1, got == n ? 0 : (errno ? errno : EIO));
  }
  disarm();
  close(s);
}

// Two threads on one socket: the main thread connects (or listens, or sends the first
// datagram: the calls that turn a socket into a TSI socket) while a helper thread
// calls everything else on the same descriptor, including a second connect(); then
// the descriptor is closed, sometimes while the helper is still at it.
struct race {
  int fd, type, family;
  uint64_t seed;
  struct sockaddr_storage ss;
  socklen_t len;
  volatile int stop, done;
  long calls;
};
static void *race_thread(void *arg) {
  struct race *r = arg;
  rng_state = r->seed ? r->seed : 1;
  sigset_t m;
  sigemptyset(&m);
  sigaddset(&m, SIGALRM);
  sigaddset(&m, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &m, NULL);
  char b[256];
  for (int k = 0; k < 200 && !__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE); k++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int v = 4096;
    errno = 0;
    switch (rnd(14)) {
    case 0: getsockname(r->fd, (struct sockaddr *)&ss, &len); break;
    case 1: getpeername(r->fd, (struct sockaddr *)&ss, &len); break;
    case 2: { struct pollfd p = { r->fd, POLLIN | POLLOUT, 0 }; poll(&p, 1, 0); break; }
    case 3: send(r->fd, "race", 4, MSG_NOSIGNAL | MSG_DONTWAIT); break;
    case 4: recv(r->fd, b, sizeof b, MSG_DONTWAIT); break;
    case 5: setsockopt(r->fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v); break;
    case 6: len = sizeof v; getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &v, &len); break;
    case 7: ioctl(r->fd, FIONREAD, &v); break;
    case 8: if (rnd(4) == 0) shutdown(r->fd, (int)rnd(3)); break;
    case 9: if (rnd(3) == 0 && r->type == SOCK_STREAM) listen(r->fd, 4); break;
    case 10: if (rnd(3) == 0) { struct sockaddr sa = { .sa_family = AF_UNSPEC }; connect(r->fd, &sa, sizeof sa); } break;
    case 11: connect(r->fd, (struct sockaddr *)&r->ss, r->len); break;  // a second connect
    case 12: sendto(r->fd, "race", 4, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&r->ss, r->len); break;
    default: sched_yield(); break;
    }
    if (errno >= 512) impossible("race: kernel-internal errno %d", errno);
    r->calls++;
  }
  __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

static void op_race(void) {
  const struct target *t = pick_target();
  struct race *r = calloc(1, sizeof *r);
  if (r == NULL) return;
  r->type = rnd(3) == 0 ? SOCK_DGRAM : SOCK_STREAM;
  r->family = t->family;
  r->len = target_addr(t, r->type == SOCK_DGRAM ? pick_udp_port(t) : pick_stream_port(t), &r->ss);
  r->seed = rnd32() | ((uint64_t)rnd32() << 32);
  r->fd = socket(t->family, r->type | (rnd(3) == 0 ? SOCK_NONBLOCK : 0), 0);
  if (r->fd < 0) { rec(OP_RACE, -1, errno); free(r); return; }
  pthread_t th;
  if (pthread_create(&th, NULL, race_thread, r) != 0) { close(r->fd); free(r); return; }
  if (rnd(2)) sched_yield();
  arm(300 + rnd(1200));
  if (r->type == SOCK_STREAM && rnd(4) == 0) {
    struct sockaddr_storage b;
    memset(&b, 0, sizeof b);
    b.ss_family = (sa_family_t)t->family;
    bind(r->fd, (struct sockaddr *)&b, t->family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    REC(OP_RACE, listen(r->fd, 4));
  } else if (r->type == SOCK_STREAM) {
    REC(OP_RACE, connect(r->fd, (struct sockaddr *)&r->ss, r->len));
  } else {
    for (int k = 0; k < 3; k++) REC(OP_RACE, sendto(r->fd, "race", 4, MSG_NOSIGNAL, (struct sockaddr *)&r->ss, r->len));
    if (rnd(2)) REC(OP_RACE, connect(r->fd, (struct sockaddr *)&r->ss, r->len));
    REC(OP_RACE, recv(r->fd, buf, sizeof buf, 0));
  }
  disarm();
  int closed_early = rnd(3) == 0;
  if (closed_early) REC(OP_CLOSE, close(r->fd));  // while the helper may still be in a call
  __atomic_store_n(&r->stop, 1, __ATOMIC_RELEASE);
  double end = now() + 4;
  while (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE) && now() < end) {
    pthread_kill(th, SIGUSR2);
    msleep(10);
  }
  if (!__atomic_load_n(&r->done, __ATOMIC_ACQUIRE)) {
    rec_stuck(OP_RACE);
    pthread_detach(th);
    return;  // r stays allocated for the helper
  }
  pthread_join(th, NULL);
  if (!closed_early) REC(OP_CLOSE, close(r->fd));
  free(r);
}

typedef void (*op_fn)(void);
static void op_accept_b(void) { op_accept(0); }
static void op_accept_n(void) { op_accept(1); }
static const op_fn op_fns[NOPS] = {
  op_connect, op_connect_nb, op_listen, op_accept_b, op_accept_n, op_accept_close_thread,
  op_accept_close_proc, op_send, op_recv, op_shutdown, op_close, op_udp, op_udp_connect,
  op_unspec, op_poll, op_epoll, op_dup_fork, op_signal, op_unshare, op_sockopt, op_echo,
  op_race, NULL, NULL,
};

// ---- workers -----------------------------------------------------------------------

static void drop_privileges(uid_t uid) {
  if (getuid() != 0) return;
  if (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0) {
    fprintf(stderr, "tsibox-stress: cannot drop to uid %u: %s\n", (unsigned)uid, strerror(errno));
    _exit(3);
  }
  if (setuid(0) == 0) { impossible("setuid(0) succeeded after dropping privileges"); _exit(3); }
}

static void worker(int w, double deadline, uint64_t seed) {
  slot = w;
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  drop_privileges(drop_uid);
  struct rlimit rl = { 256, 256 };
  setrlimit(RLIMIT_NOFILE, &rl);
  rng_state = seed ^ ((uint64_t)(w + 1) * 0x9e3779b97f4a7c15ULL);
  if (rng_state == 0) rng_state = 1;
  signal(SIGPIPE, SIG_IGN);
  set_handler(SIGUSR1, on_usr1, 1);
  set_handler(SIGALRM, on_alrm, 0);
  set_handler(SIGUSR2, on_kick, 0);
  make_kick_timer();
  int total = 0;
  for (int k = 0; k < NOPS; k++) total += op_weight[k];
  // First every operation once (in a worker-specific order), then at random.
  int first = 0;
  long iter = 0;
  while (now() < deadline && iter < 10000000) {
    int k;
    if (first < NOPS) {
      k = (first + w) % NOPS;
      first++;
      if (op_fns[k] == NULL) continue;
    } else {
      int x = (int)rnd((unsigned)total);
      for (k = 0; k < NOPS; k++) { if (x < op_weight[k]) break; x -= op_weight[k]; }
      if (k == NOPS || op_fns[k] == NULL) continue;
    }
    op_fns[k]();
    iter++;
  }
  disarm();
  while (nfds > 0) close_at(nfds - 1);
  // Children this worker forked are reaped by reap(); any left get SIGKILL from the supervisor.
  _exit(0);
}

// ---- the ENFILE accept scenario --------------------------------------------------

static long read_long(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  long v = -1;
  if (fscanf(f, "%ld", &v) != 1) v = -1;
  fclose(f);
  return v;
}
static int write_long(const char *path, long v) {
  FILE *f = fopen(path, "w");
  if (f == NULL) return -1;
  int r = fprintf(f, "%ld\n", v) > 0 ? 0 : -1;
  if (fclose(f) != 0) r = -1;
  return r;
}
// Allocated files: the first field of /proc/sys/fs/file-nr.
static long nr_files(void) { return read_long("/proc/sys/fs/file-nr"); }

static void stop_workers(int sig) {
  for (int i = 0; i < sh->nworkers; i++) if (sh->workers[i] > 0) kill(-sh->workers[i], sig);
}

static int readc(int fd, unsigned ms) {
  struct pollfd p = { fd, POLLIN, 0 };
  if (poll(&p, 1, (int)ms) <= 0) return -1;
  char c;
  return read(fd, &c, 1) == 1 ? c : -1;
}
static void writec(int fd, char c) { if (write(fd, &c, 1) != 1) { /* the peer is gone */ } }

// The unprivileged listener of the scenario: talks to the coordinator over two pipes.
static void enfile_listener(int in, int out) {
  slot = MAXW + 1;
  drop_privileges(drop_uid);
  child_setup(120);
  set_handler(SIGALRM, on_alrm, 0);
  int s = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)enfile_port) };
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 8) < 0) {
    fprintf(stderr, "tsibox-stress: enfile: listener on %d: %s\n", enfile_port, strerror(errno));
    writec(out, 'X');
    _exit(1);
  }
  // Wait for the host's connection to queue (the test connects to the published port).
  struct pollfd p = { s, POLLIN, 0 };
  int pending = poll(&p, 1, 30000) == 1;
  writec(out, pending ? 'P' : 'N');
  if (readc(in, 60000) != 'A') _exit(1);
  // The file table is full: accept() cannot make the new socket's file.
  alarm(5);
  errno = 0;
  long r = accept(s, NULL, NULL);
  int e1 = errno;
  rec(OP_ENFILE_ACCEPT, r, e1);
  if (r >= 0) close((int)r);
  errno = 0;
  long r2 = accept4(s, NULL, NULL, SOCK_NONBLOCK);
  int e2 = errno;
  rec(OP_ENFILE_ACCEPT, r2, e2);
  if (r2 >= 0) close((int)r2);
  // Still readable: the queued connection was not consumed.
  struct pollfd q = { s, POLLIN, 0 };
  int still = poll(&q, 1, 0);
  alarm(0);
  dprintf(out, "%c%ld %d %ld %d %d\n", 'D', r, r < 0 ? e1 : 0, r2, r2 < 0 ? e2 : 0, still);
  if (readc(in, 60000) != 'B') _exit(1);
  // File-max is back: the queued connection is accepted and answered.
  alarm(10);
  errno = 0;
  long c = accept(s, NULL, NULL);
  int e3 = errno;
  rec(OP_ENFILE_AFTER, c, e3);
  int answered = 0;
  if (c >= 0) {
    answered = send((int)c, "enfile-ok\n", 10, MSG_NOSIGNAL) == 10;
    recv((int)c, buf, 64, MSG_DONTWAIT);
    shutdown((int)c, SHUT_WR);
    msleep(100);
    close((int)c);
  }
  alarm(0);
  dprintf(out, "%c%ld %d %d\n", 'F', c, c < 0 ? e3 : 0, answered);
  close(s);
  _exit(0);
}

// A filler: opens /dev/null until ENFILE (and again whenever a file was freed) until
// the coordinator closes `stop`; reports on `out` once the table is full.
static void enfile_filler(int stop, int out) {
  struct rlimit rl = { 4096, 4096 };
  setrlimit(RLIMIT_NOFILE, &rl);  // as root, before the drop
  drop_privileges(drop_uid);
  child_setup(60);
  int n = 0, full = 0;
  for (;;) {
    while (n < 4000) {
      int fd = open("/dev/null", O_RDONLY);
      if (fd < 0) { if (errno == ENFILE && !full) { full = 1; dprintf(out, "%d\n", n); } break; }
      n++;
    }
    if (n >= 4000 && !full) { full = 1; dprintf(out, "%d\n", n); }
    struct pollfd p = { stop, POLLIN, 0 };
    if (poll(&p, 1, 2) != 0) break;  // the coordinator closed its end: POLLHUP
  }
  _exit(0);
}

static char enfile_text[256];

// Root: runs the scenario with the workers running (paused for the exact part).
static void enfile_scenario(void) {
  slot = MAXW;
  const char *fm = "/proc/sys/fs/file-max";
  long orig = read_long(fm);
  if (orig < 0) { snprintf(enfile_text, sizeof enfile_text, "skipped (cannot read %s)", fm); return; }
  int to_l[2], from_l[2];
  if (pipe(to_l) < 0 || pipe(from_l) < 0) { snprintf(enfile_text, sizeof enfile_text, "skipped (pipe: %s)", strerror(errno)); return; }
  pid_t lp = fork();
  if (lp == 0) { close(to_l[1]); close(from_l[0]); enfile_listener(to_l[0], from_l[1]); }
  close(to_l[0]);
  close(from_l[1]);
  int c = readc(from_l[0], 40000);
  if (c != 'P' && c != 'N') {
    snprintf(enfile_text, sizeof enfile_text, "failed (the listener did not start: %d)", c);
    kill(lp, SIGKILL);
    waitpid(lp, NULL, 0);
    return;
  }
  int pending = c == 'P';

  // Lower file-max to just above what is allocated now, with the workers stopped.
  stop_workers(SIGSTOP);
  msleep(200);
  // file-nr is the approximate (per-CPU batched) count, off by up to 32 per CPU: the
  // fillers open files until ENFILE whatever the margin.
  long before = nr_files();
  long lowered = (before > 64 ? before : 64) + 64;
  __atomic_store_n(&sh->filemax_orig, orig, __ATOMIC_RELEASE);
  if (write_long(fm, lowered) < 0) {
    snprintf(enfile_text, sizeof enfile_text, "skipped (cannot write %s: %s)", fm, strerror(errno));
    __atomic_store_n(&sh->filemax_orig, -1L, __ATOMIC_RELEASE);
    stop_workers(SIGCONT);
    kill(lp, SIGKILL);
    waitpid(lp, NULL, 0);
    return;
  }
  int stop[2], rep[2];
  pid_t fillers[4];
  int nf = 0, filled = 0;
  if (pipe(stop) == 0 && pipe(rep) == 0) {
    for (nf = 0; nf < 2; nf++) {
      fillers[nf] = fork();
      if (fillers[nf] == 0) { close(stop[1]); close(rep[0]); enfile_filler(stop[0], rep[1]); }
      if (fillers[nf] < 0) break;
    }
    close(stop[0]);
    close(rep[1]);
    char line[32];
    for (int k = 0; k < nf; k++) {
      int m = 0, ch;
      while (m < 31 && (ch = readc(rep[0], 10000)) >= 0 && ch != '\n') line[m++] = (char)ch;
      line[m] = 0;
      filled += atoi(line);
    }
  }
  long during = nr_files();
  writec(to_l[1], 'A');
  char res[64] = "";
  {
    int m = 0, ch;
    while (m < 63 && (ch = readc(from_l[0], 10000)) >= 0 && ch != '\n') res[m++] = (char)ch;
    res[m] = 0;
  }
  // The workers run against the full table for a moment.
  stop_workers(SIGCONT);
  msleep(1500);
  close(stop[1]);
  for (int k = 0; k < nf; k++) waitpid(fillers[k], NULL, 0);
  close(rep[0]);
  int restored = write_long(fm, orig) == 0 && read_long(fm) == orig;
  if (restored) __atomic_store_n(&sh->filemax_orig, -1L, __ATOMIC_RELEASE);
  writec(to_l[1], 'B');
  char res2[64] = "";
  {
    int m = 0, ch;
    while (m < 63 && (ch = readc(from_l[0], 15000)) >= 0 && ch != '\n') res2[m++] = (char)ch;
    res2[m] = 0;
  }
  close(to_l[1]);
  close(from_l[0]);
  if (reap(lp, 3000, OP_ENFILE_AFTER) < 0) { /* counted as stuck */ }

  long r1 = 0, r2 = 0, c3 = 0;
  int e1 = 0, e2 = 0, still = 0, e3 = 0, answered = 0;
  int ok1 = res[0] == 'D' && sscanf(res + 1, "%ld %d %ld %d %d", &r1, &e1, &r2, &e2, &still) == 5;
  int ok2 = res2[0] == 'F' && sscanf(res2 + 1, "%ld %d %d", &c3, &e3, &answered) == 3;
  snprintf(enfile_text, sizeof enfile_text,
           "file-max %ld -> %ld (files %ld, full at %ld, fillers %d fds) -> %s; host connection %s; "
           "accept while full: %s, nonblocking: %s, still readable: %s; after restore: accept %s, answered %s",
           orig, lowered, before, during, filled, restored ? "restored" : "NOT RESTORED",
           pending ? "queued" : "not seen",
           ok1 ? (r1 >= 0 ? "ok" : errname(e1)) : "?", ok1 ? (r2 >= 0 ? "ok" : errname(e2)) : "?",
           ok1 ? (still ? "yes" : "no") : "?",
           ok2 ? (c3 >= 0 ? "ok" : errname(e3)) : "?", ok2 ? (answered ? "yes" : "no") : "?");
}

// ---- supervisor --------------------------------------------------------------------

static void show_stack(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/task", pid);
  DIR *d = opendir(path);
  if (d == NULL) return;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.') continue;
    char p[320], line[256];
    snprintf(p, sizeof p, "/proc/%d/task/%s/stat", pid, de->d_name);
    FILE *f = fopen(p, "r");
    if (f != NULL) { if (fgets(line, sizeof line, f)) fprintf(stderr, "tsibox-stress: stuck task %s: %s", de->d_name, line); fclose(f); }
    snprintf(p, sizeof p, "/proc/%d/task/%s/stack", pid, de->d_name);
    f = fopen(p, "r");
    if (f != NULL) { while (fgets(line, sizeof line, f)) fprintf(stderr, "tsibox-stress:   %s", line); fclose(f); }
  }
  closedir(d);
}

static void restore_filemax(void) {
  long orig = __atomic_load_n(&sh->filemax_orig, __ATOMIC_ACQUIRE);
  if (orig >= 0 && write_long("/proc/sys/fs/file-max", orig) == 0) sh->filemax_orig = -1;
}

static int usage(void) {
  fprintf(stderr, "usage: tsibox-stress [-t SECONDS] [-p WORKERS] [-s SEED] [-l PORT,...] [-E PORT] [-u UID] "
                  "v4=ADDR,echo=P[,refused=P,slow=P,reset=P,close=P,idle=P,udp=P,udpclosed=P] [v6=ADDR,...]\n");
  return 2;
}

int main(int argc, char **argv) {
  int seconds = 30, nworkers = 4;
  uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
  int opt;
  while ((opt = getopt(argc, argv, "t:p:s:l:E:u:")) != -1) {
    switch (opt) {
    case 't': seconds = atoi(optarg); break;
    case 'p': nworkers = atoi(optarg); break;
    case 's': seed = strtoull(optarg, NULL, 0); break;
    case 'l':
      for (char *tok = strtok(optarg, ","); tok != NULL && nlisten_ports < 16; tok = strtok(NULL, ",")) {
        int p = atoi(tok);
        if (p <= 0 || p > 65535) return usage();
        listen_ports[nlisten_ports++] = p;
      }
      break;
    case 'E': enfile_port = atoi(optarg); break;
    case 'u': drop_uid = (uid_t)atoi(optarg); break;
    default: return usage();
    }
  }
  if (seconds <= 0 || nworkers <= 0 || nworkers > MAXW || enfile_port < 0 || enfile_port > 65535) return usage();
  for (int i = optind; i < argc; i++) {
    if (ntargets == 2 || parse_target(argv[i], &targets[ntargets]) < 0) return usage();
    ntargets++;
  }
  if (ntargets == 0) return usage();

  sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED) { perror("tsibox-stress: mmap"); return 1; }
  sh->filemax_orig = -1;
  slot = MAXW;
  rng_state = seed ? seed : 1;
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  int root = getuid() == 0;
  printf("tsibox-stress: start seconds=%d workers=%d seed=%llu uid=%u%s targets=%d listen_ports=%d enfile_port=%d\n",
         seconds, nworkers, (unsigned long long)seed, (unsigned)(root ? drop_uid : getuid()), root ? "" : " (not root: no privilege drop)",
         ntargets, nlisten_ports, enfile_port);
  // Last resort: the supervisor itself never outlives this.
  alarm((unsigned)seconds + WATCHDOG_GRACE + 60);

  double start = now(), deadline = start + seconds;
  sh->nworkers = 0;
  for (int w = 0; w < nworkers; w++) {
    pid_t pid = fork();
    if (pid < 0) { perror("tsibox-stress: fork"); break; }
    if (pid == 0) worker(w, deadline, seed);
    setpgid(pid, pid);
    sh->workers[w] = pid;
    sh->nworkers = w + 1;
  }

  int failures = 0;
  if (enfile_port > 0 && root) {
    // A third into the run (at most 10 s in), with the workers busy.
    double at = start + (seconds / 3.0 < 10 ? seconds / 3.0 : 10);
    while (now() < at) msleep(100);
    enfile_scenario();
    restore_filemax();
  } else if (enfile_port > 0) {
    snprintf(enfile_text, sizeof enfile_text, "skipped (not root)");
  } else {
    snprintf(enfile_text, sizeof enfile_text, "skipped (no -E PORT)");
  }

  // Reap the workers; past the deadline plus grace, show where they are and kill them.
  int left = sh->nworkers;
  int killed = 0;
  double hard = deadline + WATCHDOG_GRACE;
  while (left > 0) {
    int st;
    pid_t pid = waitpid(-1, &st, WNOHANG);
    if (pid > 0) {
      for (int w = 0; w < sh->nworkers; w++) {
        if (sh->workers[w] != pid) continue;
        left--;
        if (WIFSIGNALED(st) && !killed) { fprintf(stderr, "tsibox-stress: worker %d killed by signal %d\n", w, WTERMSIG(st)); failures++; }
        else if (WIFEXITED(st) && WEXITSTATUS(st) != 0) { fprintf(stderr, "tsibox-stress: worker %d exited %d\n", w, WEXITSTATUS(st)); failures++; }
      }
      continue;
    }
    if (now() > hard && !killed) {
      fprintf(stderr, "tsibox-stress: watchdog: %d worker(s) still running %d s after the deadline\n", left, WATCHDOG_GRACE);
      for (int w = 0; w < sh->nworkers; w++) if (kill(sh->workers[w], 0) == 0) show_stack(sh->workers[w]);
      stop_workers(SIGKILL);
      killed = 1;
      failures++;
      hard = now() + 10;
    } else if (now() > hard && killed) {
      fprintf(stderr, "tsibox-stress: watchdog: %d worker(s) survive SIGKILL (stuck in the kernel)\n", left);
      break;
    }
    msleep(50);
  }
  stop_workers(SIGKILL);  // whatever the workers' children left behind
  while (waitpid(-1, NULL, WNOHANG) > 0) {}
  restore_filemax();

  // Per-operation lines and the summary.
  unsigned long tot[NOPS];
  for (int k = 0; k < NOPS; k++) {
    unsigned long b[NBUCKET] = { 0 };
    tot[k] = 0;
    for (int w = 0; w < MAXW + 2; w++) for (int x = 0; x < NBUCKET; x++) b[x] += sh->counts[w][k][x];
    char line[2048];
    int m = 0;
    for (int x = 0; x < NBUCKET; x++) tot[k] += b[x];
    m += snprintf(line + m, sizeof line - (size_t)m, "tsibox-stress: op %s total=%lu ok=%lu", op_name[k], tot[k], b[0]);
    for (int x = 1; x < NBUCKET && m < (int)sizeof line - 40; x++) {
      if (b[x] == 0) continue;
      const char *n = x == B_BIG ? "EBIG" : x == B_STUCK ? "STUCK" : errname(x);
      m += snprintf(line + m, sizeof line - (size_t)m, " %s=%lu", n, b[x]);
    }
    puts(line);
  }
  printf("tsibox-stress: enfile: %s\n", enfile_text);
  char sum[2048];
  int m = snprintf(sum, sizeof sum, "tsibox-stress: summary seconds=%.0f workers=%d seed=%llu", now() - start, sh->nworkers, (unsigned long long)seed);
  for (int k = 0; k < NOPS; k++) m += snprintf(sum + m, sizeof sum - (size_t)m, " %s=%lu", op_name[k], tot[k]);
  snprintf(sum + m, sizeof sum - (size_t)m, " impossible=%lu stuck=%lu failures=%d", sh->impossible, sh->stuck, failures);
  puts(sum);
  return sh->impossible > 0 || failures > 0 ? 1 : 0;
}
