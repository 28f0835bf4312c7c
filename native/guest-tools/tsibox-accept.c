// tsibox-accept: the guest side of the TSI accept tests. Listens on 0.0.0.0:PORT (a
// published port, so host clients arrive through TSI), accepts N connections under the
// conditions asked for, answers each with "conn I\n" and closes it.
//
//   tsibox-accept [-6] [-n] [-s USEC] -c N PORT
//     -6       listen on [::]:PORT
//     -n       O_NONBLOCK listener driven by poll(): each accept() call is timed, and a
//              call that waits is the fault this tool looks for
//     -s USEC  a SIGALRM every USEC microseconds (setitimer; the handler is installed
//              without SA_RESTART, so blocking calls see EINTR)
//     -c N     connections to accept (1..100000)
//
// stdout: "ready" once listen() returned, then at the end one line
//   "accepted N eintr E eagain A slowest_ms X"
// Exit status: 0 when N connections were accepted and answered, 1 on any other error
// (printed on stderr), 2 on a usage error. Bounded: gives up after 120 s.
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static void on_alarm(int sig) { (void)sig; }

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static int usage(void) {
  fprintf(stderr, "usage: tsibox-accept [-6] [-n] [-s USEC] -c N PORT\n");
  return 2;
}

// write() all of buf, retrying after signals.
static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

int main(int argc, char **argv) {
  int v6 = 0, nonblock = 0, opt;
  long usec = 0, count = 0;
  while ((opt = getopt(argc, argv, "6ns:c:")) != -1) {
    switch (opt) {
      case '6': v6 = 1; break;
      case 'n': nonblock = 1; break;
      case 's': usec = strtol(optarg, NULL, 10); break;
      case 'c': count = strtol(optarg, NULL, 10); break;
      default: return usage();
    }
  }
  if (optind != argc - 1 || count < 1 || count > 100000 || usec < 0 || usec > 1000000) return usage();
  long port = strtol(argv[optind], NULL, 10);
  if (port < 1 || port > 65535) return usage();

  int s = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
  if (s < 0) { perror("tsibox-accept: socket"); return 1; }
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t len;
  if (v6) {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((unsigned short)port);
    len = sizeof *a;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((unsigned short)port);
    len = sizeof *a;
  }
  if (bind(s, (struct sockaddr *)&ss, len) < 0 || listen(s, 128) < 0) { perror("tsibox-accept: bind/listen"); return 1; }
  // Blocking accepts wake at least every second, so the deadline below holds.
  struct timeval tv = { .tv_sec = 1 };
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  printf("ready\n");
  fflush(stdout);

  if (usec > 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;  // no SA_RESTART
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = { .it_interval = { 0, usec }, .it_value = { 0, usec } };
    setitimer(ITIMER_REAL, &it, NULL);
  }

  long accepted = 0, eintr = 0, eagain = 0, slowest = 0;
  long deadline = now_ms() + 120000;
  while (accepted < count) {
    if (now_ms() > deadline) { fprintf(stderr, "tsibox-accept: 120 s passed with %ld of %ld accepted\n", accepted, count); return 1; }
    if (nonblock) {
      struct pollfd p = { .fd = s, .events = POLLIN };
      int r = poll(&p, 1, 1000);
      if (r < 0 && errno == EINTR) { eintr++; continue; }
      if (r < 0) { perror("tsibox-accept: poll"); return 1; }
      if (r == 0) continue;
    }
    long t0 = now_ms();
    int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
    long took = now_ms() - t0;
    if (nonblock && took > slowest) slowest = took;
    if (c < 0) {
      if (errno == EINTR) { eintr++; continue; }
      if (errno == EAGAIN || errno == EWOULDBLOCK) { eagain++; continue; }
      perror("tsibox-accept: accept");
      return 1;
    }
    char line[32];
    int n = snprintf(line, sizeof line, "conn %ld\n", accepted);
    if (write_all(c, line, (size_t)n) < 0) { perror("tsibox-accept: write"); return 1; }
    close(c);
    accepted++;
  }
  struct itimerval off = { { 0, 0 }, { 0, 0 } };
  setitimer(ITIMER_REAL, &off, NULL);
  printf("accepted %ld eintr %ld eagain %ld slowest_ms %ld\n", accepted, eintr, eagain, slowest);
  return 0;
}
