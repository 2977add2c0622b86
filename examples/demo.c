/*
 * relayfs-demo: a producer that writes one line of text per record into a relay channel, the
 * way a kernel client of relay would, so there is something to read with cat or tail -f.
 *
 *   relayfs-demo [-n BASE] [-r RECORDS_PER_SECOND] [-c COUNT] [DIR]
 *
 * DIR defaults to $RELAYFS_MOUNT. The channel's files are DIR/BASE0 .. DIR/BASEn-1 (one per CPU).
 * Runs until COUNT records are written (default: forever) or SIGINT/SIGTERM; then it flushes and
 * closes the channel, so a reader gets everything that was written.
 */
#include <errno.h>
#include <relayfs/relay.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

/* Readable by everyone: it is a demo (relay files default to 0400, as in the kernel). */
static int create_buf_file(const char *filename, const char *parent, mode_t *mode,
                           struct rchan_buf *buf, int *is_global) {
  (void)filename, (void)parent, (void)buf, (void)is_global;
  *mode = 0444;
  return 0;
}

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

int main(int argc, char** argv) {
  const char* base = "demo";
  double rate = 10;
  long long count = -1;
  int opt;
  if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    printf("usage: %s [-n BASE] [-r RECORDS_PER_SECOND] [-c COUNT] [DIR]\n"
           "Writes numbered lines of text into per-CPU channel BASE (default demo) in DIR\n"
           "(default $RELAYFS_MOUNT), 10 a second by default, until COUNT are written or a\n"
           "signal; then flushes and closes the channel. See relayfs-demo(1).\n",
           argv[0]);
    return 0;
  }
  while ((opt = getopt(argc, argv, "n:r:c:h")) != -1) {
    switch (opt) {
      case 'n':
        base = optarg;
        break;
      case 'r':
        rate = atof(optarg);
        break;
      case 'c':
        count = atoll(optarg);
        break;
      default:
        fprintf(stderr, "usage: %s [-n BASE] [-r RECORDS_PER_SECOND] [-c COUNT] [DIR]\n", argv[0]);
        return 2;
    }
  }
  const char* dir = optind < argc ? argv[optind] : NULL;
  const struct rchan_callbacks cb = {.create_buf_file = create_buf_file};
  struct rchan* chan = relay_open(base, dir, 64 * 1024, 8, &cb, NULL);
  if (!chan) {
    fprintf(stderr, "relayfs-demo: relay_open %s in %s: %s\n", base, dir ? dir : "$RELAYFS_MOUNT",
            strerror(errno));
    return 1;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  fprintf(stderr, "relayfs-demo: writing to %s/%s0..%s%u (all of them merged: %s) at %g records/s\n",
          dir ? dir : getenv("RELAYFS_MOUNT"), base, base, chan->n_buffers - 1, base, rate);
  const long gap_ns = rate > 0 ? (long)(1e9 / rate) : 0;
  long long lost = 0;
  for (long long i = 0; !stop && (count < 0 || i < count); ++i) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    /* One record per line. No flush needed: readers see the sub-buffer being written up to its
       last whole record. */
    if (relay_printf(chan, "record %lld at %lld.%09ld from pid %d\n", i, (long long)now.tv_sec,
                     now.tv_nsec, (int)getpid()) < 0)
      ++lost;
    if (gap_ns) {
      struct timespec t = {gap_ns / 1000000000L, gap_ns % 1000000000L};
      nanosleep(&t, NULL);
    }
  }
  relay_flush(chan);
  if (relay_close(chan) != 0) perror("relayfs-demo: relay_close");
  if (lost) fprintf(stderr, "relayfs-demo: %lld records dropped (buffer full)\n", lost);
  return 0;
}
