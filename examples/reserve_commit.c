/*
 * reserve_commit: a producer that builds each record in place. relay_reserve() hands out space
 * in the buffer; the record is filled there (no staging copy) and published with
 * relay_commit(). Readers never see a reserved record before its commit.
 *
 *   reserve_commit DIR BASE COUNT
 *
 * Each record is a line "event N: payload of L bytes ..." of variable length, so the output is
 * readable with cat. Build: cc reserve_commit.c $(pkg-config --cflags --libs relayfs)
 */
#include <errno.h>
#include <relayfs/relay.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int global_readable(const char *filename, const char *parent, mode_t *mode,
                           struct rchan_buf *buf, int *is_global) {
  (void)filename, (void)parent, (void)buf;
  *mode = 0444;
  *is_global = 1; /* one file, BASE0, whatever CPU writes: the lines stay in order */
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s DIR BASE COUNT\n", argv[0]);
    return 2;
  }
  const struct rchan_callbacks cb = {.create_buf_file = global_readable};
  const struct relay_options opts = {RELAY_BLOCKING, 10000, NULL};
  struct rchan *chan = relay_open_opts(argv[2], argv[1], 8192, 4, &cb, NULL, &opts);
  if (!chan) {
    fprintf(stderr, "reserve_commit: relay_open %s/%s: %s\n", argv[1], argv[2], strerror(errno));
    return 1;
  }
  const long count = atol(argv[3]);
  long failed = 0;
  for (long i = 0; i < count; ++i) {
    char head[64];
    const int pad = (int)(i % 40);
    const int n = snprintf(head, sizeof head, "event %ld: payload of %d bytes ", i, pad);
    const size_t len = (size_t)n + (size_t)pad + 1;
    char *slot = relay_reserve(chan, len);
    if (!slot) {
      ++failed; /* counted by the buffer too */
      continue;
    }
    memcpy(slot, head, (size_t)n);
    memset(slot + n, 'x', (size_t)pad);
    slot[len - 1] = '\n';
    relay_commit(chan, slot, len);
  }
  if (failed) fprintf(stderr, "reserve_commit: %ld reservations failed\n", failed);
  return relay_close(chan) == 0 && failed == 0 ? 0 : 1;
}
