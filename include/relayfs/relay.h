/*
 * relayfs producer library: the kernel relay interface (Documentation/filesystems/relay.txt),
 * for user-space programs. A channel has one buffer per possible CPU (or one global buffer);
 * each buffer is a file in a mounted relayfs tree, which readers read with ordinary tools.
 *
 * The names and semantics are the kernel's. Where user space needs something else, the comment
 * above the declaration says so, marked "relayfs:". In short:
 *  - parent is a directory path inside a mounted relayfs, not a dentry; NULL means the mount
 *    named by the RELAYFS_MOUNT environment variable;
 *  - functions that cannot fail in the kernel report errors here: NULL or -1 with errno set;
 *  - relay_reserve'd space is published with relay_commit (as in the 2005 relayfs), because a
 *    user-space writer can be preempted between reserving and filling a slot;
 *  - buf_mapped and buf_unmapped fire when a reader opens a buffer's file and when its last
 *    reader closes it, on a thread of the library's; filp is always NULL.
 *
 * relay_write, relay_reserve and relay_commit make no system call: the buffers are shared memory.
 * Link with `pkg-config --cflags --libs relayfs`.
 */
#ifndef RELAYFS_RELAY_H
#define RELAYFS_RELAY_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define RELAY_API __attribute__((visibility("default")))
#else
#define RELAY_API
#endif

struct rchan;

/* One channel buffer: the buffer of one CPU, or the global buffer. */
struct rchan_buf {
  struct rchan *chan; /* the channel it belongs to */
  unsigned int cpu;   /* its index: the CPU it serves (0 for a global buffer) */
  void *impl;         /* private */
};

/* A channel. */
struct rchan {
  void *private_data;     /* as given to relay_open */
  size_t subbuf_size;     /* sub-buffer size */
  size_t n_subbufs;       /* number of sub-buffers per buffer */
  unsigned int n_buffers; /* number of buffers: possible CPUs, or 1 for a global channel */
  int is_global;          /* one buffer for all CPUs */
  struct rchan_buf **buf; /* buf[i] for i < n_buffers */
  void *impl;             /* private */
};

struct rchan_callbacks {
  /*
   * At every sub-buffer switch, and once when each buffer is opened with prev_subbuf NULL.
   * prev_padding is the number of unused bytes at the end of prev_subbuf. Return 1 to switch to
   * subbuf, 0 to refuse (the record is dropped and counted; the next write asks again with the
   * same arguments). May call subbuf_start_reserve() to keep header bytes at the start of subbuf.
   * NULL: switch unless the buffer is full (no-overwrite mode). Always returning 1 gives
   * overwrite ("flight recorder") mode.
   * relayfs: runs in the writing thread with the buffer's switch held; it must not write to the
   * same buffer (such a write is dropped), and when it refuses it must not write into subbuf.
   */
  int (*subbuf_start)(struct rchan_buf *buf, void *subbuf, void *prev_subbuf, size_t prev_padding);

  /* A reader opened buf's file (relayfs: the first opener; filp is NULL). */
  void (*buf_mapped)(struct rchan_buf *buf, void *filp);

  /* The last reader of buf's file closed it (filp is NULL). */
  void (*buf_unmapped)(struct rchan_buf *buf, void *filp);

  /*
   * Called by relay_open before the files are made: once per buffer, or once in all when it sets
   * *is_global. relayfs: the daemon makes the files, so this callback only decides: it may set
   * *mode (the files' permission bits; default 0400, as in the spec) and *is_global, and returns
   * 0 to go on or -1 to make relay_open fail with EPERM. NULL: per-CPU files, mode 0400.
   */
  int (*create_buf_file)(const char *filename, const char *parent, mode_t *mode,
                         struct rchan_buf *buf, int *is_global);
};

/*
 * Creates a channel: files base_filename0 ... base_filenameN-1 in parent, one per possible CPU
 * (or base_filename0 alone for a global channel). Returns the channel, or NULL with errno:
 *   EINVAL   a size is 0, base_filename is not a valid file name, or parent is NULL and
 *            RELAYFS_MOUNT is unset;
 *   EFBIG    subbuf_size, n_subbufs or their product is above the limits (see relay(7));
 *   ENOENT   parent does not exist;   ENOTDIR  parent is not a directory;
 *   ENOTSUP  parent is not inside a mounted relayfs;
 *   EACCES   no write permission on parent;   EEXIST  the files exist already;
 *   ENAMETOOLONG  base_filename with its number is too long;
 *   EPERM    create_buf_file refused;   ECONNREFUSED, EIO  the daemon cannot be reached.
 */
RELAY_API struct rchan *relay_open(const char *base_filename, const char *parent,
                                   size_t subbuf_size, size_t n_subbufs,
                                   const struct rchan_callbacks *cb, void *private_data);

/*
 * Closes the channel: nothing more can be written; the daemon finalizes its buffers, whose data
 * stays readable until drained, after which the files go. Frees chan. No thread may be writing.
 * Returns 0, or -1 with errno EIO if the daemon did not confirm (the channel is closed anyway).
 */
RELAY_API int relay_close(struct rchan *chan);

/* Forces a sub-buffer switch on every buffer. Returns 0, or -1 with EPIPE if closed. */
RELAY_API int relay_flush(struct rchan *chan);

/*
 * Returns every buffer to its initial state, discarding unread data. Only while no thread is
 * writing. Loss counters keep counting. Returns 0.
 */
RELAY_API int relay_reset(struct rchan *chan);

/*
 * Writes one record into the buffer of the CPU the calling thread runs on. Thread-safe, no
 * system call. Records are never split. relayfs: returns 0, or -1 with errno:
 *   ENOSPC    the buffer is full (no-overwrite): the record was dropped and counted;
 *   EMSGSIZE  the record is larger than a sub-buffer (dropped and counted);
 *   EINVAL    length is 0;   EPIPE  the channel is closed.
 */
RELAY_API int relay_write(struct rchan *chan, const void *data, size_t length);

/* The same as relay_write: user space has no interrupt context to guard against. */
RELAY_API int __relay_write(struct rchan *chan, const void *data, size_t length);

/*
 * Reserves length bytes in the current CPU's buffer, to be filled in place and then published
 * with relay_commit. Readers stop short of a reserved slot until it is committed. Returns the
 * slot, or NULL with errno as for relay_write.
 */
RELAY_API void *relay_reserve(struct rchan *chan, size_t length);

/*
 * relayfs (as in the 2005 relayfs): publishes a slot relay_reserve returned; count is the length
 * that was reserved. May be called from any thread.
 */
RELAY_API void relay_commit(struct rchan *chan, void *reserved, size_t count);

/*
 * Tells relayfs that a reader consumed subbufs_consumed more sub-buffers of cpu's buffer
 * (mmap-style readers). Returns 0, or -1 with EINVAL for a cpu out of range, EIO if the daemon
 * cannot be reached.
 */
RELAY_API int relay_subbufs_consumed(struct rchan *chan, unsigned int cpu,
                                     size_t subbufs_consumed);

/* 1 if every sub-buffer of buf is produced and none consumed, else 0. */
RELAY_API int relay_buf_full(struct rchan_buf *buf);

/* From subbuf_start only: keeps length more header bytes at the start of the new sub-buffer. */
RELAY_API void subbuf_start_reserve(struct rchan_buf *buf, size_t length);

#ifdef __cplusplus
}
#endif

#endif /* RELAYFS_RELAY_H */
