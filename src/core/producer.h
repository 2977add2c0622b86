// Producer: the writing side of one relay buffer. Any number of threads of the producer process
// may write the same buffer at once; the fast path takes no lock and makes no system call.
//
// A write is a reservation (one CAS on the position word, or for a buffer bound to its CPU an
// rseq section with no locked instruction: bind_cpu), a copy into the shared data area, and a
// commit (one atomic add on the sub-buffer's commit counter, or for a bound buffer an rseq add on
// a counter only that CPU writes: again no locked instruction). A record that does not fit in
// the current sub-buffer takes the slow path (producer.cc): one writer claims the switch, closes
// the sub-buffer with its padding, runs the subbuf_start hook and opens the next one, while the
// others wait for it. Records are never split across sub-buffers.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "core/bell.h"
#include "core/buffer.h"
#include "core/geometry.h"
#include "core/layout.h"
#include "core/rseq.h"

namespace relayfs::core {

class Producer;

// write()/reserve() on a buffer bound to a CPU (bind_cpu), from a thread not running on that
// CPU: nothing was written; pick the buffer of the CPU the thread is on now and write there.
inline constexpr int kOtherCpu = -EXDEV;

// The client's hooks: the core's form of the spec's struct rchan_callbacks (and of the 2005
// code's deliver and buf_full). Every member may be null. ctx is passed back untouched.
struct ProducerHooks {
  // At every sub-buffer switch, and once at open and at reset with prev_subbuf == nullptr.
  // prev_padding is the number of unused bytes at the end of prev_subbuf. May call
  // Producer::subbuf_start_reserve() to keep header bytes at the start of subbuf. Returns true to
  // switch, false to refuse it: the record is dropped and counted, and the next write asks again
  // with the same arguments. Null means the spec's default: switch unless the buffer is full.
  // Runs with the switch held: it must not write to the same buffer.
  bool (*subbuf_start)(void* ctx, Producer& p, void* subbuf, void* prev_subbuf,
                       uint32_t prev_padding) = nullptr;
  // A sub-buffer whose reserved slots have all been committed, and which can take no more.
  void (*deliver)(void* ctx, Producer& p, uint32_t slot, void* subbuf) = nullptr;
  // The buffer just became full: a switch was refused for lack of a consumed sub-buffer.
  void (*buf_full)(void* ctx, Producer& p, uint32_t slot, void* subbuf) = nullptr;
  // A reader armed the doorbell (ShmHeader::waiters) and new data became readable.
  void (*wakeup)(void* ctx, Producer& p) = nullptr;
  void* ctx = nullptr;
  // The buffer's mmap readers' own bells (bell.h), rung wherever a whole sub-buffer may have
  // become readable, without the daemon. Null: none. Must outlive the Producer.
  Bells* bells = nullptr;
  // The client declares overwrite mode. Only loss accounting uses it: a switch refused because
  // the next sub-buffer still has a record in flight is a wrap, even when the buffer is full.
  // Undeclared, the mode is learned when subbuf_start first switches into a full buffer.
  bool overwrite = false;
};

// A slot handed out by reserve(): write exactly len bytes at ptr, then commit().
struct Reservation {
  char* ptr = nullptr;
  uint32_t len = 0;
  uint32_t slot = 0;
  uint32_t off = 0;   // offset of ptr inside its sub-buffer
  uint64_t base = 0;  // commit-counter value at the start of this sub-buffer's lap
};

class Producer {
 public:
  // Opens buf for writing: begins sub-buffer 0 by running subbuf_start with prev_subbuf ==
  // nullptr (its return value is ignored there, as in the kernel). buf must outlive this object,
  // and only one Producer may drive a buffer.
  explicit Producer(Buffer& buf, const ProducerHooks& hooks = {});
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Copies one record into the buffer. Thread-safe.
  // Returns 0, or
  //   -EINVAL   len == 0;
  //   -EMSGSIZE the record can never fit a sub-buffer (counted in lost_too_big);
  //   -ENOSPC   the switch to a new sub-buffer was refused: no-overwrite buffer full, or the next
  //             sub-buffer still being committed from its last lap (lost_full / lost_wrap);
  //   -ETIMEDOUT blocking mode: no room came within the timeout (counted as -ENOSPC is);
  //   -EPIPE    the buffer was closed;
  //   kOtherCpu bound to a CPU (bind_cpu) and called from another one.
  inline int write(const void* data, size_t len) noexcept;

  // Reserves len bytes for the caller to fill and then commit(). Same returns as write().
  // Until the commit, readers stop short of the reserved bytes.
  inline int reserve(size_t len, Reservation* r) noexcept;

  // Publishes a reservation's bytes to readers.
  inline void commit(const Reservation& r) noexcept;

  // The inline relay_write's calls back (relay_fast.h, relay.h). commit_remote: commits r, which
  // was reserved on the bound CPU, from a thread that has moved off it (the atomic counter).
  // commit_events: what a commit whose count was v left to do (RELAY_FAST_EV_* bits): deliver and
  // wake for a completed sub-buffer, wake every waiter after a late commit, ring the doorbell.
  void commit_remote(const Reservation& r) noexcept;
  void commit_events(uint32_t slot, uint64_t v, unsigned ev) noexcept;
  // The inline relay_write's view of this buffer: `on` once bind_cpu made both the reservation
  // and the commit rseq sections (fenced_commits()). Valid while this Producer lives.
  relay_fast_buf fast_desc() const noexcept;

  // reserve() for a record the caller commits later, in another call, with commit_at
  // (relay_reserve, relay_commit). Same returns. Until then the calling thread holds it open:
  // while it holds one, on any buffer, a blocking write of its does not wait for room, since the
  // reader may be waiting for that very record.
  inline int reserve_held(size_t len, Reservation* r) noexcept;

  // Commits the reservation that begins at ptr and is len bytes long, when all the caller kept
  // is the pointer (relay_commit), and ends one reserve_held() of the calling thread (whichever
  // thread reserved it). Returns false if ptr is not inside this buffer: nothing changes.
  bool commit_at(void* ptr, size_t len) noexcept;

  // Forces a switch: the current sub-buffer, even empty, becomes a produced one (relay_flush).
  // Returns 0, or -EPIPE when closed.
  int flush() noexcept;

  // Returns the buffer to its initial state (relay_reset): all data discarded, sub-buffer 0
  // begun again through subbuf_start. The caller guarantees that no writer is active. Loss
  // counters and bytes_produced keep counting, so a reset never hides a loss or shrinks a file.
  void reset() noexcept;

  // No more writes: later writes fail with -EPIPE. What was committed stays readable.
  void close() noexcept;

  // relay_buf_full(): every sub-buffer is produced and none of them consumed.
  bool buf_full() const noexcept;

  // Blocking mode (LTTng's "blocking" channels): a write that finds the buffer full waits for
  // the consumer to free a sub-buffer, for at most timeout_ns (< 0: no limit), instead of being
  // dropped. Only a write that times out is dropped and counted. The wait costs nothing until
  // the buffer is full: it sleeps on a futex the consumer wakes only when a writer waits.
  void set_blocking(bool on, int64_t timeout_ns) noexcept {
    blocking_ = on;
    block_timeout_ns_ = timeout_ns;
  }
  // The consumer is gone (its daemon died): blocked writers stop waiting and drop.
  void abandon() noexcept;

  // Per-CPU fast path: from now on writers reserve with an rseq section on `cpu` instead of a
  // CAS (rseq.h), and commit with an rseq add on the slot's `commit_cpu` (layout.h) instead of
  // an atomic add, so a record costs no locked instruction. The commit needs the process to be
  // registered for membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) (rseq::fenced_commits), which the
  // doorbell's arming side then issues (doorbell.h); where that fails, the commit stays locked.
  // Every write must then come from a thread running on `cpu`; others get kOtherCpu. A commit
  // may come from anywhere (a thread that migrated after its reservation, relay_commit from
  // another thread): off the CPU it takes the atomic counter. Slow-path changes (switch, flush,
  // close) work from any CPU. Call before any writer starts. Returns false, and changes nothing,
  // where rseq is unavailable.
  bool bind_cpu(uint32_t cpu) noexcept;
  // Whether commits take the rseq add (bind_cpu succeeded and the membarrier registration did).
  bool fenced_commits() const noexcept { return local_commit_; }

  // subbuf_start_reserve(): inside subbuf_start only, keeps len more header bytes at the start
  // of the new sub-buffer. Header bytes are data: readers see them.
  void subbuf_start_reserve(size_t len) noexcept { header_ += len; }

  uint32_t subbuf_size() const noexcept { return size_; }
  uint32_t n_subbufs() const noexcept { return n_; }
  Buffer& buffer() const noexcept { return *buf_; }
  char* subbuf_data(uint32_t slot) const noexcept { return data_ + slot_offset(slot, size_); }

 private:
  // Reservations the calling thread holds open (reserve_held) and has not committed yet, on any
  // buffer. A count, not a flag: relay_reserve may nest. Another thread may commit what this one
  // reserved, so the count only guards waiting (reserve_slow), and never goes below 0.
  static inline thread_local int held_ = 0;

  int reserve_slow(size_t len, Reservation* r) noexcept;
  int try_slow(size_t len, Reservation* r) noexcept;
  int drop(std::atomic<uint64_t>& counter, int err, bool full) noexcept;
  bool wait_for_room(uint32_t seen, int64_t deadline_ns) noexcept;
  int switch_locked(uint64_t w, uint32_t len, Reservation* r, bool opening) noexcept;
  bool take_switch(uint64_t* w) noexcept;
  void release_switch(uint64_t word) noexcept;
  bool claim_word(uint64_t* w, uint64_t to) noexcept;
  bool reserve_here(uint64_t* w, uint64_t to, int* rc) noexcept;
  bool wait_switch(uint64_t* w) const noexcept;
  bool commit_bytes(uint32_t slot, uint64_t base, uint64_t len) noexcept;
  inline uint64_t add_commit(SubbufMeta& m, uint32_t len) noexcept;
  inline void finish_commit(const Reservation& r, uint64_t v) noexcept;
  uint64_t add_commit_remote(SubbufMeta& m, uint32_t len) noexcept;
  bool deliver_once(uint32_t slot, uint64_t end) noexcept;
  void on_complete(uint32_t slot, uint64_t end) noexcept;
  void deliver_closed(uint64_t produced) noexcept;
  void ring() noexcept;
  void wake_readers() noexcept;
  void open() noexcept;

  Buffer* buf_;
  ShmHeader* hdr_;
  SubbufMeta* meta_;
  char* data_;
  uint32_t size_;
  uint32_t n_;
  ProducerHooks hooks_;
  // Commit-counter value at the start of each slot's current lap. Written by the switching
  // writer before it publishes the new position word with release, read by writers after their
  // acquiring CAS on that word.
  //
  // Process-local, like every member below: a fork child that writes the buffer (relay_open(3),
  // "fork(2)") drives a copy of this Producer, and a switch made in one process leaves the
  // other's entry for the new slot a lap (or more) behind, until that process itself switches
  // into the slot. Behind is harmless: a reservation's base is only compared with the shared
  // commit counter, whose values during the slot's real lap B lie in (B, B + S], out of reach of
  // a base k >= 1 laps lower, so commit() never raises `ready` wrongly and never takes the
  // sub-buffer for complete; it merely does neither. Readers then rely on their own proof
  // (Consumer::proven_prefix loads the commit counter and the word) and on the counter reaching
  // a full lap for closed sub-buffers, so every record stays readable, whole and once. What is
  // lost is an optimisation: `deliver` does not run for a sub-buffer such a commit completes, and
  // a sub-buffer waiter is rung by the next switch or close instead of by that commit (record
  // waiters are rung by every commit regardless).
  // Ahead is not harmless: after a reset in another process the real laps start again from 0,
  // and a base exactly one lap ahead matches the next lap's start, so a commit whose update of
  // `ready` comes after the slot's next lap has begun (a writer preempted between its add and
  // that update) could move the new lap's `ready` over bytes not yet committed. Hence
  // only the owner may reset (relay_reset fails with EPERM in a child), and relay_reset(3) asks
  // that a child that inherited the channel not write to it after the parent's reset.
  std::unique_ptr<uint64_t[]> lap_base_;
  // Header bytes reserved by the running subbuf_start hook; touched only with the switch held.
  uint64_t header_ = 0;
  // The subbuf_start hook has switched into a full buffer: overwrite mode. Switch holder only.
  // Per process: a fork child's copy may not have learned the mode, which only sorts a drop into
  // lost_full instead of lost_wrap.
  bool overwrite_seen_ = false;
  bool blocking_ = false;
  int64_t block_timeout_ns_ = -1;
  // The CPU whose rseq sections alone may move the position word forward, or -1: CAS.
  int32_t cpu_ = -1;
  // Commits on cpu_ take the rseq add on commit_cpu (bind_cpu): the process is registered for
  // the arming side's membarrier.
  bool local_commit_ = false;
  // For each slot, the lap end (committed-count value) of the last sub-buffer on_complete ran
  // for: each completion runs `deliver` once, whoever sees it first (on_complete). Process-local,
  // as the hooks are.
  std::unique_ptr<std::atomic<uint64_t>[]> delivered_;
  std::atomic<bool> abandoned_{false};
  // Numbers the switch claims made from other CPUs, so each stores a busy value of its own
  // (claim_word mixes in the process, whose fork child starts from the same count).
  std::atomic<uint32_t> remote_claims_{0};
};

inline int Producer::reserve(size_t len, Reservation* r) noexcept {
  uint64_t w = hdr_->wpos.load(std::memory_order_relaxed);
  for (;;) {
    const uint32_t off = word_off(w);
    // One test covers "does not fit", "switching", "stopped" and "closed" (relay_fast.h).
    if (!RELAY_FAST_FITS(off, len, size_)) [[unlikely]]
      return reserve_slow(len, r);
    if (cpu_ >= 0) {
      // rseq section on the buffer's CPU: same outcome as the CAS below, without the lock.
      int rc;
      if (!reserve_here(&w, w + len, &rc)) {
        if (rc != 0) return rc;
        continue;
      }
    } else if (!hdr_->wpos.compare_exchange_weak(w, w + len, std::memory_order_acquire,
                                                 std::memory_order_relaxed)) {
      // acquire: pairs with the switching writer's release of this word, so lap_base_ and the
      // new sub-buffer's header are visible before we use the slot.
      continue;
    }
    // Seqlock writer side: a reader copying an overwrite-mode sub-buffer re-reads `produced`
    // after its copy; this fence keeps our data stores after everything that made this slot
    // ours, so a reader that sees our bytes also sees the `produced` that lapped it.
    std::atomic_thread_fence(std::memory_order_release);
    const uint32_t slot = word_slot(w);
    r->ptr = data_ + slot_offset(slot, size_) + off;
    r->len = static_cast<uint32_t>(len);
    r->slot = slot;
    r->off = off;
    r->base = lap_base_[slot];
    return 0;
  }
}

// The rseq form of the reservation CAS. Returns true if the word went from *w to `to`.
// Otherwise *w is reloaded and *rc is 0 (look again) or kOtherCpu (the thread is elsewhere).
inline bool Producer::reserve_here(uint64_t* w, uint64_t to, int* rc) noexcept {
  static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t) &&
                std::atomic<uint64_t>::is_always_lock_free);
  const rseq::Cas got =
      rseq::cas_on_cpu(reinterpret_cast<uint64_t*>(&hdr_->wpos), *w, to, static_cast<uint32_t>(cpu_));
  if (got == rseq::Cas::kStored) return true;
  // Restarted sections land here too (preempted or signalled on the right CPU): only a thread
  // that really is elsewhere gives up.
  *rc = got == rseq::Cas::kOtherCpu && rseq::current_cpu() != cpu_ ? kOtherCpu : 0;
  *w = hdr_->wpos.load(std::memory_order_relaxed);
  return false;
}

// Adds len to slot m's committed count and returns the count it then saw (committed(), layout.h):
// exact when the add is atomic on an unbound buffer (every add is then totally ordered, so the
// last one sees the full lap); for a bound buffer a lower bound of the count after our add, since
// the other counter is read after our add without a fence.
inline uint64_t Producer::add_commit(SubbufMeta& m, uint32_t len) noexcept {
  // Unbound (or no membarrier): one locked add on one counter, inline as it always was.
  if (cpu_ < 0) return m.commit.fetch_add(len, std::memory_order_seq_cst) + len;
#ifdef RELAYFS_HAVE_RSEQ
  if (local_commit_) {
    // The rseq add on commit_cpu, as the inline relay_write makes it (relay_fast.h; layout.h
    // checks that SubbufMeta is its relay_fast_subbuf_meta).
    uint64_t v;
    for (;;) {
      if (relay_fast_commit_on_cpu(relay_fast_rseq_area(),
                                   reinterpret_cast<relay_fast_subbuf_meta*>(&m), len,
                                   static_cast<uint32_t>(cpu_), &v)) [[likely]]
        return v;
      // Aborted on our CPU (preempted, or a signal whose handler may have committed there too):
      // the section stored nothing; load and add again. Elsewhere: the atomic counter.
      if (rseq::current_cpu() != cpu_) break;
    }
  }
#endif
  return add_commit_remote(m, len);
}

inline void Producer::commit(const Reservation& r) noexcept {
  // Releases the record's bytes to readers that acquire the count (committed()). The locked add
  // (unbound) is seq_cst: with the load of `waiters` in relay_fast_after_commit, the Dekker pair of a
  // reader arming the doorbell. The rseq add is a plain store that x86 may hold in the store
  // buffer past that load: the arming side's membarrier takes its place (doorbell.h).
  finish_commit(r, add_commit(meta_[r.slot], r.len));
}

// What every commit does once its count v is known, whichever counter took it: the rules of
// relay_fast_after_commit (relay_fast.h), which the inline relay_write follows too. It raises the
// sub-buffer's proven-committed prefix (`ready`) so readers can return the record: with a plain
// store when nothing is in flight (the common case, no locked instruction), with a CAS only out
// of order (a writer preempted between reservation and commit; without it, records committed
// before a reservation held open by relay_reserve would wait for that one). A stale store can
// only lower `ready`, a lower bound either way. What is left (commit_events) is rare.
inline void Producer::finish_commit(const Reservation& r, uint64_t v) noexcept {
  const unsigned ev =
      relay_fast_after_commit(reinterpret_cast<const uint64_t*>(&hdr_->wpos),
                          reinterpret_cast<relay_fast_subbuf_meta*>(&meta_[r.slot]),
                          reinterpret_cast<const uint32_t*>(&hdr_->waiters), r.slot, r.off, r.len,
                          r.base, size_, v);
  if (ev != 0) [[unlikely]]
    commit_events(r.slot, v, ev);
}

inline int Producer::reserve_held(size_t len, Reservation* r) noexcept {
  const int rc = reserve(len, r);
  if (rc == 0) [[likely]]
    ++held_;
  return rc;
}

inline int Producer::write(const void* data, size_t len) noexcept {
  Reservation r;
  if (int rc = reserve(len, &r); rc != 0) [[unlikely]]
    return rc;
  std::memcpy(r.ptr, data, len);
  commit(r);
  return 0;
}

}  // namespace relayfs::core
