#include "core/consumer.h"

#include "core/doorbell.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>

#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
#endif

namespace relayfs::core {

namespace {

// Steps that make no progress (skipping empty or lapped sub-buffers, retrying a copy the writer
// overwrote) are bounded per call, so a producer that keeps rewriting the control area cannot
// hold the caller in a loop. Legitimate states need at most n_subbufs + a few such steps.
constexpr unsigned kSlackSteps = 8;

// Copies bytes that a writer may be overwriting at the same moment (overwrite mode): the copy is
// validated afterwards (View::still_valid) and discarded if it raced, the seqlock way. Under TSan
// the racing reads are expected, so they are hidden from it.
void copy_racy(void* dst, const char* src, size_t n) {
#if defined(__SANITIZE_THREAD__)
  AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
#endif
  std::memcpy(dst, src, n);
#if defined(__SANITIZE_THREAD__)
  AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
#endif
}

}  // namespace

// The counters the consumer keeps, each under its name in the shared consumer line and in the
// consumer record (layout.h), and its member here: published, recorded and resumed from this
// one list.
#define RELAYFS_CONSUMER_COUNTERS(X)          \
  X(bytes_consumed, total_read_)              \
  X(overruns, overruns_)                      \
  X(lost_uncommitted, lost_uncommitted_)      \
  X(lost_overrun_bytes, lost_overrun_)        \
  X(lost_reset_bytes, lost_reset_)            \
  X(lost_readahead_bytes, lost_readahead_)    \
  X(lost_expired_bytes, lost_expired_)

Consumer::Consumer(const Buffer& buf) noexcept
    : view_(buf),
      hdr_(buf.header()),
      hdr_rw_(buf.header()),
      size_(buf.geometry().subbuf_size),
      n_(buf.geometry().n_subbufs) {
  gen_ = hdr_->reset_gen.load(std::memory_order_acquire) & ~1u;
  rec_seq_ = hdr_->record_seq.load(std::memory_order_relaxed);
}

void Consumer::resume() noexcept {
  // acquire: pairs with write_record's release, so the record's fields are the whole record.
  const uint64_t seq = hdr_->record_seq.load(std::memory_order_acquire);
  const ConsumerRecord& r = hdr_->records[seq & 1];
  const auto load = [](const std::atomic<uint64_t>& v) {
    return v.load(std::memory_order_relaxed);
  };
  // Each value is the producer's to forge: bounded here, then left to the same checks as any
  // position (next_span, settle, sync_reset), which count what does not add up.
  uint32_t gen = r.gen.load(std::memory_order_relaxed);
  const uint64_t tagged = load(r.consumed);
  uint64_t consumed = consumed_count(tagged, gen);
  uint32_t off = r.read_off.load(std::memory_order_relaxed);
  uint64_t pos = load(r.pos_bytes);
  const uint64_t produced = hdr_->produced.load(std::memory_order_acquire);
  const uint64_t bytes = hdr_->bytes_produced.load(std::memory_order_acquire);
  const bool lies = (gen & 1) != 0 || (tagged & kConsumedMask) != consumed || consumed > produced ||
                    off > size_ || (pos & ~kPosPending) > bytes;
  if (lies) {
    // Start over from what the buffer holds now: its oldest sub-buffer the writer has not begun
    // to reuse, as a lapped reader does, and let settle() count what lies before it.
    ++corrupt_events_;
    gen = hdr_->reset_gen.load(std::memory_order_acquire) & ~1u;
    consumed = 0;
    off = 0;
    pos = kPosPending;
  }
  gen_ = gen;
  consumed_ = consumed;
  bytes_consumed_ = off;
  pos_bytes_ = pos & ~kPosPending;
  pos_pending_ = (pos & kPosPending) != 0;
#define RELAYFS_LOAD_COUNTER(field, member) member = load(r.field);
  RELAYFS_CONSUMER_COUNTERS(RELAYFS_LOAD_COUNTER)
#undef RELAYFS_LOAD_COUNTER
  // What the last daemon handed out past the record is read again: the boundary, counted.
  redelivered_ = load(r.redelivered_bytes) + load(r.inflight);
  // What its readers' page caches had taken and nobody was shown to get went with it: counted
  // as a close of the file would have counted it.
  const uint64_t unproven = std::min(load(r.unproven), total_read_);
  total_read_ -= unproven;
  lost_readahead_ += unproven;
  rec_seq_ = seq;
  publish();
}

void Consumer::release() noexcept {
  if (holds_ > 0 && --holds_ == 0) publish();
}

void Consumer::write_record() noexcept {
  if (holds_ > 0) {
    // Held: the record stays where the position was; only how far past it readers were handed
    // bytes moves (one store, whole or not at all).
    const uint64_t past = total_read_ > rec_total_ ? total_read_ - rec_total_ : 0;
    hdr_rw_->records[rec_seq_ & 1].inflight.store(past, std::memory_order_relaxed);
    hdr_rw_->records[rec_seq_ & 1].unproven.store(unproven_, std::memory_order_relaxed);
    return;
  }
  const uint64_t next = rec_seq_ + 1;
  ConsumerRecord& r = hdr_rw_->records[next & 1];
  constexpr auto relaxed = std::memory_order_relaxed;
  r.consumed.store(consumed_tag(gen_, consumed_), relaxed);
  r.gen.store(gen_, relaxed);
  r.read_off.store(bytes_consumed_, relaxed);
  r.pos_bytes.store(pos_bytes_ | (pos_pending_ ? kPosPending : 0), relaxed);
  r.inflight.store(0, relaxed);
  r.unproven.store(unproven_, relaxed);
#define RELAYFS_RECORD_COUNTER(field, member) r.field.store(member, relaxed);
  RELAYFS_CONSUMER_COUNTERS(RELAYFS_RECORD_COUNTER)
#undef RELAYFS_RECORD_COUNTER
  r.redelivered_bytes.store(redelivered_, relaxed);
  // release: the fields above are in place before the record becomes current; a daemon killed
  // before this store leaves the previous record current, whole.
  hdr_rw_->record_seq.store(next, std::memory_order_release);
  rec_seq_ = next;
  rec_total_ = total_read_;
}

void Consumer::wake_blocked_writers() noexcept {
  // A shared futex on the producer's memfd page: its blocked writers sleep there.
  ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&hdr_rw_->progress), FUTEX_WAKE, INT_MAX,
            nullptr, nullptr, 0);
}

bool Consumer::producer_closed() const noexcept {
  return hdr_->closed.load(std::memory_order_acquire) != 0;
}

void Consumer::publish() noexcept {
  // The record first: a daemon killed between the two never resumes behind what the producer
  // was told it may reuse.
  write_record();
  if (holds_ > 0) return;  // a reply is on its way: the writer must not reuse what it carries
  // Tagged with the reset generation, so a value published just before a reset cannot pass for
  // progress made after it (the producer ignores a stale tag). release: our reads of the
  // consumed sub-buffers happen before the producer, acquiring this, reuses them.
  hdr_rw_->consumed.store(consumed_tag(gen_, consumed_), std::memory_order_release);
#define RELAYFS_STORE_COUNTER(field, member) \
  hdr_rw_->field.store(member, std::memory_order_relaxed);
  RELAYFS_CONSUMER_COUNTERS(RELAYFS_STORE_COUNTER)
#undef RELAYFS_STORE_COUNTER
  // seq_cst: the Dekker pair of Producer::wait_for_room (blocked++, then the futex compares
  // `progress`): either a blocked writer is seen here, or its futex wait finds the new value.
  hdr_rw_->progress.fetch_add(1, std::memory_order_seq_cst);
  if (hdr_->blocked.load(std::memory_order_seq_cst) != 0) wake_blocked_writers();
}

// Returns true if the position is usable now: adopts a finished reset, and reports false while
// one is in progress.
bool Consumer::sync_reset() noexcept {
  const uint32_t g = hdr_->reset_gen.load(std::memory_order_acquire);
  if (g == gen_) return true;
  if (g & 1) return false;
  // What we had not read of the old generation is gone: the new one starts where the reset
  // said. The value is the producer's: it may not take the position back, nor past what was
  // produced.
  const uint64_t at = pos_bytes_ + bytes_consumed_;
  uint64_t start = hdr_->reset_bytes.load(std::memory_order_relaxed);
  if (start < at || start > hdr_->bytes_produced.load(std::memory_order_relaxed)) {
    ++corrupt_events_;
    start = std::max(at, std::min(start, hdr_->bytes_produced.load(std::memory_order_relaxed)));
  }
  lost_reset_ += start - at;
  gen_ = g;
  consumed_ = 0;
  bytes_consumed_ = 0;
  pos_bytes_ = start;
  pos_pending_ = false;  // what a lap had left uncounted went with the reset, counted there
  ready_seq_ = ~uint64_t{0};
  ready_ = 0;
  publish();
  return true;
}

int Consumer::corrupt() noexcept {
  // A reset that started after our check explains any inconsistency; only then is it news.
  const int rc = view_.corrupt(gen_);
  if (rc != 0) ++corrupt_events_;
  return rc;
}

// Moves past sub-buffer consumed_, whose bytes up to bytes_consumed_ (its padding) are read or
// counted by now.
void Consumer::consume_one() noexcept {
  ++consumed_;
  pos_bytes_ += bytes_consumed_;
  bytes_consumed_ = 0;
  publish();
}

// The writer lapped us, and pos_bytes_ is only a lower bound of where sub-buffer consumed_
// starts: once its slot tells (start_of), the difference is what the lap took unread, counted in
// lost_overrun_bytes. Until then, bytes_unread includes it.
void Consumer::settle(uint64_t produced) noexcept {
  uint64_t start;
  if (!pos_pending_ || !start_of(consumed_, produced, &start)) return;
  lost_overrun_ += start - pos_bytes_;
  pos_bytes_ = start;
  pos_pending_ = false;
}

// Where sub-buffer seq starts in the byte stream, from its slot's start_bytes, when the slot
// still holds seq's value: the writer stores it before `produced` moves to seq, and a switch that
// overwrites it holds the busy word first and then moves `produced` on; the seqlock check of
// View::settled tells. The value must also lie between where we know seq starts at the earliest
// (pos_bytes_, for seq == consumed_) and what was produced.
bool Consumer::start_of(uint64_t seq, uint64_t produced, uint64_t* out) const noexcept {
  if (seq > produced || produced - seq >= n_) return false;
  const uint64_t v = view_.start_bytes(seq);
  const bool settled = view_.settled(produced);  // orders the load above before the checks
  // Once finalized no switch is coming: a busy word is one a killed producer left.
  if (!finalized_ && !settled) return false;  // a switch is on its way: look again later
  if (v < pos_bytes_ || v > hdr_->bytes_produced.load(std::memory_order_acquire)) return false;
  *out = v;
  return true;
}

// The longest prefix of sub-buffer seq known to be wholly committed: what the shared area proves
// now (View::committed_prefix), or what it proved before, remembered (the writers' bound can go
// down).
uint32_t Consumer::proven_prefix(uint64_t seq, bool current) const noexcept {
  const uint32_t remembered = ready_seq_ == seq ? ready_ : 0;
  return std::max(remembered, view_.committed_prefix(seq, current));
}

uint32_t Consumer::remember_prefix(uint64_t seq, uint32_t prefix) noexcept {
  ready_seq_ = seq;
  ready_ = prefix;
  return prefix;
}

int Consumer::next_span(Span* s) noexcept {
  s->len = 0;
  for (uint64_t step = 0; step < uint64_t{n_} + kSlackSteps; ++step) {
    // The padding, commit and ready values of every sub-buffer closed before `produced` was
    // stored are visible below (View::produced).
    View::Next at;
    const int found = view_.next(consumed_, &at);
    if (found < 0) return corrupt();
    if (found == 0) return 0;  // a switch into our slot is undecided: nothing now
    const uint64_t produced = at.produced;
    if (at.seq != consumed_) skip_lapped(produced);
    settle(produced);
    const uint64_t seq = consumed_;
    const uint32_t slot = slot_of(seq, n_);
    if (seq < produced) {
      uint32_t end;
      if (view_.data_end(seq, &end) != 0) return corrupt();
      if (bytes_consumed_ >= end) {  // read to its padding: consumed
        consume_one();
        continue;
      }
      // Closed, but writers may still be committing into it: read only the proven prefix.
      const uint32_t limit = view_.complete(seq)
                                 ? end
                                 : std::min(end, remember_prefix(seq, proven_prefix(seq, false)));
      if (limit > bytes_consumed_) {
        *s = {seq, slot, bytes_consumed_, limit - bytes_consumed_, end, true};
        return 0;
      }
      if (finalized_) {
        // No writer is left to commit what is missing (a producer died mid-record): what cannot
        // be proven whole is skipped and counted, so later sub-buffers still reach the reader.
        lost_uncommitted_ += end - bytes_consumed_;
        bytes_consumed_ = end;
        consume_one();
        continue;
      }
      return 0;
    }
    const uint32_t limit = remember_prefix(seq, proven_prefix(seq, true));
    if (limit > bytes_consumed_) {
      *s = {seq, slot, bytes_consumed_, limit - bytes_consumed_, 0, false};
      return 0;
    }
    if (finalized_) {
      // The same for the last sub-buffer: count what was reserved past the proven prefix, once.
      const uint32_t reserved = view_.reserved_end(seq);
      if (reserved > bytes_consumed_) {
        lost_uncommitted_ += reserved - bytes_consumed_;
        bytes_consumed_ = reserved;
        remember_prefix(seq, reserved);
        publish();
      }
    }
    return 0;
  }
  return 0;
}

// The writer lapped us (overwrite mode): resume at the oldest sub-buffer it has not begun to
// reuse, as the kernel does, and count what was skipped: in sub-buffers now, in bytes once
// where the resumed one starts is known (settle).
void Consumer::skip_lapped(uint64_t produced) noexcept {
  const uint64_t resume = oldest_unlapped(produced, n_);
  overruns_ += resume - consumed_;
  pass_to(resume);
  settle(produced);
}

// Moves to sub-buffer seq without reading what lies between: its bytes are counted when settle()
// learns where seq starts.
void Consumer::pass_to(uint64_t seq) noexcept {
  pos_bytes_ += bytes_consumed_;
  consumed_ = seq;
  bytes_consumed_ = 0;
  pos_pending_ = true;
  publish();
}

ssize_t Consumer::read(void* dst, size_t count, bool one_subbuf) noexcept {
  if (count == 0) return 0;
  if (!sync_reset()) return 0;
  char* out = static_cast<char*>(dst);
  size_t done = 0;
  unsigned stalls = 0;
  while (done < count) {
    Span s;
    const int rc = next_span(&s);
    if (rc < 0) return done ? static_cast<ssize_t>(done) : rc;
    if (s.len == 0) break;
    const size_t n = std::min<size_t>(count - done, s.len);
    copy_racy(out + done, view_.subbuf(s.slot) + s.off, n);
    if (!view_.still_valid(s.seq, gen_)) {
      // Lapped or reset while we copied: drop the copy; next_span skips what was overwritten.
      if (++stalls > n_ + kSlackSteps || !sync_reset()) break;
      continue;
    }
    bytes_consumed_ += static_cast<uint32_t>(n);
    done += n;
    total_read_ += n;
    // As the kernel does, a closed sub-buffer read up to its padding is consumed at once, so
    // poll() stops reporting it.
    if (s.closed && bytes_consumed_ >= s.end) {
      consume_one();
      if (one_subbuf) break;
    }
  }
  hdr_rw_->bytes_consumed.store(total_read_, std::memory_order_relaxed);
  write_record();
  return static_cast<ssize_t>(done);
}

ssize_t Consumer::plan_read(iovec* iov, int max_iov, size_t count, int* n_iov) noexcept {
  *n_iov = 0;
  if (count == 0 || max_iov <= 0 || !sync_reset()) return 0;
  saved_ = {consumed_,     ready_seq_, total_read_,     overruns_, lost_uncommitted_,
            lost_overrun_, pos_bytes_, bytes_consumed_, ready_,    pos_pending_};
  hold();
  size_t done = 0;
  while (done < count && *n_iov < max_iov) {
    Span s;
    const int rc = next_span(&s);
    if (rc < 0) {
      if (done) break;
      abort_read();
      return rc;
    }
    if (s.len == 0) break;
    const size_t n = std::min<size_t>(count - done, s.len);
    // Inside the mapping: next_span bounded slot, off and len by the private geometry.
    iov[(*n_iov)++] = {const_cast<char*>(view_.subbuf(s.slot) + s.off), n};
    bytes_consumed_ += static_cast<uint32_t>(n);
    done += n;
    total_read_ += n;
    if (s.closed && bytes_consumed_ >= s.end) consume_one();
  }
  if (done == 0)
    finish_read();  // keep what next_span skipped (empty sub-buffers)
  else
    write_record();  // held: the record says how much is on its way
  return static_cast<ssize_t>(done);
}

void Consumer::finish_read() noexcept {
  release();
}

void Consumer::abort_read() noexcept {
  consumed_ = saved_.consumed;
  ready_seq_ = saved_.ready_seq;
  total_read_ = saved_.total_read;
  overruns_ = saved_.overruns;
  lost_uncommitted_ = saved_.lost_uncommitted;
  lost_overrun_ = saved_.lost_overrun;
  pos_bytes_ = saved_.pos_bytes;
  pos_pending_ = saved_.pos_pending;
  bytes_consumed_ = saved_.bytes_consumed;
  ready_ = saved_.ready;
  // Nothing reached the producer since the plan began; the record took only its inflight, which
  // goes back down now (another hold may keep the record where it is).
  write_record();
  release();
}

int Consumer::take_extent(Extent* e) noexcept {
  if (!sync_reset()) return 0;
  Span s;
  if (int rc = next_span(&s); rc < 0) return rc;
  if (s.len == 0) return 0;
  // A closed sub-buffer goes whole (its rest, after a partial read), once nothing is left to
  // commit in it; the open one only once no writer is left.
  const bool whole = s.closed && s.off + s.len == s.end;
  if (!whole && !finalized_) return 0;
  *e = {s.seq, gen_, s.slot, s.off, s.len, s.end, s.closed, pos_bytes_ + s.off, !pos_pending_};
  return 1;
}

bool Consumer::extent_intact(const Extent& e) noexcept {
  if (!sync_reset() || e.gen != gen_) return false;
  // Our own position says whether another reader took any of it meanwhile.
  if (consumed_ != e.seq || bytes_consumed_ != e.off) return false;
  // The seqlock check of read(): the bytes that went to disk were read before this.
  return view_.still_valid(e.seq, gen_);
}

bool Consumer::position(uint64_t* at) noexcept {
  if (sync_reset()) settle(hdr_->produced.load(std::memory_order_acquire));
  *at = pos_bytes_ + bytes_consumed_;
  return !pos_pending_;
}

int Consumer::finish_extent(const Extent& e, uint32_t n) noexcept {
  if (n == 0 || n > e.len || !extent_intact(e)) return 0;
  bytes_consumed_ += n;
  total_read_ += n;
  if (e.closed && bytes_consumed_ >= e.end)
    consume_one();  // read up to its padding: consumed, as read() does
  else {
    hdr_rw_->bytes_consumed.store(total_read_, std::memory_order_relaxed);
    write_record();
  }
  return 1;
}

bool Consumer::data_available() noexcept {
  if (!sync_reset()) return false;
  Span s;
  return next_span(&s) == 0 && s.len != 0;
}

int Consumer::subbufs_consumed(uint64_t n) noexcept {
  if (n == 0) return -EINVAL;
  if (!sync_reset()) return 0;
  uint64_t produced = view_.produced();
  if (produced < consumed_) return corrupt();
  // As the kernel's relay_subbufs_consumed: n more, clamped to what was produced; whether the
  // writer lapped what lies past them is for the next read to find.
  const uint64_t target = consumed_ + std::min(n, produced - consumed_);
  if (target == consumed_) return 0;  // nothing closed to release: keep our place
  // The oldest may have been overwritten (overwrite mode): they were not the reader's to have
  // whole, so they count as overruns, and their bytes as lost once settle() knows them.
  // Lapped are the ones before the oldest the writer has not begun to reuse, produced - n + 1,
  // or produced - n too when the writer is stopped: found in one step, not walked, because
  // `produced` is the producer's to say and may be anything.
  uint64_t seq = consumed_;
  if (view_.reused(seq, produced) == Reuse::kYes) {
    seq = std::min(target, oldest_unlapped(produced, n_));  // kYes: produced - consumed_ >= n_
    if (seq > consumed_ && view_.reused(seq - 1, produced) != Reuse::kYes) --seq;
  }
  if (seq > consumed_) {
    overruns_ += seq - consumed_;
    pass_to(seq);
  }
  // The rest the reader had through its mapping: their bytes count as consumed. Each one's length
  // is its padding's, read while its slot is still its own.
  uint64_t bytes = 0;
  const uint64_t from = seq;
  // At most n_ of them: past the lapped ones, target is within n_ of what was produced.
  for (; seq < target; ++seq) {
    uint32_t end;
    if (view_.data_end(seq, &end) != 0) return corrupt();
    // Seqlock reader side, as in View::still_valid: the padding was loaded before these checks,
    // and a reset since our sync_reset (which zeroes every padding) voids them.
    std::atomic_thread_fence(std::memory_order_acquire);
    if (hdr_->reset_gen.load(std::memory_order_relaxed) != gen_) return 0;
    produced = view_.produced();
    if (view_.reused(seq, produced) == Reuse::kYes)
      break;  // lapped meanwhile: the next read skips it
    bytes += end;
  }
  if (seq > from) {
    const uint64_t unread = bytes - std::min<uint64_t>(bytes, bytes_consumed_);
    total_read_ += unread;
    pos_bytes_ += bytes_consumed_ + unread;
    consumed_ = seq;
    bytes_consumed_ = 0;
    publish();
  }
  settle(produced);
  return 0;
}

int Consumer::arm_doorbell(bool whole_subbufs) noexcept {
  return core::arm_doorbell(*hdr_rw_, whole_subbufs ? kWakeSubbuf : kWakeRecord);
}

bool Consumer::subbuf_ready() noexcept {
  if (!sync_reset()) return false;
  Span s;
  if (next_span(&s) != 0 || s.len == 0) return false;
  // The tail of a buffer its producer closed is as whole as it will ever be: an mmap reader
  // takes it (relay_reader_next), so poll() says so.
  if (!s.closed) return producer_closed();
  return view_.complete(s.seq);
}

bool Consumer::at_record_boundary() const noexcept {
  // Every place a read can stop short of is inside a span, whose end is a proven-committed
  // prefix (a record boundary) or the padding; bytes_consumed_ == 0 is a sub-buffer start.
  return bytes_consumed_ == 0 || (ready_seq_ == consumed_ && bytes_consumed_ == ready_);
}

int Consumer::consume_upto(uint32_t gen, uint64_t seq) noexcept {
  if (!sync_reset()) return 0;
  if ((gen & 0xffff) != (gen_ & 0xffff)) return -ESTALE;  // a count from before a reset
  if (seq <= consumed_) return 0;
  const uint64_t produced = view_.produced();
  if (produced < consumed_) return corrupt();
  // The reader's number is not trusted either. produced + 1 takes the tail of a closed buffer
  // too (relay_reader_next gives it once the producer closed).
  const bool tail = seq > produced && producer_closed();
  seq = std::min(seq, produced);
  // The mmap reader skipped what the writer had lapped (relay_reader_next): those are overruns,
  // as they are when read() skips them.
  if (view_.reused(consumed_, produced) == Reuse::kYes) skip_lapped(produced);
  if (seq > consumed_)
    if (int rc = subbufs_consumed(seq - consumed_); rc) return rc;
  if (tail && consumed_ == produced) take_tail();
  return 0;
}

void Consumer::take_tail() noexcept {
  // The producer closed the buffer: what is proven committed of its last sub-buffer is all it
  // will ever hold (relay_close waits for every commit). The reader had it through its mapping.
  Span s;
  if (next_span(&s) != 0 || s.len == 0 || s.closed) return;
  bytes_consumed_ += s.len;
  total_read_ += s.len;
  publish();
}

uint64_t Consumer::expire() noexcept {
  if (!finalized_ || !sync_reset()) return 0;
  uint64_t freed = 0;
  // As read() walks, without copying; bounded like it, by the buffer's size in sub-buffers
  // (each step passes one span, and a finalized buffer gets no new ones).
  for (uint64_t step = 0; step < 2 * (uint64_t{n_} + kSlackSteps); ++step) {
    Span s;
    if (next_span(&s) != 0 || s.len == 0) break;
    bytes_consumed_ += s.len;
    freed += s.len;
    if (s.closed && bytes_consumed_ >= s.end) consume_one();
  }
  lost_expired_ += freed;
  publish();
  return freed;
}

void Consumer::readahead_lost(uint64_t n) noexcept {
  n = std::min(n, total_read_);
  total_read_ -= n;
  lost_readahead_ += n;
  unproven_ -= std::min(n, unproven_);  // counted now: no longer the next daemon's to count
  publish();
}

void Consumer::note_unproven(int64_t delta) noexcept {
  const uint64_t d = delta < 0 ? static_cast<uint64_t>(-delta) : static_cast<uint64_t>(delta);
  unproven_ = delta < 0 ? unproven_ - std::min(d, unproven_) : unproven_ + d;
  write_record();
}

uint64_t Consumer::bytes_produced() noexcept {
  sync_reset();
  // The closed sub-buffers plus the committed prefix of the one being written (View), with
  // what we proved of it before. Whether the reader is lapped is irrelevant.
  const uint64_t total = view_.committed_bytes(ready_seq_, ready_);
  // The producer's counter runs on across resets; if it went backwards, count on from what we
  // had already reported rather than shrink.
  bytes_produced_seen_ = std::max(bytes_produced_seen_, total);
  return bytes_produced_seen_;
}

BufferStats Consumer::stats() noexcept {
  BufferStats st;
  st.subbuf_size = size_;
  st.n_subbufs = n_;
  st.bytes_produced = bytes_produced();
  st.subbufs_produced = hdr_->produced.load(std::memory_order_acquire);
  st.subbufs_consumed = consumed_;
  st.bytes_consumed = total_read_;
  st.lost_full = hdr_->lost_full.load(std::memory_order_relaxed);
  st.lost_too_big = hdr_->lost_too_big.load(std::memory_order_relaxed);
  st.lost_wrap = hdr_->lost_wrap.load(std::memory_order_relaxed);
  settle(hdr_->produced.load(std::memory_order_acquire));
  st.bytes_unread = st.bytes_produced - std::min(st.bytes_produced, pos_bytes_ + bytes_consumed_);
  st.overruns = overruns_;
  st.lost_uncommitted = lost_uncommitted_;
  st.lost_overrun_bytes = lost_overrun_;
  st.lost_reset_bytes = lost_reset_;
  st.lost_readahead_bytes = lost_readahead_;
  st.lost_expired_bytes = lost_expired_;
  st.corrupt = corrupt_events_;
  st.redelivered_bytes = redelivered_;
  return st;
}

}  // namespace relayfs::core
