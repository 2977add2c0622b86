/*
 * An mmap consumer, written the way the kernel relay spec's mmap() users write theirs: map the
 * whole buffer, wait in poll() for sub-buffer boundaries, copy each ready sub-buffer up to its
 * padding, and tell relay how many sub-buffers were consumed.
 *
 *   relayfs-mmap-reader FILE [OUTPUT]
 *
 * Copies the data of one relay file's buffer to OUTPUT (default: standard output) until the
 * channel is closed, then prints a summary to standard error. Only whole sub-buffers are taken;
 * a producer should relay_flush() before relay_close(), as the spec says, so the last one counts.
 */
#include <errno.h>
#include <poll.h>
#include <relayfs/relay.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
    printf("usage: %s FILE [OUTPUT]\n"
           "Copies the whole sub-buffers of one relay file's buffer, mapped read-only, to OUTPUT\n"
           "(default: standard output) until the channel closes. See relay(7).\n",
           argv[0]);
    return 0;
  }
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s FILE [OUTPUT]\n", argv[0]);
    return 2;
  }
  struct relay_reader *r = relay_reader_open(argv[1]);
  if (!r) {
    fprintf(stderr, "%s: %s: %s\n", argv[0], argv[1], strerror(errno));
    return 1;
  }
  FILE *out = argc == 3 ? fopen(argv[2], "w") : stdout;
  if (!out) {
    fprintf(stderr, "%s: %s: %s\n", argv[0], argv[2], strerror(errno));
    relay_reader_close(r);
    return 1;
  }
  unsigned long long subbufs = 0, bytes = 0, lapped = 0;
  int status = 0;
  for (;;) {
    struct relay_subbuf sb;
    int rc;
    while ((rc = relay_reader_next(r, &sb)) == 1) {
      if (fwrite(sb.data, 1, sb.length, out) != sb.length) {
        fprintf(stderr, "%s: write: %s\n", argv[0], strerror(errno));
        status = 1;
        goto done;
      }
      /* Overwrite mode: the writer may have reused the sub-buffer while we copied it. */
      if (!relay_reader_valid(r, &sb)) ++lapped;
      ++subbufs;
      bytes += sb.length;
      relay_reader_consumed(r, 1);
    }
    if (rc < 0) {
      fprintf(stderr, "%s: %s: %s\n", argv[0], argv[1], strerror(errno));
      status = 1;
      break;
    }
    struct pollfd p = {.fd = r->fd, .events = POLLIN};
    if (poll(&p, 1, -1) < 0 && errno != EINTR) {
      status = 1;
      break;
    }
    if ((p.revents & (POLLERR | POLLHUP)) && !(p.revents & POLLIN)) break; /* closed */
  }
done:
  fflush(out);
  fprintf(stderr, "%s: %llu sub-buffers, %llu bytes, %llu overwritten while copied\n", argv[0],
          subbufs, bytes, lapped);
  if (out != stdout) fclose(out);
  relay_reader_close(r);
  return status;
}
