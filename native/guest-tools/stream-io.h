// Shared by the static guest tools: error reporting and the stdin/stdout <-> socket
// copy loop. Include after defining `static const char *prog` (the tool's name).
#ifndef TSIBOX_STREAM_IO_H
#define TSIBOX_STREAM_IO_H

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int fail(const char *what) {
  fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
  return 1;
}

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/*
 * Copies stdin -> sock and sock -> stdout until both directions have ended. When
 * stdin ends, the sending side is shut down; `enotconn_ok` accepts ENOTCONN there
 * (a vsock peer that already went away).
 */
static int shovel(int sock, int enotconn_ok) {
  static char buf[65536];
  int in_open = 1, sock_open = 1;
  while (in_open || sock_open) {
    struct pollfd p[2] = {
      { .fd = in_open ? 0 : -1, .events = POLLIN },
      { .fd = sock_open ? sock : -1, .events = POLLIN },
    };
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return fail("poll");
    }
    if (in_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = read(0, buf, sizeof buf);
      if (n < 0 && errno != EINTR) return fail("read stdin");
      if (n == 0) {
        in_open = 0;
        if (shutdown(sock, SHUT_WR) < 0 && !(enotconn_ok && errno == ENOTCONN)) return fail("shutdown");
      } else if (n > 0 && write_all(sock, buf, (size_t)n) < 0) {
        return fail("send");
      }
    }
    if (sock_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
      ssize_t n = read(sock, buf, sizeof buf);
      if (n < 0 && errno != EINTR) return fail("recv");
      if (n == 0) sock_open = 0;
      else if (n > 0 && write_all(1, buf, (size_t)n) < 0) return fail("write stdout");
    }
  }
  return 0;
}

#endif
