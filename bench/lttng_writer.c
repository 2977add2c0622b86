/* The LTTng-UST side of floor_bench: fires the relayfs_bench:record64 tracepoint (a 64-byte
 * payload) RECORDS times from one thread pinned to CPU 0, and prints the cost per record.
 * floor_bench runs it after it has started a session daemon, a session and the event, so the
 * tracer registers with that daemon when this process starts (LTTNG_UST_REGISTER_TIMEOUT) and
 * the tracepoint is live from main() on; it refuses to time a disabled tracepoint, which would
 * cost a load and a branch instead of a trace.
 *
 * Before the clock starts it fires WARMUP events (default 0), as floor_bench's relay_write side
 * writes as many before its own: the first lap of a fresh channel's buffers runs through cache
 * lines that are in no cache yet (the kernel zeroed the pages), a cost of the channel's setup, not
 * of a record, which would weigh on the cheaper writer's short run far more.
 *
 * Usage: lttng_writer RECORDS [WARMUP]   prints "ns_per_record X"; exit 3 if the tracepoint is
 *                                        disabled */
#define _GNU_SOURCE
#define LTTNG_UST_TRACEPOINT_CREATE_PROBES
#define LTTNG_UST_TRACEPOINT_DEFINE
#include "lttng_tp.h"

#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char** argv) {
  if (argc != 2 && argc != 3) {
    fprintf(stderr, "usage: %s RECORDS [WARMUP]\n", argv[0]);
    return 2;
  }
  const uint64_t records = strtoull(argv[1], NULL, 10);
  const uint64_t warmup = argc == 3 ? strtoull(argv[2], NULL, 10) : 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(0, &set);
  sched_setaffinity(0, sizeof set, &set);
  if (!lttng_ust_tracepoint_enabled(relayfs_bench, record64)) {
    fprintf(stderr, "lttng_writer: relayfs_bench:record64 is not enabled (no session?)\n");
    return 3;
  }
  char payload[64];
  memset(payload, 'x', sizeof payload);
  /* The same 64 bytes every time, as floor_bench's relay_write records: stamping each one (an
   * 8-byte store just before the payload's 16-byte loads) stalls store forwarding. The asm
   * makes the payload be loaded again for each event all the same. */
  for (uint64_t i = 0; i < warmup; ++i) {
    lttng_ust_tracepoint(relayfs_bench, record64, payload);
    __asm__ __volatile__("" : : "r"(payload) : "memory");
  }
  const double t0 = now_ns();
  for (uint64_t i = 0; i < records; ++i) {
    lttng_ust_tracepoint(relayfs_bench, record64, payload);
    __asm__ __volatile__("" : : "r"(payload) : "memory");
  }
  const double elapsed = now_ns() - t0;
  printf("ns_per_record %.3f\n", elapsed / (double)records);
  return 0;
}
