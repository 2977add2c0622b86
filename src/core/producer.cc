// The producer's slow path: sub-buffer switches, flush, reset and close.
#include "core/producer.h"

#include "core/geometry.h"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <climits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RELAYFS_CPU_RELAX() _mm_pause()
#else
#define RELAYFS_CPU_RELAX() ((void)0)
#endif

namespace relayfs::core {

// Every real offset, and offset + record length, stays below the remote claims' busy values.
static_assert(2 * kMaxSubbufSize <= kOffRemoteFirst);

namespace {

// The Producers whose switch this thread holds, innermost first, in a list on the stack of the
// SwitchScopes below. A write that finds the switch taken by its own thread comes from a hook
// or from a signal handler that interrupted the claim, the switch or its release; waiting would
// deadlock, so such a record is dropped and counted instead. A list, not one pointer: a hook
// may write to or flush another buffer, whose switch nests inside ours, and ending that inner
// switch must not forget ours (relay_flush from subbuf_start spun forever that way).
struct SwitchHold {
  const Producer* producer;
  const SwitchHold* outer;
};
thread_local const SwitchHold* tl_switch_held = nullptr;

bool holds_switch(const Producer* p) {
  for (const SwitchHold* h = tl_switch_held; h; h = h->outer)
    if (h->producer == p) return true;
  return false;
}

// Marks this thread as holding p's switch from before it claims the word until after it released
// it: a signal handler that interrupts the claim (a remote one sleeps in membarrier), the switch,
// or the release, and writes to p, must find its own thread named, or it waits forever for the
// busy word it interrupted. At worst, a handler that runs just before the claim or after the
// release drops a record it could have written (counted).
class SwitchScope {
 public:
  explicit SwitchScope(const Producer* p) : hold_{p, tl_switch_held} {
    // A handler must never find the list pointing at a hold not yet filled in.
    std::atomic_signal_fence(std::memory_order_seq_cst);
    tl_switch_held = &hold_;
    // The handler runs on this thread: only the compiler must keep the list set around the claim.
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~SwitchScope() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    tl_switch_held = hold_.outer;
  }
  SwitchScope(const SwitchScope&) = delete;
  SwitchScope& operator=(const SwitchScope&) = delete;

 private:
  const SwitchHold hold_;
};

// A refused switch in blocking mode: the caller waits for room instead of counting a loss.
// Internal only: nothing else on the slow path returns -EAGAIN.
constexpr int kRetry = -EAGAIN;

// Longest single sleep of a blocked writer: it looks again for a closed buffer or a vanished
// consumer at least this often.
constexpr int64_t kBlockSliceNs = 50'000'000;

int64_t mono_ns() {
  timespec ts;
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// The futex word is in a MAP_SHARED mapping that the consumer's process maps too: a shared (not
// private) futex, keyed by the memfd page.
uint32_t* futex_word(std::atomic<uint32_t>& a) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  return reinterpret_cast<uint32_t*>(&a);
}

void relax(unsigned spins) {
  if (spins < 128)
    RELAYFS_CPU_RELAX();
  else
    ::sched_yield();  // the switching writer was descheduled: let it run
}

}  // namespace

Producer::Producer(Buffer& buf, const ProducerHooks& hooks)
    : buf_(&buf),
      hdr_(buf.header()),
      meta_(buf.meta()),
      data_(buf.data()),
      size_(buf.geometry().subbuf_size),
      n_(buf.geometry().n_subbufs),
      hooks_(hooks),
      lap_base_(new uint64_t[buf.geometry().n_subbufs]()),
      delivered_(new std::atomic<uint64_t>[buf.geometry().n_subbufs]()) {
  overwrite_seen_ = hooks.overwrite;
  open();
}

bool Producer::commit_at(void* ptr, size_t len) noexcept {
  char* p = static_cast<char*>(ptr);
  const uint64_t total = uint64_t{size_} * n_;
  if (p < data_ || p >= data_ + total || len == 0 || len > size_) return false;
  const uint64_t at = static_cast<uint64_t>(p - data_);
  Reservation r;
  r.ptr = p;
  r.len = static_cast<uint32_t>(len);
  r.slot = static_cast<uint32_t>(at / size_);
  r.off = static_cast<uint32_t>(at % size_);
  // Stable while the reservation is uncommitted: its slot cannot begin another lap before.
  r.base = lap_base_[r.slot];
  commit(r);
  if (held_ > 0) --held_;
  return true;
}

bool Producer::buf_full() const noexcept {
  // relay_fast.h's rule, which the inline relay_write's drop follows too.
  return relay_fast_buf_full(reinterpret_cast<const uint64_t*>(&hdr_->produced),
                         reinterpret_cast<const uint64_t*>(&hdr_->consumed),
                         reinterpret_cast<const uint32_t*>(&hdr_->reset_gen), n_) != 0;
}

void Producer::ring() noexcept {
  // exchange: one wake-up per arming, however many writers see the doorbell set.
  if (hdr_->waiters.exchange(0, std::memory_order_acq_rel) != 0 && hooks_.wakeup)
    hooks_.wakeup(hooks_.ctx, *this);
}

// Something a waiting reader may wait for just happened: a sub-buffer completed, a switch ended,
// the buffer closed. Rings the daemon's doorbell if a reader armed it, and every mmap reader's
// own bell that is armed (Bells::ring). Called after a seq_cst RMW or store that published the
// change: with the seq_cst loads of `waiters` and of each bell's `armed`, the Dekker pair of a
// reader's arming (Consumer::arm_doorbell, arm_bell). Out of line: once per sub-buffer at most.
void Producer::wake_readers() noexcept {
  if (hdr_->waiters.load(std::memory_order_seq_cst) != 0) ring();
  if (hooks_.bells) hooks_.bells->ring();
}

// The sub-buffer in `slot` whose lap ends at committed count `end` was seen complete. Who sees it
// is not one writer any more: with the rseq commit (bind_cpu) a commit on the buffer's CPU and an
// atomic one from elsewhere (a migrated writer, the switch's padding) each add to their own
// counter and then read the other's with no fence between, so the last two may each see the
// other's old value, or both the full lap. Hence:
//  - exact once: whoever sees it complete runs `deliver` only if it moves delivered_[slot] up to
//    `end` (a CAS, once per sub-buffer); a lap end only grows, so a stale caller finds it past;
//  - never missed: a completion both writers missed is found by the next switch, or by the retry
//    of a switch refused because the lap was short then (deliver_closed, before the slot can be
//    reused: a switch into it first checks its last lap is complete), or by close, at the latest.
//    For unbound buffers every add is one RMW on one counter, the last one sees the full lap, and
//    `deliver` runs at once, as before.
// The consumer never relies on this: it decides completeness itself (View::complete). Sub-buffer
// waiters are rung by the switch that closes a sub-buffer and by every late commit into a closed
// one (Producer::commit), not here only; ringing here as well is harmless (one ring per arming).
bool Producer::deliver_once(uint32_t slot, uint64_t end) noexcept {
  // relaxed: the count only decides who runs `deliver`; what it reads was made visible by the
  // acquire loads of the counters that proved the sub-buffer complete.
  uint64_t seen = delivered_[slot].load(std::memory_order_relaxed);
  do {
    if (seen >= end) return false;  // delivered already (or a later lap was)
  } while (!delivered_[slot].compare_exchange_weak(seen, end, std::memory_order_relaxed));
  if (hooks_.deliver) hooks_.deliver(hooks_.ctx, *this, slot, subbuf_data(slot));
  return true;
}

void Producer::on_complete(uint32_t slot, uint64_t end) noexcept {
  deliver_once(slot, end);
  // A whole sub-buffer is ready: what a sub-buffer waiter (an mmap reader) waits for.
  wake_readers();
}

// The backstop of on_complete: every closed sub-buffer still in its slot (the last n before
// `produced`) that is complete and not yet delivered. Only a bound buffer with rseq commits can
// have such; called by the switch holder and by close, so at most n loads per switch.
void Producer::deliver_closed(uint64_t produced) noexcept {
  if (!local_commit_) return;
  for (uint64_t seq = produced > n_ ? produced - n_ : 0; seq < produced; ++seq) {
    const uint32_t slot = slot_of(seq, n_);
    const uint64_t end = lap_end(seq, n_, size_);
    if (delivered_[slot].load(std::memory_order_relaxed) < end && committed(meta_[slot]) == end)
      on_complete(slot, end);
  }
}

// The atomic side of add_commit, out of line: every commit of an unbound buffer, and a bound
// buffer's commits made off its CPU and its switches' padding and header bytes.
uint64_t Producer::add_commit_remote(SubbufMeta& m, uint32_t len) noexcept {
  // seq_cst: see commit(). Off the buffer's CPU we may not touch commit_cpu (layout.h).
  const uint64_t v = m.commit.fetch_add(len, std::memory_order_seq_cst) + len;
  // A bound buffer's count is the sum: acquire, the bytes of the rseq commits it counts.
  return cpu_ >= 0 ? v + m.commit_cpu.load(std::memory_order_acquire) : v;
}

void Producer::commit_remote(const Reservation& r) noexcept {
  finish_commit(r, add_commit_remote(meta_[r.slot], r.len));
}

void Producer::commit_events(uint32_t slot, uint64_t v, unsigned ev) noexcept {
  if (ev & RELAY_FAST_EV_COMPLETE) on_complete(slot, v);
  // Sub-buffer waiters (the daemon's, and mmap readers' bells) are rung by the switch that
  // closed the sub-buffer; but a commit that found it closed already was a late one that may
  // have completed it unseen by on_complete, when a commit on another CPU raced it (layout.h,
  // committed()): then every kind of waiter is asked.
  if (ev & RELAY_FAST_EV_LATE)
    wake_readers();
  else if (ev & RELAY_FAST_EV_RING)
    ring();
}

relay_fast_buf Producer::fast_desc() const noexcept {
  relay_fast_buf d{};
  d.wpos = reinterpret_cast<uint64_t*>(&hdr_->wpos);
  d.meta = reinterpret_cast<relay_fast_subbuf_meta*>(meta_);
  d.data = data_;
  d.lap_base = lap_base_.get();
  d.waiters = reinterpret_cast<const uint32_t*>(&hdr_->waiters);
  d.produced = reinterpret_cast<const uint64_t*>(&hdr_->produced);
  d.consumed = reinterpret_cast<const uint64_t*>(&hdr_->consumed);
  d.reset_gen = reinterpret_cast<const uint32_t*>(&hdr_->reset_gen);
  d.lost_full = reinterpret_cast<uint64_t*>(&hdr_->lost_full);
  d.subbuf_size = size_;
  d.n_subbufs = n_;
  // Only the fully rseq buffer: the inline path has no CAS reservation and no locked commit.
  d.on = cpu_ >= 0 && local_commit_ ? 1 : 0;
  // try_slow's drop without the switch: the default hook would refuse again and has no side
  // effect; a blocking write waits instead (set_blocking comes before this is asked).
  d.drop_full = !hooks_.subbuf_start && !blocking_ ? 1 : 0;
  return d;
}

bool Producer::commit_bytes(uint32_t slot, uint64_t base, uint64_t len) noexcept {
  return add_commit_remote(meta_[slot], static_cast<uint32_t>(len)) == base + size_;
}

// Claims the switch: turns the position word *w into kOffBusy. Returns false if *w changed
// under us (the caller re-examines it).
bool Producer::take_switch(uint64_t* w) noexcept {
  if (!claim_word(w, (*w & ~uint64_t{0xffffffff}) | kOffBusy)) return false;
  // Seqlock writer side: the hook may write into a slot a reader is copying; the busy word is
  // stored before any such byte (see View::still_valid).
  std::atomic_thread_fence(std::memory_order_release);
  return true;
}

// Moves the position word from *w to `to`, a state only the caller leaves again (busy, closed).
// Returns false, with *w reloaded, if the word was not *w.
bool Producer::claim_word(uint64_t* w, uint64_t to) noexcept {
  // acquire: the previous switcher's release of the word, and so all its bookkeeping, is
  // visible to us before we touch produced, lap_base_ or the sub-buffer metadata.
  if (cpu_ < 0)
    return hdr_->wpos.compare_exchange_strong(*w, to, std::memory_order_acquire,
                                              std::memory_order_relaxed);
  const uint64_t before = *w;
  int rc;
  if (reserve_here(w, to, &rc)) return true;
  if (rc == 0) return false;  // the word changed
  // reserve_here reloaded *w, and the word may have moved on meanwhile, even to a switch someone
  // else holds: the claim below must still be from the word the caller examined.
  *w = before;
  // Not on the buffer's CPU: a CAS to a busy value of our own, then a fence that restarts every
  // rseq section running there. A section that compared before our CAS may still have stored
  // over it before the fence; after the fence none can. So if the word still shows our value,
  // we hold it. The value must be ours alone: were it plain kOffBusy, a section could overwrite
  // our claim and a later switch on that CPU (same slot and sequence) put the very same word
  // back before our fence returned, and two writers would each think they hold the switch.
  // relaxed: the count only has to differ between claims, which the RMW alone guarantees.
  // A fork child writing the same buffer counts from the same value in its copy of this object,
  // so the pid, spread over the range by a multiplicative hash, sets each process's numbers
  // apart: two processes' claims then collide only if their counts differ by a hashed pid
  // difference, across a claim window of microseconds. getpid() costs a system call, next to
  // the membarrier below.
  const uint32_t ticket = remote_claims_.fetch_add(1, std::memory_order_relaxed) +
                          static_cast<uint32_t>(::getpid()) * 0x9e3779b1u;
  // A power-of-two range, so the values keep cycling through all of it when the ticket wraps.
  constexpr uint32_t kTicketMask = 0x3fffffff;
  static_assert(kOffRemoteFirst + kTicketMask <= kOffRemoteLast);
  const uint64_t mine = (before & ~uint64_t{0xffffffff}) | (kOffRemoteFirst + (ticket & kTicketMask));
  // seq_cst (acquire would do for the word): remote_fence then loads the process's fork flag,
  // and the pair of our CAS and the fork handler's store of that flag must not reorder (a
  // locked instruction on x86, as acquire is).
  if (!hdr_->wpos.compare_exchange_strong(*w, mine, std::memory_order_seq_cst,
                                          std::memory_order_relaxed))
    return false;
  rseq::remote_fence(cpu_);  // fails only for an offline CPU, where no section runs
  *w = hdr_->wpos.load(std::memory_order_acquire);
  if (*w != mine) {
    // A reservation overwrote our claim: the caller looks at the word again. A reader that saw
    // our busy value meanwhile could not decide whether its sub-buffer was reused, and may have
    // gone to sleep on it: wake it to look again. It armed (seq_cst, then a seq_cst fence) before
    // it loaded our value; our seq_cst load comes after the store that replaced that value, so
    // it sees the arming.
    wake_readers();
    return false;
  }
  // Ours, and every other writer waits while it is busy: the state the caller asked for.
  // seq_cst: nothing needs publishing yet (the caller's later release of the word, or `closed`,
  // does that), but a reader that looks at the word after arming the doorbell must not miss
  // this store if ours is the last one before the caller's wake-up check.
  if (to != mine) hdr_->wpos.store(to, std::memory_order_seq_cst);
  *w = before;
  return true;
}

bool Producer::bind_cpu(uint32_t cpu) noexcept {
  if (!rseq::available() || cpu > INT32_MAX) return false;
  cpu_ = static_cast<int32_t>(cpu);
  local_commit_ = rseq::fenced_commits();
  // relaxed: read by whoever arms the doorbell (arm_doorbell), which only needs it before the
  // first rseq commit; writers start after this call, the reader's arming much later.
  if (local_commit_) hdr_->fenced_commits.store(1, std::memory_order_relaxed);
  return true;
}

// Reloads *w until no switch is in progress. Returns false if the switch is held by this very
// thread (a write from subbuf_start or from a signal handler): waiting would never end.
bool Producer::wait_switch(uint64_t* w) const noexcept {
  for (unsigned spins = 0; off_busy(word_off(*w)); ++spins) {
    if (holds_switch(this)) return false;
    relax(spins);
    *w = hdr_->wpos.load(std::memory_order_acquire);
  }
  return true;
}

// A refused record: counted and dropped, or, in blocking mode when the refusal was for a full
// buffer, handed back for the caller to wait (it counts only if the wait times out). Other
// refusals (the callback's own choice, a sub-buffer still being committed) drop in either mode:
// no reader can clear them.
int Producer::drop(std::atomic<uint64_t>& counter, int err, bool full) noexcept {
  if (blocking_ && full && held_ == 0) return kRetry;
  counter.fetch_add(1, std::memory_order_relaxed);
  return err;
}

int Producer::reserve_slow(size_t len, Reservation* r) noexcept {
  // Waiting while this thread holds an uncommitted reservation could wait for itself: drop()
  // does not hand such a record back.
  if (!blocking_ || held_ > 0) [[likely]]
    return try_slow(len, r);
  const int64_t deadline = block_timeout_ns_ < 0 ? -1 : mono_ns() + block_timeout_ns_;
  for (;;) {
    // Loaded before the attempt: progress made after it makes the futex wait return at once.
    const uint32_t seen = hdr_->progress.load(std::memory_order_acquire);
    const int rc = try_slow(len, r);
    if (rc != kRetry) return rc;
    if (!wait_for_room(seen, deadline)) {
      hdr_->lost_full.fetch_add(1, std::memory_order_relaxed);
      return -ETIMEDOUT;
    }
  }
}

// Sleeps until the consumer publishes progress, a slice passes, or the deadline. Returns false
// when the writer should give up: the deadline passed or the consumer is gone.
bool Producer::wait_for_room(uint32_t seen, int64_t deadline_ns) noexcept {
  if (abandoned_.load(std::memory_order_relaxed)) return false;
  const int64_t now = mono_ns();
  if (deadline_ns >= 0 && now >= deadline_ns) return false;
  const int64_t slice =
      deadline_ns < 0 ? kBlockSliceNs : std::min(kBlockSliceNs, deadline_ns - now);
  if (!buf_full()) return true;  // the consumer freed a sub-buffer since: try again now
  // seq_cst: the Dekker pair of Consumer::publish (progress++, then load `blocked`): either the
  // consumer sees us waiting and wakes the futex, or the kernel finds `progress` moved.
  hdr_->blocked.fetch_add(1, std::memory_order_seq_cst);
  if (buf_full()) {
    const timespec ts{static_cast<time_t>(slice / 1'000'000'000),
                      static_cast<long>(slice % 1'000'000'000)};
    ::syscall(SYS_futex, futex_word(hdr_->progress), FUTEX_WAIT, seen, &ts, nullptr, 0);
  }
  hdr_->blocked.fetch_sub(1, std::memory_order_relaxed);
  return true;
}

void Producer::abandon() noexcept {
  abandoned_.store(true, std::memory_order_relaxed);
  ::syscall(SYS_futex, futex_word(hdr_->progress), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

int Producer::try_slow(size_t len, Reservation* r) noexcept {
  if (len == 0) return -EINVAL;
  if (len > size_) {
    // As in the kernel, a record that can never fit does not cause a switch.
    hdr_->lost_too_big.fetch_add(1, std::memory_order_relaxed);
    return -EMSGSIZE;
  }
  uint64_t w = hdr_->wpos.load(std::memory_order_acquire);
  for (;;) {
    if (!wait_switch(&w)) {
      hdr_->lost_full.fetch_add(1, std::memory_order_relaxed);
      return -ENOSPC;
    }
    const uint32_t off = word_off(w);
    if (off == kOffClosed) return -EPIPE;
    if (off != kOffStopped && off + len <= size_) return reserve(len, r);  // someone switched
    if (off == kOffStopped && !hooks_.subbuf_start && buf_full()) {
      // The default callback would refuse again, and it has no side effects to run: drop the
      // record without taking the switch, so a full buffer costs its writers little.
      return drop(hdr_->lost_full, -ENOSPC, true);
    }
    const SwitchScope scope(this);
    if (take_switch(&w)) return switch_locked(w, static_cast<uint32_t>(len), r, false);
  }
}

// Ends a switch: stores the new position word, then wakes a reader that armed the doorbell. The
// wake-up comes after the store, not at the close: a reader that looked while the word was busy
// could not tell whether its sub-buffer was being reused (View::reused's kMaybe) and went to
// sleep; if the switch was then refused, no later commit or switch would wake it.
void Producer::release_switch(uint64_t word) noexcept {
  // seq_cst: release publishes lap_base_, the new sub-buffer's header and metadata, and the
  // closed sub-buffer, to the writers that reserve next and to readers; and with the load of
  // `waiters` it is the Dekker pair of a reader that arms the doorbell and then looks at the word.
  hdr_->wpos.store(word, std::memory_order_seq_cst);
  wake_readers();
}

// With the switch held (wpos busy), w being the word before we took it: closes the current
// sub-buffer unless the buffer is stopped, then asks subbuf_start to begin the next one. len > 0
// also reserves a record in it. Releases the switch by storing the new position word.
int Producer::switch_locked(uint64_t w, uint32_t len, Reservation* r, bool opening) noexcept {
  ShmHeader* h = hdr_;
  const uint32_t off = word_off(w);
  // Only the switch holder writes `produced`, and our acquiring CAS ordered us after the last one.
  uint64_t seq = h->produced.load(std::memory_order_relaxed);
  uint32_t prev_slot;
  uint32_t prev_padding;
  const bool closing = off != kOffStopped;
  if (closing) {
    prev_slot = word_slot(w);
    prev_padding = size_ - off;
    meta_[prev_slot].padding.store(prev_padding, std::memory_order_relaxed);
    h->prev_padding.store(prev_padding, std::memory_order_relaxed);
    h->prev_slot.store(prev_slot, std::memory_order_relaxed);
    const uint64_t produced_bytes = h->bytes_produced.load(std::memory_order_relaxed) + off;
    h->bytes_produced.store(produced_bytes, std::memory_order_relaxed);
    // Where the next sub-buffer starts, in the slot it will use. relaxed: `produced`, stored
    // below with release, publishes it; a reader that finds the slot's old value checks the busy
    // word we hold, as for the slot's bytes (Consumer::start_of).
    meta_[slot_of(seq + 1, n_)].start_bytes.store(produced_bytes, std::memory_order_relaxed);
    // The padding counts as committed, so the last of this sub-buffer's writers (or we, if they
    // are all done) sees the counter reach a full lap.
    // Readers are not woken here but by release_switch, which every switch ends with: until
    // `produced` moves below, no reader takes this sub-buffer for closed, and a reader woken
    // now would find nothing and wake again (one wasted wake-up per sub-buffer).
    if (prev_padding != 0 && commit_bytes(prev_slot, lap_base_[prev_slot], prev_padding))
      deliver_once(prev_slot, lap_base_[prev_slot] + size_);
    // seq_cst: release publishes padding and commit to readers that acquire `produced`; and
    // with the load of `waiters` in release_switch it is the Dekker pair of a reader arming
    // the doorbell.
    h->produced.store(++seq, std::memory_order_seq_cst);
    deliver_closed(seq);  // completions racing commits missed; before the next slot is reused
  } else {
    // Retrying a refused switch: the kernel passes the same prev_subbuf and prev_padding again.
    prev_slot = h->prev_slot.load(std::memory_order_relaxed);
    prev_padding = h->prev_padding.load(std::memory_order_relaxed);
    // The refusal may have been a wrap: the slot's last lap, short then, may have been completed
    // since by two racing commits that each missed it. Found here, before the slot is reused.
    deliver_closed(seq);
  }

  const uint32_t slot = slot_of(seq, n_);
  const uint64_t base = lap_base(seq, n_, size_);
  char* subbuf = subbuf_data(slot);
  char* prev = seq == 0 ? nullptr : subbuf_data(prev_slot);
  bool ok;
  bool wrapped = false;
  // Whether the buffer was full when the switch was refused: decided once, here. Asking again
  // when counting the drop could find a sub-buffer freed meanwhile and drop a blocking writer's
  // record that should have waited.
  bool full = false;
  // The slot may be reused only once its previous lap is wholly committed; otherwise a writer
  // still copying an old record would tear a new one (overwrite mode, LTTng's "lost_wrap").
  if (committed(meta_[slot]) != base) {
    ok = false;
    // A wrap, unless the buffer is also full in no-overwrite mode, where the switch would be
    // refused anyway. In overwrite mode a full buffer is normal: the record is lost to the wrap.
    full = buf_full();
    wrapped = overwrite_seen_ || !full;
  } else {
    header_ = 0;
    full = buf_full();
    ok = hooks_.subbuf_start ? hooks_.subbuf_start(hooks_.ctx, *this, subbuf, prev, prev_padding)
                             : !full;
    // The mode is the callback's: one that switches into a buffer that is full before and after
    // it decided is an overwrite one (a reader may free a sub-buffer meanwhile).
    if (ok && full && buf_full()) overwrite_seen_ = true;
    ok = ok || opening;  // the kernel ignores the hook's answer at open
  }
  if (!ok) {
    if (closing && !wrapped && hooks_.buf_full) hooks_.buf_full(hooks_.ctx, *this, prev_slot, prev);
    release_switch(make_word(slot, seq, kOffStopped));
    if (len == 0) return 0;
    return wrapped ? drop(h->lost_wrap, -ENOSPC, false) : drop(h->lost_full, -ENOSPC, full);
  }

  const uint32_t hdr_len = static_cast<uint32_t>(std::min<uint64_t>(header_, size_));
  lap_base_[slot] = base;
  meta_[slot].padding.store(0, std::memory_order_relaxed);
  if (hdr_len != 0 && commit_bytes(slot, base, hdr_len)) on_complete(slot, base + size_);
  // Nothing else is reserved yet, so the header is a proven-committed prefix.
  meta_[slot].ready.store(base + hdr_len, std::memory_order_release);
  if (len == 0 || hdr_len + len > size_) {
    release_switch(make_word(slot, seq, hdr_len));
    if (len == 0) return 0;
    // The record fitted a sub-buffer but not what the header left of it: too big, as in the kernel.
    h->lost_too_big.fetch_add(1, std::memory_order_relaxed);
    return -EMSGSIZE;
  }
  release_switch(make_word(slot, seq, hdr_len + len));
  std::atomic_thread_fence(std::memory_order_release);  // seqlock writer side, as in reserve()
  r->ptr = subbuf + hdr_len;
  r->len = len;
  r->slot = slot;
  r->off = hdr_len;
  r->base = base;
  return 0;
}

void Producer::open() noexcept {
  uint64_t w = hdr_->wpos.load(std::memory_order_acquire);
  // A fresh or reset buffer is "stopped" at sequence 0: the switch below begins sub-buffer 0
  // without closing anything, with prev_subbuf == nullptr.
  const SwitchScope scope(this);
  while (!take_switch(&w)) {
  }
  switch_locked(w, 0, nullptr, true);
}

int Producer::flush() noexcept {
  uint64_t w = hdr_->wpos.load(std::memory_order_acquire);
  for (;;) {
    if (!wait_switch(&w)) return -EDEADLK;
    if (word_off(w) == kOffClosed) return -EPIPE;
    const SwitchScope scope(this);
    if (take_switch(&w)) return switch_locked(w, 0, nullptr, false);
  }
}

void Producer::reset() noexcept {
  ShmHeader* h = hdr_;
  // Odd generation: readers discard whatever they copy until it is even again.
  h->reset_gen.fetch_add(1, std::memory_order_seq_cst);
  // The bytes of the sub-buffer being written were produced too, even though nobody will read
  // them now: count them, so the file size never goes back. A closed buffer's word says
  // kOffClosed: its offset is close_off (decode_off).
  const uint32_t off = decode_off(*h, word_off(h->wpos.load(std::memory_order_relaxed)));
  const uint64_t produced_bytes =
      h->bytes_produced.load(std::memory_order_relaxed) + (off <= size_ ? off : 0);
  h->bytes_produced.store(produced_bytes, std::memory_order_relaxed);
  // The new generation's stream starts here: what the reader had not read of the old one is
  // what the reset discards (lost_reset_bytes, counted by the consumer).
  h->reset_bytes.store(produced_bytes, std::memory_order_relaxed);
  h->wpos.store(make_word(0, 0, kOffStopped), std::memory_order_relaxed);
  for (uint32_t i = 0; i < n_; ++i) {
    meta_[i].commit.store(0, std::memory_order_relaxed);
    meta_[i].commit_cpu.store(0, std::memory_order_relaxed);  // no writer is active (above)
    delivered_[i].store(0, std::memory_order_relaxed);
    meta_[i].ready.store(0, std::memory_order_relaxed);
    meta_[i].padding.store(0, std::memory_order_relaxed);
    meta_[i].start_bytes.store(i == 0 ? produced_bytes : 0, std::memory_order_relaxed);
    lap_base_[i] = 0;
  }
  h->produced.store(0, std::memory_order_relaxed);
  h->prev_padding.store(0, std::memory_order_relaxed);
  h->prev_slot.store(0, std::memory_order_relaxed);
  h->consumed.store(0, std::memory_order_relaxed);
  h->reset_gen.fetch_add(1, std::memory_order_seq_cst);
  open();
}

void Producer::close() noexcept {
  uint64_t w = hdr_->wpos.load(std::memory_order_acquire);
  for (;;) {
    if (!wait_switch(&w) || word_off(w) == kOffClosed) return;
    // The current sub-buffer stays as it is: readers drain it up to its committed prefix, which
    // they prove against close_off once no writer can reserve any more.
    const SwitchScope scope(this);
    if (claim_word(&w, (w & ~uint64_t{0xffffffff}) | kOffClosed)) break;
  }
  // kOffStopped when nothing had begun: readers then find nothing in the current sub-buffer.
  hdr_->close_off.store(word_off(w), std::memory_order_relaxed);
  // seq_cst: releases close_off to readers that acquire `closed`, and pairs with `waiters`.
  hdr_->closed.store(1, std::memory_order_seq_cst);
  wake_readers();
  // relay_close has waited for every commit: what completed unseen is delivered now.
  deliver_closed(hdr_->produced.load(std::memory_order_acquire));
}

}  // namespace relayfs::core
