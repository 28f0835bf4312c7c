// tsibox-tcp: a tiny static guest tool that joins stdin/stdout to one TCP connection
// (a guest-side netcat for TSI tests; busybox nc reports no connect errno).
//
//   tsibox-tcp [-v] ADDRESS PORT    connect (IPv4 or IPv6 literal), then shovel bytes
//   tsibox-tcp -l [-6] [-v] PORT     listen on 0.0.0.0:PORT ([::]:PORT with -6), accept one
//                                   connection, then shovel bytes (-v: its peer address)
//   tsibox-tcp -U PATH [-v]          AF_UNIX stream to PATH (-v: its peer path), same rules
//   tsibox-tcp -u -l [-6] [-v] PORT  UDP server: bind, print "ready", answer each datagram
//                                   with "echo:" + it to its source until one says "quit"
//   tsibox-tcp -u [-c] [-v] ADDRESS PORT
//                                   UDP: each read from stdin is one datagram sent with
//                                   sendto() (-c: connect() first, then send()); after
//                                   stdin ends, one reply per datagram is awaited (5 s
//                                   each) and written to stdout; -v prints each reply's
//                                   source ("from ADDR:PORT") and the local address
//
// Data from stdin goes to the socket; when stdin ends the sending side is shut down
// and the tool keeps reading until the peer ends its side. -v prints the socket's
// local and peer addresses (getsockname/getpeername) on stderr after connecting.
// Exit status: 0 when both directions ended cleanly; when connect() fails, its errno
// (ECONNREFUSED 111, EACCES 13, ETIMEDOUT 110, ENETUNREACH 101, ...); 1 on a later
// socket or I/O error; 2 on a usage error.
//
// Built by `make -C native guest-tools` with gcc -static -Os; packed into an extra
// initramfs archive at /usr/bin/tsibox-tcp by src/guest/tools.ts.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static const char *prog = "tsibox-tcp";
#include "stream-io.h"

static int usage(void) {
  fprintf(stderr, "usage: %s [-v] ADDRESS PORT | %s [-v] -U PATH | %s -l [-6] [-v] PORT | %s -u -l [-6] [-v] PORT | %s -u [-c] [-v] ADDRESS PORT\n", prog, prog, prog, prog, prog);
  return 2;
}

static void show(const char *what, const struct sockaddr_storage *ss) {
  char a[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &s->sin_addr, a, sizeof a);
    port = ntohs(s->sin_port);
    fprintf(stderr, "%s %s:%u\n", what, a, port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &s->sin6_addr, a, sizeof a);
    port = ntohs(s->sin6_port);
    fprintf(stderr, "%s [%s]:%u\n", what, a, port);
  } else {
    fprintf(stderr, "%s family %d\n", what, ss->ss_family);
  }
}

/* UDP mode; returns the exit status. */
static int udp(int family, const struct sockaddr *to, socklen_t tolen, int connected, int verbose) {
  static char buf[65536];
  int s = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return fail("socket");
  if (connected && connect(s, to, tolen) < 0) {
    int e = errno;
    fprintf(stderr, "%s: connect: %s\n", prog, strerror(e));
    return e > 0 && e < 256 ? e : 1;
  }
  int sent = 0;
  for (;;) {
    ssize_t n = read(0, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail("read stdin");
    if (n == 0) break;
    ssize_t w = connected ? send(s, buf, (size_t)n, 0) : sendto(s, buf, (size_t)n, 0, to, tolen);
    if (w < 0) {
      int e = errno;
      fprintf(stderr, "%s: send: %s\n", prog, strerror(e));
      return e > 0 && e < 256 ? e : 1;
    }
    sent++;
  }
  if (verbose) {
    struct sockaddr_storage a;
    socklen_t al = sizeof a;
    if (getsockname(s, (struct sockaddr *)&a, &al) == 0) show("local", &a);
  }
  for (int got = 0; got < sent; got++) {
    struct pollfd p = { .fd = s, .events = POLLIN };
    int r = poll(&p, 1, 5000);
    if (r < 0 && errno == EINTR) { got--; continue; }
    if (r == 0) {
      fprintf(stderr, "%s: no reply in 5 s\n", prog);
      return ETIMEDOUT;
    }
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    memset(&from, 0, sizeof from);
    ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
    if (n < 0) {
      int e = errno;
      fprintf(stderr, "%s: recv: %s\n", prog, strerror(e));
      return e > 0 && e < 256 ? e : 1;
    }
    if (verbose) show("from", &from);
    if (write_all(1, buf, (size_t)n) < 0) return fail("write stdout");
  }
  close(s);
  return 0;
}

/*
 * -u -l: a receive-first UDP server. Binds, tells stdout "ready", then answers each
 * datagram with "echo:" + the datagram to its source, until one says "quit" (answered
 * too) or 30 s pass without one. -v prints each source on stderr.
 */
static int udp_serve(const struct sockaddr_storage *la, socklen_t ll, int verbose) {
  int s = socket(la->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return fail("socket");
  if (bind(s, (const struct sockaddr *)la, ll) < 0) return fail("bind");
  printf("ready\n");
  fflush(stdout);
  static char buf[65536];
  for (;;) {
    struct pollfd p = { .fd = s, .events = POLLIN };
    int r = poll(&p, 1, 30000);
    if (r == 0) { fprintf(stderr, "%s: no datagram in 30 s\n", prog); return 1; }
    if (r < 0) { if (errno == EINTR) continue; return fail("poll"); }
    struct sockaddr_storage from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(s, buf + 5, sizeof buf - 5, 0, (struct sockaddr *)&from, &fl);
    if (n < 0) { if (errno == EINTR) continue; return fail("recvfrom"); }
    if (verbose) show("from", &from);
    memcpy(buf, "echo:", 5);
    if (sendto(s, buf, (size_t)n + 5, 0, (struct sockaddr *)&from, fl) < 0) return fail("sendto");
    if (n >= 4 && memcmp(buf + 5, "quit", 4) == 0) break;
  }
  close(s);
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  int verbose = 0, use_udp = 0, connected = 0, listening = 0, six = 0, i = 1;
  const char *unix_path = NULL;
  for (; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
    if (strcmp(argv[i], "-v") == 0) verbose = 1;
    else if (strcmp(argv[i], "-u") == 0) use_udp = 1;
    else if (strcmp(argv[i], "-c") == 0) connected = 1;
    else if (strcmp(argv[i], "-l") == 0) listening = 1;
    else if (strcmp(argv[i], "-6") == 0) six = 1;
    else if (strcmp(argv[i], "-U") == 0 && i + 1 < argc) unix_path = argv[++i];
    else return usage();
  }
  if (connected && !use_udp) return usage();
  if (listening) {
    char *e;
    unsigned long lport = i + 1 == argc ? strtoul(argv[i], &e, 10) : 0;
    if (i + 1 != argc || e == argv[i] || *e != '\0' || lport == 0 || lport > 65535) return usage();
    struct sockaddr_storage la;
    memset(&la, 0, sizeof la);
    socklen_t ll;
    if (six) {
      struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&la;
      a6->sin6_family = AF_INET6;
      a6->sin6_port = htons((unsigned short)lport);
      ll = sizeof *a6;
    } else {
      struct sockaddr_in *a4 = (struct sockaddr_in *)&la;
      a4->sin_family = AF_INET;
      a4->sin_port = htons((unsigned short)lport);
      ll = sizeof *a4;
    }
    if (use_udp) return udp_serve(&la, ll, verbose);
    int l = socket(la.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) return fail("socket");
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&la, ll) < 0) return fail("bind");
    if (listen(l, 4) < 0) return fail("listen");
    int c;
    do c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    while (c < 0 && errno == EINTR);
    if (c < 0) return fail("accept");
    close(l);
    if (verbose) {
      struct sockaddr_storage a;
      socklen_t al = sizeof a;
      if (getpeername(c, (struct sockaddr *)&a, &al) == 0) show("peer", &a);
      al = sizeof a;
      if (getsockname(c, (struct sockaddr *)&a, &al) == 0) show("local", &a);
    }
    int rc = shovel(c, 0);
    close(c);
    return rc;
  }
  if (unix_path != NULL) {
    // -U PATH: one AF_UNIX stream connection (a host socket through TSI when the
    // sandbox allows PATH), same exit statuses and shutdown rules.
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    if (argc != i || strlen(unix_path) >= sizeof un.sun_path) return usage();
    strcpy(un.sun_path, unix_path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return fail("socket");
    if (connect(s, (struct sockaddr *)&un, sizeof un) < 0) {
      int e = errno;
      fprintf(stderr, "%s: connect: %s\n", prog, strerror(e));
      return e > 0 && e < 256 ? e : 1;
    }
    if (verbose) {
      struct sockaddr_un p;
      socklen_t pl = sizeof p;
      if (getpeername(s, (struct sockaddr *)&p, &pl) == 0) fprintf(stderr, "peer %.*s\n", (int)(pl > sizeof p.sun_family ? pl - sizeof p.sun_family : 0), p.sun_path);
      // A protocol-level option a unix socket does not have: refused, never a crash.
      int one = 1;
      fprintf(stderr, "tcp-option %s\n", setsockopt(s, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one) < 0 ? strerror(errno) : "accepted");
    }
    int rc = shovel(s, 0);
    close(s);
    return rc;
  }
  if (argc - i != 2) return usage();
  char *end;
  unsigned long port = strtoul(argv[i + 1], &end, 10);
  if (end == argv[i + 1] || *end != '\0' || port > 65535) return usage();

  struct sockaddr_storage ss;
  socklen_t len;
  memset(&ss, 0, sizeof ss);
  struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
  if (inet_pton(AF_INET, argv[i], &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((unsigned short)port);
    len = sizeof *in4;
  } else if (inet_pton(AF_INET6, argv[i], &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((unsigned short)port);
    len = sizeof *in6;
  } else {
    return usage();
  }

  if (use_udp) return udp(ss.ss_family, (struct sockaddr *)&ss, len, connected, verbose);
  int s = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return fail("socket");
  if (connect(s, (struct sockaddr *)&ss, len) < 0) {
    int e = errno;
    fprintf(stderr, "%s: connect: %s\n", prog, strerror(e));
    return e > 0 && e < 256 ? e : 1;
  }
  if (verbose) {
    struct sockaddr_storage a;
    socklen_t al = sizeof a;
    if (getsockname(s, (struct sockaddr *)&a, &al) == 0) show("local", &a);
    al = sizeof a;
    if (getpeername(s, (struct sockaddr *)&a, &al) == 0) show("peer", &a);
  }
  int rc = shovel(s, 0);
  close(s);
  return rc;
}
