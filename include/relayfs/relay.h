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
 *  - after fork(2) a channel stays its opener's: a child's writes go into the same buffers, its
 *    relay_close frees only its own handle, and its relay_reset fails with EPERM.
 *  - a channel outlives the daemon: writes go on into the buffers while none runs, and the
 *    library hands them to the next daemon mounted at the same place (relay(7), "Daemon
 *    restarts").
 *
 * relay_write, relay_reserve and relay_commit make no system call: the buffers are shared memory.
 * relay_write is inline (below, and relay_fast.h): on a per-CPU buffer its common case is not even
 * a call into the library. ABI: a program built with this header needs a librelayfs.so.1 with
 * symbol version RELAYFS_0.4 (relay_fast_abi: it does not start with an older one), and falls
 * back to the exported functions by itself when the library's relay_fast_abi is another
 * RELAY_FAST_VERSION (relay_write(3), "INLINE FAST PATH").
 * Link with `pkg-config --cflags --libs relayfs`.
 */
#ifndef RELAYFS_RELAY_H
#define RELAYFS_RELAY_H

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/types.h>

#include <relayfs/relay_fast.h>

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
  /* relayfs: what the inline relay_write reads (relay_fast.h; appended in 0.4: the library
   * allocates struct rchan). NULL: every write takes the exported function. */
  const struct relay_fast *fast;
};

struct rchan_callbacks {
  /*
   * At every sub-buffer switch, and with prev_subbuf NULL once when each buffer is opened and
   * after relay_reset (the return value is then ignored).
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

  /*
   * From the 2005 relayfs: a sub-buffer of buf is complete (closed, and every slot reserved in
   * it committed); subbuf_idx is its index, subbuf its start. Called in the writing thread whose
   * commit (or switch) completed it. relayfs: works with relay_write too, not only
   * relay_reserve + relay_commit. NULL: nothing.
   */
  void (*deliver)(struct rchan_buf *buf, unsigned int subbuf_idx, void *subbuf);

  /*
   * From the 2005 relayfs: buf just became full (a switch was refused because no sub-buffer is
   * consumed); subbuf_idx and subbuf are the sub-buffer that was being closed. Called once per
   * time the buffer fills, in the writing thread. NULL: nothing.
   */
  void (*buf_full)(struct rchan_buf *buf, unsigned int subbuf_idx, void *subbuf);
};

/*
 * relayfs: what relay_open_opts adds to relay_open.
 *  RELAY_OVERWRITE  overwrite ("flight recorder") mode. Without a subbuf_start callback relayfs
 *                   supplies one that always switches; with one, the flag only declares the
 *                   mode: it shows in the "mode" attribute, and a record lost because the next
 *                   sub-buffer still holds an uncommitted record counts in lost_wrap from the
 *                   start (undeclared, relayfs learns the mode when the callback first switches
 *                   into a full buffer; such a loss before that counts in lost_full).
 *  RELAY_BLOCKING   never lose a record to a full buffer (LTTng's blocking mode): a write that
 *                   finds the no-overwrite buffer full waits for a reader to consume a
 *                   sub-buffer, up to block_timeout_ms (-1: no limit). Only a write that times
 *                   out is dropped, counted in lost_full, and fails with ETIMEDOUT. Waiting
 *                   sleeps on a futex; writes that find room cost what they always do. Only a
 *                   full buffer makes a write wait: a switch the subbuf_start callback refuses
 *                   for its own reasons drops as usual, and so does a write from a thread that
 *                   holds an uncommitted relay_reserve slot (it could be waiting for itself).
 */
#define RELAY_OVERWRITE 0x1u
#define RELAY_BLOCKING 0x2u
#define RELAY_CONTROL 0x4u /* take flush/reset/close requests from outside (relay_control) */

/* Requests relay_control() sends, and struct relay_options.control receives. */
#define RELAY_CTL_FLUSH 1
#define RELAY_CTL_RESET 2
#define RELAY_CTL_CLOSE 3

struct relay_options {
  unsigned int flags;   /* RELAY_OVERWRITE, RELAY_BLOCKING, RELAY_CONTROL */
  int block_timeout_ms; /* RELAY_BLOCKING: longest wait per write, in ms; -1: no limit */
  /*
   * RELAY_CONTROL: asked, on a thread of the library's, before a request from outside is
   * carried out. Return 0 to allow it, or a negative errno to refuse (the requester gets it).
   * NULL allows flush and close, and refuses reset with EBUSY: relay_reset needs no thread to be
   * writing, which only the producer can promise. Returning 0 for RELAY_CTL_RESET is that promise.
   */
  int (*control)(struct rchan *chan, int op);
};

/*
 * Per-buffer counters (relay_buf_stats, relay_reader_stats). The same values are extended
 * attributes of the buffer's file, "user.relayfs.<name>" (getfattr -d -m - FILE; relay(7)).
 * The books balance: bytes_produced = bytes_consumed + bytes_unread + lost_uncommitted + every
 * lost_*_bytes.
 */
struct relay_stats {
  unsigned long long subbuf_size;      /* geometry */
  unsigned long long n_subbufs;
  unsigned long long subbufs_produced; /* sub-buffers switched away from (since open or reset) */
  unsigned long long subbufs_consumed; /* sub-buffers read to the end or released */
  unsigned long long bytes_produced;   /* bytes committed, padding excluded; never shrinks */
  unsigned long long bytes_consumed;   /* bytes handed to readers */
  unsigned long long lost_full;        /* records dropped: buffer full (or blocking timeout) */
  unsigned long long lost_too_big;     /* records dropped: larger than a sub-buffer */
  unsigned long long lost_wrap;        /* records dropped: next sub-buffer still being written */
  unsigned long long overruns;         /* sub-buffers the writer lapped before they were read */
  unsigned long long lost_uncommitted; /* bytes reserved but never committed (producer died) */
  /* relayfs, in bytes (librelayfs.so.1): what else left the buffer without reaching a reader */
  unsigned long long lost_overrun_bytes;   /* the bytes of the sub-buffers counted in overruns */
  unsigned long long lost_reset_bytes;     /* unread bytes relay_reset discarded */
  unsigned long long lost_readahead_bytes; /* taken by a splice/sendfile page cache, undelivered */
  unsigned long long lost_expired_bytes;   /* freed unread after the producer (orphan_timeout) */
  unsigned long long bytes_unread;         /* produced and not yet read or lost */
};

/*
 * Creates a channel: files base_filename0 ... base_filenameN-1 in parent, one per possible CPU
 * (or base_filename0 alone for a global channel). Returns the channel, or NULL with errno:
 *   EINVAL   a size is 0, base_filename is not a valid file name (empty, ".", "..", or with
 *            '/' or a control character), or parent is NULL and RELAYFS_MOUNT is unset;
 *   EFBIG    subbuf_size, n_subbufs or their product is above the limits (see relay(7));
 *   ENOENT   parent does not exist;   ENOTDIR  parent is not a directory;
 *   ENOTSUP  parent is not inside a mounted relayfs;
 *   EACCES   no write permission on parent;   EEXIST  the files exist already;
 *   ENAMETOOLONG  base_filename, or it with its number, is longer than NAME_MAX (255 bytes);
 *   EPERM    create_buf_file refused;   ECONNREFUSED, EIO  the daemon cannot be reached.
 */
RELAY_API struct rchan *relay_open(const char *base_filename, const char *parent,
                                   size_t subbuf_size, size_t n_subbufs,
                                   const struct rchan_callbacks *cb, void *private_data);

/*
 * relayfs: relay_open with options (see struct relay_options); opts NULL is relay_open. Fails
 * also with EINVAL for unknown flags, or RELAY_BLOCKING with RELAY_OVERWRITE (an overwrite
 * buffer is never full).
 */
RELAY_API struct rchan *relay_open_opts(const char *base_filename, const char *parent,
                                        size_t subbuf_size, size_t n_subbufs,
                                        const struct rchan_callbacks *cb, void *private_data,
                                        const struct relay_options *opts);

/*
 * Closes the channel: nothing more can be written; the daemon finalizes its buffers, whose data
 * stays readable until drained, after which the files go. Frees chan. No thread may be writing,
 * and it must not be called from a callback. Returns 0, or -1 with errno EINVAL (chan NULL) or
 * EIO if the daemon did not confirm (the channel is closed anyway).
 * relayfs: with no daemon (it died and none was mounted again yet), returns at once: 0 if every
 * byte had been read, else -1 with ENOTCONN, the unread data going with the buffers.
 * relayfs: in a process that inherited chan through fork(2), frees only that process's handle
 * (its mappings and its copies of the descriptors) and returns 0 at once, like close(2) on an
 * inherited descriptor: the channel stays open for the process that opened it (relay_open(3),
 * "fork(2)").
 */
RELAY_API int relay_close(struct rchan *chan);

/*
 * Forces a sub-buffer switch on every buffer. Returns 0, or -1 with EINVAL (chan NULL), EDEADLK
 * (called from subbuf_start) or EPIPE (closed); the buffers after a failing one are not flushed.
 */
RELAY_API int relay_flush(struct rchan *chan);

/*
 * Returns every buffer to its initial state, discarding unread data. Only while no thread is
 * writing. Loss counters keep counting. Returns 0, or -1 with EINVAL if chan is NULL, or EPERM
 * in a process that inherited chan through fork(2) rather than opened it: only the opener can
 * promise that nobody writes. relayfs: a fork child must not write to chan after its parent
 * reset it (relay_reset(3)).
 */
RELAY_API int relay_reset(struct rchan *chan);

/*
 * Writes one record into the buffer of the CPU the calling thread runs on. Thread-safe, no
 * system call. Records are never split. relayfs: returns 0, or -1 with errno:
 *   ENOSPC    the buffer is full (no-overwrite), or the next sub-buffer still holds a record a
 *             preempted writer has not committed (either mode; counted in lost_wrap): the
 *             record was dropped and counted;
 *   ETIMEDOUT RELAY_BLOCKING: no room came within block_timeout_ms (dropped, in lost_full);
 *   EMSGSIZE  the record is larger than a sub-buffer (dropped and counted);
 *   EINVAL    length is 0;   EPIPE  the channel is closed, or its daemon
 *            is gone (killed or unmounted: nothing would read the record).
 */
RELAY_API int relay_write(struct rchan *chan, const void *data, size_t length);

/*
 * relayfs: the library's half of the inline relay_write (relay_write(3), "INLINE FAST PATH"),
 * not for direct use. relay_fast_commit_remote commits a record the inline path reserved in
 * cpu's buffer (slot, offset off in its sub-buffer, len bytes, lap base base) from a thread that
 * has since moved to another CPU, then does what is left, as relay_fast_commit_events does:
 * the work a commit left (ev, RELAY_FAST_EV_* bits) for slot's sub-buffer of cpu's buffer, whose
 * committed count the commit saw as v. Neither can fail.
 */
RELAY_API void relay_fast_commit_remote(struct rchan *chan, unsigned int cpu, unsigned int slot,
                                        unsigned int off, unsigned int len,
                                        unsigned long long base);
RELAY_API void relay_fast_commit_events(struct rchan *chan, unsigned int cpu, unsigned int slot,
                                        unsigned long long v, unsigned int ev);
/*
 * relayfs: the RELAY_FAST_VERSION the library was built with. A data symbol, read by the inline
 * relay_write before anything else: the dynamic linker binds data references when it loads a
 * program (calls only when first made), so a program built against this header does not start
 * with a library that predates it, rather than read a struct rchan that has no `fast`.
 */
RELAY_API extern const unsigned int relay_fast_abi;

/*
 * relayfs, in the spirit of the spec's klog: formats like printf and writes the text (without
 * its terminating NUL) as one record into the current CPU's buffer. Returns the number of bytes
 * written, 0 for an empty text (nothing is written), or -1 with errno as for relay_write.
 */
RELAY_API int relay_printf(struct rchan *chan, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
RELAY_API int relay_vprintf(struct rchan *chan, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

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
 * (mmap-style readers). Only sends the message: the daemon releases them shortly after. Returns
 * 0, or -1 with EINVAL for a cpu out of range, EIO if the daemon cannot be reached, ENOMEM.
 */
RELAY_API int relay_subbufs_consumed(struct rchan *chan, unsigned int cpu,
                                     size_t subbufs_consumed);

/* 1 if every sub-buffer of buf is produced and none consumed, else 0. */
RELAY_API int relay_buf_full(struct rchan_buf *buf);

/* From subbuf_start only: keeps length more header bytes at the start of the new sub-buffer. */
RELAY_API void subbuf_start_reserve(struct rchan_buf *buf, size_t length);

/*
 * relayfs: buf's counters, as the producer sees them; the consumer-side ones (consumed,
 * overruns, lost_uncommitted) are what the daemon last published. Returns 0, or -1 with EINVAL.
 */
RELAY_API int relay_buf_stats(struct rchan_buf *buf, struct relay_stats *st);

/*
 * relayfs: asks the producer of the channel that path (any of its files) belongs to to flush
 * (RELAY_CTL_FLUSH), reset (RELAY_CTL_RESET) or close (RELAY_CTL_CLOSE) it, as relay_flush,
 * relay_reset or a close of every buffer would. A close makes later writes fail with EPIPE and
 * lets readers reach end of file; the files go when the producer calls relay_close or exits.
 * Only the owner of the channel's files, or root, may ask, and only if the producer opened the
 * channel with RELAY_CONTROL. Returns 0 once the producer has done it, or -1 with errno: EPERM
 * (not allowed, by the producer or for this user), ENOENT (not a relay file, or the producer is
 * gone), EINVAL (unknown op), ETIMEDOUT (no answer within 30 s), EBUSY, or the producer's refusal.
 */
RELAY_API int relay_control(const char *path, int op);

/*
 * mmap readers, from another process: the spec's mmap() of a whole buffer plus
 * relay_subbufs_consumed(), done by a reader instead of the kernel client.
 *
 * relay_reader_open(path) maps the buffer behind one relay file read-only. The daemon checks
 * that the caller may read the file (its mode and owner, and search permission on the way to
 * it), as open(2) would; it fails with EACCES otherwise, ENOENT, ENOTSUP outside relayfs, EIO.
 * It counts as a reader of the file: buf_mapped fires for the first one, buf_unmapped when the
 * last one goes. base is the whole buffer, n_subbufs * subbuf_size bytes.
 *
 * fd is the relay file, kept open: poll() it for POLLIN, which means a whole sub-buffer is
 * ready for relay_reader_next (the kernel's poll() semantics), not merely some data.
 *
 * relay_reader_next() gives the oldest sub-buffer that is closed, wholly committed and not yet
 * consumed: 1 and *sb filled, 0 if there is none now, -1 with errno EIO if the buffer's control
 * area is inconsistent. Once the producer closed the buffer, the last sub-buffer, which never
 * closes, is given too (the "tail": length is what was written of it). relay_reader_peek() gives
 * sub-buffer seq, which may lie past the oldest, the same way, for a reader that works on several
 * before it consumes them; -1 with ESTALE if seq is behind the read position or the writer began
 * reusing its slot. Neither consumes: relay_reader_consumed(r, n) says the reader is done
 * with n more sub-buffers; when it returns they are free for a no-overwrite writer (one round
 * trip to the daemon; 0, or -1 with EIO, or ENOTCONN once the daemon is gone: close the reader
 * and open it again at the next daemon's mount). All readers of a buffer share one position,
 * read(2) readers included (kernel semantics).
 *
 * Overwrite mode: the writer may reuse a sub-buffer while it is being read. After copying or
 * processing one, relay_reader_valid(r, sb) tells whether it was still intact (1) or lapped (0);
 * relay_reader_next skips lapped sub-buffers and counts them as overruns.
 */
struct relay_reader {
  const void *base;   /* the buffer, read-only: n_subbufs * subbuf_size bytes */
  size_t subbuf_size;
  size_t n_subbufs;
  unsigned int cpu;   /* the buffer's index in its channel */
  int fd;             /* poll() for POLLIN = a whole sub-buffer may be ready (call
                       * relay_reader_next until it returns 0 before polling again);
                       * POLLERR/POLLHUP without POLLIN = the channel ended and is drained */
  void *impl;         /* private */
  /* Which stream of bytes the sequence numbers count (added in 0.2; fields are only ever
   * appended, and the library allocates the struct). stream names the buffer: the same across
   * daemon restarts, another when its channel is opened anew. generation is the reset
   * generation of the sub-buffer relay_reader_next gave last: seq starts again at 0 in a new
   * one. (stream, generation, seq) names a sub-buffer's contents for good within one boot. */
  unsigned long long stream;
  unsigned int generation;
  /* The relay file itself (added in 0.3). fd is now a descriptor to poll() and nothing else:
   * with a reader's own doorbell (relay_reader_open(3)) it is an epoll descriptor, which
   * becomes the relay file, under the same number, once the channel ends. Use file to fstat()
   * the relay file or read its extended attributes. */
  int file;
};

struct relay_subbuf {
  size_t index;             /* sub-buffer index, 0 .. n_subbufs - 1 */
  const void *data;         /* base + index * subbuf_size */
  size_t length;            /* bytes of data: subbuf_size - padding (header bytes included) */
  size_t padding;           /* unused bytes at its end */
  unsigned long long seq;   /* its sequence number since the channel was opened or reset */
};

RELAY_API struct relay_reader *relay_reader_open(const char *path);
/* Each also fails with -1 and EINVAL for a NULL argument (relay_reader_valid too). */
RELAY_API int relay_reader_next(struct relay_reader *r, struct relay_subbuf *sb);
RELAY_API int relay_reader_peek(struct relay_reader *r, unsigned long long seq,
                                struct relay_subbuf *sb);
RELAY_API int relay_reader_valid(struct relay_reader *r, const struct relay_subbuf *sb);
RELAY_API int relay_reader_consumed(struct relay_reader *r, size_t subbufs_consumed);
RELAY_API int relay_reader_stats(struct relay_reader *r, struct relay_stats *st);
RELAY_API int relay_reader_close(struct relay_reader *r);

/*
 * relayfs: relay_write, inline (relay_write(3), "INLINE FAST PATH"). On a buffer bound to its
 * CPU, a record that fits in the current sub-buffer is reserved and committed here, in the
 * caller, with two rseq sections and no locked instruction, and its bytes are copied inline
 * (a constant length becomes a few moves). Everything else, and every failure but a full
 * buffer's drop, is the exported relay_write's. An inline-only definition (gnu_inline, as glibc's
 * fortified functions are): no macro, &relay_write and dlsym() reach the exported function, and
 * a program that declares relay_write itself still compiles. Define RELAYFS_NO_INLINE before
 * including relay.h to do without it.
 */
#if defined(RELAY_FAST_HAVE_RSEQ) && !defined(RELAYFS_NO_INLINE)
/* The exported relay_write, under a name the inline one can call without calling itself. */
extern int relay_fast_exported_write(struct rchan *chan, const void *data, size_t length)
    __asm__("relay_write") __attribute__((visibility("default")));

extern __inline__ __attribute__((gnu_inline, always_inline)) int relay_write(struct rchan *chan,
                                                                         const void *data,
                                                                         size_t length) {
  const struct relay_fast *f = relay_fast_abi == RELAY_FAST_VERSION ? chan->fast : NULL;
  if (__builtin_expect(f != NULL, 1)) {
    /* The thread's rseq area, found once: it stays the thread's wherever the thread runs. */
    struct relay_fast_rseq_abi *const rs = relay_fast_rseq_area();
    const uint32_t cpu = relay_fast_cpu_at(rs);
    if (__builtin_expect(cpu < f->n_buffers && f->buf[cpu].on, 1)) {
      /* Copied out once: each rseq section clobbers memory, which would reload them. */
      const struct relay_fast_buf *b = &f->buf[cpu];
      uint64_t *const wpos = b->wpos;
      struct relay_fast_subbuf_meta *const meta = b->meta;
      char *const area = b->data;
      const uint64_t *const lap_base = b->lap_base;
      const uint32_t *const waiters = b->waiters;
      const uint32_t size = b->subbuf_size;
      uint64_t w = __atomic_load_n(wpos, __ATOMIC_RELAXED);
      while (RELAY_FAST_FITS(RELAY_FAST_WORD_OFF(w), length, size)) {
        const int got = relay_fast_cas_on_cpu(rs, wpos, w, w + length, cpu);
        if (__builtin_expect(got == RELAY_FAST_STORED, 1)) {
          /* Seqlock writer side (core/producer.h): the record's stores stay after what made
           * the slot ours. */
          __atomic_thread_fence(__ATOMIC_RELEASE);
          const uint32_t slot = RELAY_FAST_WORD_SLOT(w), off = RELAY_FAST_WORD_OFF(w);
          const uint32_t len = (uint32_t)length;
          const uint64_t base = lap_base[slot];
          struct relay_fast_subbuf_meta *m = &meta[slot];
          uint64_t v;
          __builtin_memcpy(area + RELAY_FAST_SLOT_OFFSET(slot, size) + off, data, length);
          while (!relay_fast_commit_on_cpu(rs, m, len, cpu, &v)) {
            if (relay_fast_cpu_at(rs) != cpu) { /* moved since the reservation: atomic counter */
              relay_fast_commit_remote(chan, cpu, slot, off, len, base);
              return 0;
            }
          }
          const unsigned ev =
              relay_fast_after_commit(wpos, m, waiters, slot, off, len, base, size, v);
          if (__builtin_expect(ev != 0, 0)) relay_fast_commit_events(chan, cpu, slot, v, ev);
          return 0;
        }
        if (got != RELAY_FAST_CHANGED) break; /* elsewhere, or interrupted: the library decides */
        w = __atomic_load_n(wpos, __ATOMIC_RELAXED);
      }
      /* A no-overwrite buffer that stopped full and still is: the record is dropped and counted
       * here, as the library would (lost_full, ENOSPC), without the switch the default
       * subbuf_start would refuse again. Every other reason not to fit is the library's. */
      if (RELAY_FAST_WORD_OFF(w) == RELAY_FAST_OFF_STOPPED && b->drop_full && length != 0 &&
          length <= size &&
          relay_fast_buf_full(b->produced, b->consumed, b->reset_gen, b->n_subbufs)) {
        __atomic_fetch_add(b->lost_full, 1, __ATOMIC_RELAXED);
        errno = ENOSPC;
        return -1;
      }
    }
  }
  return relay_fast_exported_write(chan, data, length);
}
#endif

#ifdef __cplusplus
}
#endif

#endif /* RELAYFS_RELAY_H */
