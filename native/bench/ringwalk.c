/* Baseline for `tsibox bench virtqueue`: the same split-ring walk the TypeScript
 * software driver and device do (post a chain, notify, validate and pop it, fill
 * the writable buffer for rng, push used, reap), as a tight C loop in one thread.
 * Usage: ringwalk <seconds> <batch> <bytes> <rng:0|1>; prints requests per second. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

#define QSIZE 256
#define RAM (4u << 20)

struct desc { uint64_t addr; uint32_t len; uint16_t flags, next; };

static uint8_t *ram;
static struct desc *dt;
static uint16_t *avail;   /* flags, idx, ring[QSIZE], used_event */
static uint32_t *used;    /* flags|idx, then {id,len} pairs */
static uint16_t last_avail, used_idx, drv_avail, drv_last_used;
static uint16_t free_list[QSIZE];
static int nfree;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Device side: validate like src/virtio/queue.ts, then complete the request. */
static int device_notify(int fill_random) {
  volatile uint16_t *vidx = &avail[1];
  for (;;) {
    uint16_t n = (uint16_t)(*vidx - last_avail);
    if (n == 0) return 0;
    if (n > QSIZE) return -1;
    uint16_t head = avail[2 + last_avail % QSIZE];
    if (head >= QSIZE) return -1;
    uint32_t written = 0, steps = 0;
    uint16_t i = head;
    for (;;) {
      if (++steps > QSIZE) return -1;
      struct desc d = dt[i];
      if (d.addr >= RAM || d.len > RAM - d.addr) return -1;
      if (d.flags & 2) {
        if (fill_random) getrandom(ram + d.addr, d.len, 0);
        written += d.len;
      }
      if (!(d.flags & 1)) break;
      if (d.next >= QSIZE) return -1;
      i = d.next;
    }
    last_avail++;
    uint32_t *elem = &used[1 + 2 * (used_idx % QSIZE)];
    elem[0] = head;
    elem[1] = written;
    used_idx++;
    __atomic_store_n((uint16_t *)used + 1, used_idx, __ATOMIC_RELEASE);
  }
}

int main(int argc, char **argv) {
  double seconds = argc > 1 ? atof(argv[1]) : 1.0;
  int batch = argc > 2 ? atoi(argv[2]) : 1;
  uint32_t bytes = argc > 3 ? (uint32_t)atoi(argv[3]) : 64;
  int fill_random = argc > 4 ? atoi(argv[4]) : 0;
  ram = calloc(1, RAM);
  dt = (struct desc *)(ram + 0x1000);
  avail = (uint16_t *)(ram + 0x2000);
  used = (uint32_t *)(ram + 0x3000);
  for (int k = 0; k < QSIZE; k++) free_list[nfree++] = (uint16_t)k;
  uint64_t requests = 0;
  double start = now(), end = start + seconds, t = start;
  while (t < end) {
    for (int r = 0; r < 1000; r++) {
      for (int b = 0; b < batch && nfree > 0; b++) {
        uint16_t d = free_list[--nfree];
        dt[d].addr = 0x10000 + (uint64_t)d * 4096;
        dt[d].len = bytes;
        dt[d].flags = 2;
        dt[d].next = 0;
        avail[2 + drv_avail % QSIZE] = d;
        drv_avail++;
        __atomic_store_n(&avail[1], drv_avail, __ATOMIC_RELEASE);
      }
      if (device_notify(fill_random) < 0) { fprintf(stderr, "ring error\n"); return 1; }
      uint16_t ui = __atomic_load_n((uint16_t *)used + 1, __ATOMIC_ACQUIRE);
      while (drv_last_used != ui) {
        free_list[nfree++] = (uint16_t)used[1 + 2 * (drv_last_used % QSIZE)];
        drv_last_used++;
        requests++;
      }
    }
    t = now();
  }
  printf("%.0f\n", requests / (t - start));
  return 0;
}
