// Consumer: the reading side of one relay buffer, run by the daemon in another process than
// the producer. It implements the kernel's relay read(): sub-buffer padding is removed, what is
// returned is consumed, header bytes are kept, partial reads work, and all readers share one
// read position.
//
// Everything in the shared control area can be written by the producer at any moment, so this
// class treats it as hostile: the geometry and the read position are private copies, every
// shared value is loaded once, checked, and used only within the buffer's bounds, and every loop
// has a bound that does not depend on shared values. A corrupt buffer yields -EIO or an empty
// read, never a crash, a hang or an access outside the mapping.
//
// Not thread-safe: the caller serialises calls per buffer.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>

#include "core/buffer.h"
#include "core/stats.h"
#include "core/view.h"

namespace relayfs::core {

class Consumer {
 public:
  // buf must outlive the Consumer and be mapped read-write: the consumer publishes its position
  // and arms the doorbell there. Its geometry is trusted: it came from whoever created the
  // buffer, not from the shared control area.
  explicit Consumer(const Buffer& buf) noexcept;

  // Copies up to count bytes of produced data into dst and consumes them. Returns the number of
  // bytes copied (0: nothing readable now), or -EIO if the control area is inconsistent and
  // nothing could be copied. Never blocks.
  // With one_subbuf, stops at the end of the first sub-buffer it finishes (the merged view's
  // unit of interleaving).
  ssize_t read(void* dst, size_t count, bool one_subbuf = false) noexcept;

  // A daemon that starts after another died takes the buffer where the other left it: its
  // position and counters come from the shared consumer record (layout.h, ConsumerRecord),
  // checked as hostile input, as everything there is. Bytes the other had handed out past the
  // record are read again and counted in redelivered_bytes (at least once). Call once, right
  // after construction.
  void resume() noexcept;

  // Holds the position back while a reply carries bytes just consumed (or planned) to a reader:
  // until the matching release(), neither the producer (who could reuse them) nor the record a
  // next daemon would resume from sees them consumed, so a daemon killed before the reply is
  // known to have gone out delivers them again (at least once). Holds nest; each needs its
  // release(). The record says meanwhile how many bytes are out past it (inflight).
  void hold() noexcept { ++holds_; }
  void release() noexcept;

  // Zero-copy read, for buffers whose writer never overwrites unconsumed data (no-overwrite
  // mode): fills iov with up to max_iov spans of the mapping holding up to count readable bytes,
  // in order, and returns their total (0: nothing now; -EIO as read()). Nothing is consumed yet,
  // so the writer cannot reuse those bytes: after delivering them the caller calls
  // finish_read(), or abort_read() to leave them unread. No other call may come in between.
  ssize_t plan_read(struct iovec* iov, int max_iov, size_t count, int* n_iov) noexcept;
  void finish_read() noexcept;
  void abort_read() noexcept;

  // Recording to disk, with the write in flight while other calls come and go. An extent is
  // the unread rest of the oldest sub-buffer, once that sub-buffer is closed and wholly
  // committed; once the channel is finalized, also what is proven committed of the last one
  // (the "tail", which will never close). take_extent() consumes nothing; after the bytes
  // reached the disk the caller calls finish_extent(), which consumes them only if they are
  // still unread by anyone else and were not overwritten meanwhile (overwrite mode).
  struct Extent {
    uint64_t seq = 0;     // sub-buffer sequence number
    uint32_t gen = 0;     // reset generation it was taken in
    uint32_t slot = 0;    // its index in the buffer
    uint32_t off = 0;     // where the extent starts inside it
    uint32_t len = 0;     // bytes (> 0)
    uint32_t end = 0;     // a closed sub-buffer's padding start
    bool closed = false;  // false: the tail of a finalized channel
    // Where the extent starts in the byte stream (bytes_produced's units), which stays the same
    // across daemon restarts; exact is false while the writer lapped the reader and pos is only
    // a lower bound (overwrite mode, until the lap is settled).
    uint64_t pos = 0;
    bool exact = false;
    // Offset of the extent in the data area (Buffer::data()).
    uint64_t data_offset(uint32_t subbuf_size) const { return uint64_t{slot} * subbuf_size + off; }
  };
  // Returns 1 with *e filled, 0 if no extent is ready now, or -EIO (as read()).
  int take_extent(Extent* e) noexcept;
  // Returns 1 if the extent's bytes were this lap's and are now consumed; 0 if another reader
  // consumed some of them, the writer reused the slot, or a reset came (nothing is consumed:
  // the copy must be dropped; what was overwritten is skipped and counted by the next call).
  int finish_extent(const Extent& e) noexcept { return finish_extent(e, e.len); }
  // The same for the first n bytes of the extent only (n <= e.len): a recording resumed after a
  // daemon restart passes over what the last daemon had written to disk but not consumed.
  int finish_extent(const Extent& e, uint32_t n) noexcept;
  // Whether finish_extent(e) would keep the extent now: still ours, unread by anyone else, and
  // not overwritten. Consumes nothing. A recording checks it once the bytes reached the disk,
  // before it says so in its state file.
  bool extent_intact(const Extent& e) noexcept;

  // Where the read position is in the byte stream (bytes_produced's units). Returns false if it
  // is only a lower bound (the writer lapped the reader and the lap is not settled yet).
  bool position(uint64_t* at) noexcept;

  // True if a read would stop at a record boundary: nothing of the current record has been
  // returned. A read that ran out of room mid-span leaves it false until the span is finished.
  bool at_record_boundary() const noexcept;

  // True if the oldest unconsumed sub-buffer is closed and wholly committed, or is the tail of a
  // buffer its producer closed: what an mmap reader (relay_reader_next) waits for, and what the
  // kernel's poll() reports.
  bool subbuf_ready() noexcept;

  // An mmap reader consumed every sub-buffer before seq, counted in reset generation gen (the
  // tag it read from the published position); seq past the last one produced also consumes the
  // tail of a buffer its producer closed (relay_reader_next gives it then). Returns 0, or
  // -ESTALE for another generation.
  int consume_upto(uint32_t gen, uint64_t seq) noexcept;

  // True if read() would return data now (POLLIN). Like the kernel's check, it may consume
  // sub-buffers that hold nothing more to read, and skip those the writer lapped.
  bool data_available() noexcept;

  // relay_subbufs_consumed() for mmap-style readers: n more sub-buffers are consumed, clamped
  // to the number produced; their bytes count in bytes_consumed (the reader had them through its
  // mapping). Returns 0, or -EINVAL for n == 0.
  int subbufs_consumed(uint64_t n) noexcept;

  // n bytes that a read handed out went to a page cache (splice, sendfile) and were never shown
  // to reach a reader: they move from bytes_consumed to lost_readahead_bytes (at most what was
  // handed out). The read position stays where it is: they left the buffer.
  void readahead_lost(uint64_t n) noexcept;
  // n bytes that a read handed out went to a page cache and are not proven to have reached a
  // reader yet (delta > 0), or now are, or were counted by readahead_lost (delta < 0). Kept in
  // the consumer record: if the daemon dies, the next one counts them in lost_readahead_bytes.
  void note_unproven(int64_t delta) noexcept;

  // Frees what is unread of a finalized buffer, counted in lost_expired_bytes: the reader
  // position moves to the end, as if it had read everything (relayfs's orphan_timeout).
  // Returns the bytes freed (0 if the buffer is not finalized).
  uint64_t expire() noexcept;

  // The channel will produce nothing more (its producer closed or died). A finalized and
  // drained buffer reports POLLERR. From then on no commit can arrive: bytes reserved but never
  // committed (a producer killed mid-record) are skipped and counted in lost_uncommitted.
  void finalize() noexcept { finalized_ = true; }
  bool finalized() const noexcept { return finalized_; }
  bool drained() noexcept { return finalized_ && !data_available(); }
  // The producer says it closed the buffer (a hint from shared memory, not a decision).
  bool producer_closed() const noexcept;

  // Arms the doorbell: producers ring the wake-up on their next commit or switch. The caller
  // must re-check data_available() after arming; a commit that raced the arming is seen there.
  // whole_subbufs: only closed, complete sub-buffers are of interest (see subbuf_ready).
  // core::arm_doorbell (doorbell.h) does it: returns 0, or -errno if the arming could not be
  // ordered against a fenced producer's commits (then the caller should look again later).
  int arm_doorbell(bool whole_subbufs = false) noexcept;

  // Total bytes produced into the buffer so far, including the readable part of the sub-buffer
  // being written. Never decreases, even across a reset (st_size of the relay file).
  uint64_t bytes_produced() noexcept;

  BufferStats stats() noexcept;

 private:
  struct Span {
    uint64_t seq;   // sub-buffer sequence number
    uint32_t slot;  // its index in the buffer
    uint32_t off;   // where to read inside it
    uint32_t len;   // how much is readable there (0: nothing now)
    uint32_t end;   // for a closed sub-buffer, where its padding begins; else 0
    bool closed;
  };

  int next_span(Span* s) noexcept;
  uint32_t proven_prefix(uint64_t seq, bool current) const noexcept;
  bool start_of(uint64_t seq, uint64_t produced, uint64_t* out) const noexcept;
  void pass_to(uint64_t seq) noexcept;
  void settle(uint64_t produced) noexcept;
  uint32_t remember_prefix(uint64_t seq, uint32_t prefix) noexcept;
  void skip_lapped(uint64_t produced) noexcept;
  void take_tail() noexcept;
  void consume_one() noexcept;
  void publish() noexcept;
  void write_record() noexcept;
  void wake_blocked_writers() noexcept;
  bool sync_reset() noexcept;
  int corrupt() noexcept;

  // What the consumer reads of the shared area, and how it is checked: one View, which the mmap
  // readers of librelayfs use too. hdr_ is its header, for the counters reported as they are.
  View view_;
  const ShmHeader* hdr_;
  ShmHeader* hdr_rw_;  // for the fields the consumer publishes (consumed, bytes_consumed, waiters)
  uint32_t size_;
  uint32_t n_;

  // Private read position: the consumer never trusts the copy it publishes.
  uint64_t consumed_ = 0;        // sub-buffers consumed
  uint32_t bytes_consumed_ = 0;  // bytes read inside sub-buffer consumed_
  // Where sub-buffer consumed_ starts in the byte stream (bytes_produced's units). Every byte
  // before pos_bytes_ + bytes_consumed_ was handed to a reader or counted lost: the books
  // balance (stats.h) because each move of the position counts what it passes. While
  // pos_pending_, sub-buffers the writer lapped were passed and pos_bytes_ is only a lower
  // bound: settle() counts the rest once the slot of consumed_ tells where it starts.
  uint64_t pos_bytes_ = 0;
  bool pos_pending_ = false;
  uint64_t ready_seq_ = ~uint64_t{0};
  uint32_t ready_ = 0;  // proven-committed prefix of sub-buffer ready_seq_
  uint32_t gen_ = 0;    // reset generation the position belongs to
  bool finalized_ = false;

  // plan_read: publication is held back (a hold) until finish_read, and abort_read restores
  // this.
  struct Saved {
    uint64_t consumed, ready_seq, total_read, overruns, lost_uncommitted, lost_overrun, pos_bytes;
    uint32_t bytes_consumed, ready;
    bool pos_pending;
  } saved_{};
  unsigned holds_ = 0;  // hold() minus release(): publication waits while non-zero
  // The consumer record last written (record_seq's value), and the bytes_consumed it holds.
  uint64_t rec_seq_ = 0;
  uint64_t rec_total_ = 0;

  uint64_t total_read_ = 0;  // bytes_consumed
  uint64_t overruns_ = 0;
  uint64_t lost_uncommitted_ = 0;
  uint64_t lost_overrun_ = 0;
  uint64_t lost_reset_ = 0;
  uint64_t lost_readahead_ = 0;
  uint64_t lost_expired_ = 0;
  uint64_t corrupt_events_ = 0;
  uint64_t redelivered_ = 0;
  uint64_t unproven_ = 0;  // note_unproven
  uint64_t bytes_produced_seen_ = 0;
};

}  // namespace relayfs::core
