/*
 * flight_recorder: overwrite ("flight recorder") mode. The program logs events all the time
 * into a small channel that keeps only the newest ones: when a buffer is full the oldest
 * sub-buffer is overwritten. Nobody reads until something goes wrong; then `cat DIR/BASE0`
 * (or any read) returns the newest events the buffer holds.
 *
 *   flight_recorder DIR BASE [EVENTS]
 *
 * Writes EVENTS lines "event N" (default: until SIGINT/SIGTERM), then stays alive with the
 * channel open until signalled, so the record can be read on demand. On exit it prints how many
 * events were written and how many the buffer had to drop (lost_wrap) to stderr.
 * Build: cc flight_recorder.c $(pkg-config --cflags --libs relayfs)
 */
#include <errno.h>
#include <relayfs/relay.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

static int global_readable(const char *filename, const char *parent, mode_t *mode,
                           struct rchan_buf *buf, int *is_global) {
  (void)filename, (void)parent, (void)buf;
  *mode = 0444;
  *is_global = 1;
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3 || argc > 4) {
    fprintf(stderr, "usage: %s DIR BASE [EVENTS]\n", argv[0]);
    return 2;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  const struct rchan_callbacks cb = {.create_buf_file = global_readable};
  /* RELAY_OVERWRITE is the spec's subbuf_start that always returns 1. */
  const struct relay_options opts = {RELAY_OVERWRITE, 0, NULL};
  struct rchan *chan = relay_open_opts(argv[2], argv[1], 4096, 4, &cb, NULL, &opts);
  if (!chan) {
    fprintf(stderr, "flight_recorder: relay_open %s/%s: %s\n", argv[1], argv[2], strerror(errno));
    return 1;
  }
  const long long events = argc == 4 ? atoll(argv[3]) : -1;
  long long written = 0;
  for (long long i = 0; !stop && (events < 0 || i < events); ++i)
    if (relay_printf(chan, "event %lld\n", i) > 0) ++written;
  printf("ready\n"); /* the record is complete: read it whenever you like */
  fflush(stdout);
  while (!stop) pause();
  struct relay_stats st;
  relay_buf_stats(chan->buf[0], &st);
  fprintf(stderr, "flight_recorder: %lld events written, %llu dropped (lost_wrap)\n", written,
          st.lost_wrap);
  return relay_close(chan) == 0 ? 0 : 1;
}
