// tsibox-vsock: a tiny static guest tool that joins stdin/stdout to one AF_VSOCK
// stream connection (a guest-side netcat for vsock).
//
//   tsibox-vsock connect CID PORT   connect to CID:PORT (the host is CID 2)
//   tsibox-vsock listen PORT        accept one connection on guest port PORT
//   tsibox-vsock hold CID PORT N    open up to N connections to CID:PORT and hold them:
//                                   prints "held K" (and the errno that stopped it
//                                   early, if any) once, then closes them all when
//                                   stdin ends (for tests that fill the host's table)
//
// Data from stdin goes to the socket; when stdin ends the sending side is shut down
// (the peer sees end of stream) and the tool keeps reading. Data from the socket goes
// to stdout until the peer ends its side. Exit status: 0 when both directions ended
// cleanly, 1 on a socket or I/O error (message on stderr), 2 on a usage error.
//
// Built by `make -C native guest-tools` with gcc -static -Os; packed into an extra
// initramfs archive at /usr/bin/tsibox-vsock by src/guest/tools.ts.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static const char *prog = "tsibox-vsock";
#include "stream-io.h"

static int usage(void) {
  fprintf(stderr, "usage: %s connect CID PORT | %s listen PORT | %s hold CID PORT N\n", prog, prog, prog);
  return 2;
}

static int parse_u32(const char *s, unsigned int *out) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 0);
  if (errno != 0 || end == s || *end != '\0' || v > 0xffffffffUL) return -1;
  *out = (unsigned int)v;
  return 0;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) return usage();
  struct sockaddr_vm addr;
  memset(&addr, 0, sizeof addr);
  addr.svm_family = AF_VSOCK;

  if (strcmp(argv[1], "connect") == 0) {
    unsigned int cid, port;
    if (argc != 4 || parse_u32(argv[2], &cid) < 0 || parse_u32(argv[3], &port) < 0) return usage();
    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return fail("socket(AF_VSOCK)");
    addr.svm_cid = cid;
    addr.svm_port = port;
    if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("connect");
    int rc = shovel(s, 1);
    close(s);
    return rc;
  }

  if (strcmp(argv[1], "hold") == 0) {
    unsigned int cid, port, n;
    if (argc != 5 || parse_u32(argv[2], &cid) < 0 || parse_u32(argv[3], &port) < 0 ||
        parse_u32(argv[4], &n) < 0 || n < 1 || n > 100000) return usage();
    int *fds = calloc(n, sizeof *fds);
    if (!fds) return fail("calloc");
    unsigned int held = 0;
    int err = 0;
    addr.svm_cid = cid;
    addr.svm_port = port;
    while (held < n) {
      int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (s < 0) { err = errno; break; }
      if (connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) { err = errno; close(s); break; }
      fds[held++] = s;
    }
    if (err) printf("held %u (stopped by %s)\n", held, strerror(err));
    else printf("held %u\n", held);
    fflush(stdout);
    char buf[256];
    while (read(0, buf, sizeof buf) > 0) {}
    for (unsigned int i = 0; i < held; i++) close(fds[i]);
    free(fds);
    return 0;
  }

  if (strcmp(argv[1], "listen") == 0) {
    unsigned int port;
    if (argc != 3 || parse_u32(argv[2], &port) < 0) return usage();
    int l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) return fail("socket(AF_VSOCK)");
    addr.svm_cid = VMADDR_CID_ANY;
    addr.svm_port = port;
    if (bind(l, (struct sockaddr *)&addr, sizeof addr) < 0) return fail("bind");
    if (listen(l, 1) < 0) return fail("listen");
    int s;
    do s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    while (s < 0 && errno == EINTR);
    if (s < 0) return fail("accept");
    close(l);
    int rc = shovel(s, 1);
    close(s);
    return rc;
  }

  return usage();
}
