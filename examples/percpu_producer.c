/*
 * percpu_producer: the classic relay client. One writer thread per CPU, each pinned to its CPU,
 * writes fixed-size binary records with relay_write() into the channel's buffer of that CPU, as a
 * kernel client does from its CPU. Reading BASE0 .. BASEn-1 gives each CPU's records in order.
 *
 *   percpu_producer DIR BASE RECORDS_PER_CPU
 *
 * Build: cc percpu_producer.c $(pkg-config --cflags --libs relayfs) -pthread
 * Prints, per CPU, the records written and the records lost (relay_buf_stats), then closes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <relayfs/relay.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct record {
  uint32_t cpu;     /* the CPU the writer is pinned to */
  uint32_t magic;   /* 0x52454c41, "RELA" */
  uint64_t seq;     /* 0, 1, 2, ... per CPU */
  char text[16];    /* "cpu N seq M" */
};

struct writer {
  struct rchan *chan;
  unsigned cpu;
  unsigned long long count, written, failed;
  pthread_t thread;
};

static int readable_by_all(const char *filename, const char *parent, mode_t *mode,
                           struct rchan_buf *buf, int *is_global) {
  (void)filename, (void)parent, (void)buf, (void)is_global;
  *mode = 0444;
  return 0;
}

static void *write_records(void *arg) {
  struct writer *w = arg;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(w->cpu, &set);
  /* Pinned, every record lands in buffer `cpu`: relay_write picks the buffer of the CPU it runs on. */
  if (pthread_setaffinity_np(pthread_self(), sizeof set, &set) != 0) return NULL;
  for (unsigned long long i = 0; i < w->count; ++i) {
    struct record r = {w->cpu, 0x52454c41, i, {0}};
    snprintf(r.text, sizeof r.text, "cpu %u seq %llu", w->cpu, i % 1000);
    if (relay_write(w->chan, &r, sizeof r) == 0)
      ++w->written;
    else
      ++w->failed; /* the buffer was full: the daemon's lost_full says so too */
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s DIR BASE RECORDS_PER_CPU\n", argv[0]);
    return 2;
  }
  const struct rchan_callbacks cb = {.create_buf_file = readable_by_all};
  /* Blocking: a writer that finds its buffer full waits for the reader instead of dropping. */
  const struct relay_options opts = {RELAY_BLOCKING, 10000, NULL};
  struct rchan *chan = relay_open_opts(argv[2], argv[1], 16 * 1024, 8, &cb, NULL, &opts);
  if (!chan) {
    fprintf(stderr, "percpu_producer: relay_open %s/%s: %s\n", argv[1], argv[2], strerror(errno));
    return 1;
  }
  const unsigned long long count = strtoull(argv[3], NULL, 10);
  struct writer *w = calloc(chan->n_buffers, sizeof *w);
  if (!w) return 1;
  for (unsigned i = 0; i < chan->n_buffers; ++i) {
    w[i] = (struct writer){chan, i, count, 0, 0, 0};
    if (pthread_create(&w[i].thread, NULL, write_records, &w[i]) != 0) return 1;
  }
  int status = 0;
  for (unsigned i = 0; i < chan->n_buffers; ++i) {
    pthread_join(w[i].thread, NULL);
    struct relay_stats st;
    relay_buf_stats(chan->buf[i], &st);
    printf("cpu %u: written %llu failed %llu lost_full %llu\n", i, w[i].written, w[i].failed,
           st.lost_full);
    if (w[i].written + w[i].failed != count) status = 1; /* the CPU could not be pinned */
  }
  relay_flush(chan); /* the last partial sub-buffers, for readers that wait for whole ones */
  if (relay_close(chan) != 0) status = 1;
  free(w);
  return status;
}
