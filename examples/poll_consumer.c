/*
 * poll_consumer: reads every buffer file of a channel with poll() and read(), the way a relay
 * reader waits for data, and copies what it reads to standard output. Each read() consumes what
 * it returns and never contains sub-buffer padding.
 *
 *   poll_consumer DIR BASE
 *
 * Opens DIR/BASE0, DIR/BASE1, ... (as many as exist), then loops: poll() for POLLIN on all of
 * them, read() each ready one. A read() of 0 bytes means the producer closed that buffer and
 * everything in it was read; the program ends when every buffer has ended.
 * Build: cc poll_consumer.c $(pkg-config --cflags --libs relayfs)
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_BUFFERS 1024

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s DIR BASE\n", argv[0]);
    return 2;
  }
  struct pollfd fds[MAX_BUFFERS];
  nfds_t n = 0;
  for (; n < MAX_BUFFERS; ++n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s%u", argv[1], argv[2], (unsigned)n);
    /* Non-blocking: poll() says when to read; a read() that finds nothing returns EAGAIN. */
    const int fd = open(path, O_RDONLY | O_NONBLOCK);
    if (fd < 0) {
      if (errno == ENOENT && n > 0) break;
      fprintf(stderr, "poll_consumer: %s: %s\n", path, strerror(errno));
      return 1;
    }
    fds[n] = (struct pollfd){fd, POLLIN, 0};
  }
  static char buf[1 << 20];
  nfds_t open_fds = n;
  while (open_fds > 0) {
    if (poll(fds, n, -1) < 0) {
      if (errno == EINTR) continue;
      perror("poll_consumer: poll");
      return 1;
    }
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        if (fwrite(buf, 1, (size_t)got, stdout) != (size_t)got) return 1;
      } else if (got == 0) { /* closed by the producer and drained */
        close(fds[i].fd);
        fds[i].fd = -1; /* poll() ignores negative descriptors */
        --open_fds;
      } else if (errno != EAGAIN) {
        fprintf(stderr, "poll_consumer: read: %s\n", strerror(errno));
        return 1;
      }
    }
  }
  return fflush(stdout) == 0 ? 0 : 1;
}
