// A reader's view of a buffer's shared control area (view.h). Everything here comes from memory
// the producer writes: it is only compared, or bounded by the reader's own geometry, never used
// as an address as it is.
#include "core/view.h"

#include <algorithm>
#include <cerrno>

namespace relayfs::core {

namespace {

// How long to wait for a switch in progress: ~100 pause instructions are a few microseconds, far
// longer than a subbuf_start call.
constexpr unsigned kBusySpins = 256;

// A few microseconds of retries for committed_bytes: a switch holds the busy word for the time of
// a subbuf_start call. Bounded, whatever the producer does.
constexpr unsigned kSettleTries = 1024;

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

int View::corrupt(uint32_t gen) const noexcept {
  return hdr_->reset_gen.load(std::memory_order_acquire) != gen ? 0 : -EIO;
}

int View::next(uint64_t seq, Next* out) const noexcept {
  const uint64_t produced = this->produced();
  if (produced < seq) return -EIO;
  const Reuse reuse = reused(seq, produced);
  if (reuse == Reuse::kMaybe) return 0;
  *out = {produced, reuse == Reuse::kYes ? oldest_unlapped(produced, n_) : seq};
  return 1;
}

// Sub-buffers up to produced - 1 are closed, and `produced` itself has begun unless the writer is
// stopped (a refused switch, or a close from that state). While a switch is being decided
// (kOffBusy) the answer is not known yet: the subbuf_start hook may accept and write the new
// header into that slot, or refuse (the contract is that a refusing hook writes nothing there).
// Such a decision takes a moment, so we wait for it, boundedly: a producer that stays busy gets
// kMaybe.
Reuse View::reused(uint64_t seq, uint64_t produced) const noexcept {
  const uint64_t ahead = produced - seq;
  if (ahead != n_) return ahead > n_ ? Reuse::kYes : Reuse::kNo;
  for (unsigned spins = 0; spins < kBusySpins; ++spins) {
    const uint64_t w = hdr_->wpos.load(std::memory_order_acquire);
    const uint16_t lag = static_cast<uint16_t>(static_cast<uint16_t>(produced) - word_seq(w));
    // A closing switch publishes `produced` while the busy word still carries the sequence of the
    // sub-buffer it closes: the next one is undecided. Any later word has moved past `produced`.
    if (lag == 1 && off_busy(word_off(w))) {
      cpu_relax();
      continue;
    }
    if (lag != 0) return Reuse::kYes;
    const uint32_t off = decode_off(*hdr_, word_off(w));
    if (off == kOffStopped) return Reuse::kNo;
    if (!off_busy(off)) return Reuse::kYes;
    cpu_relax();
  }
  return Reuse::kMaybe;
}

bool View::still_valid(uint64_t seq, uint32_t gen) const noexcept {
  // The copy's loads are ordered before these loads. A writer that begins reusing the slot first
  // stores `produced` (a switch) or the busy word (a retried switch), and only then writes there
  // (Producer::reserve, Producer::take_switch).
  std::atomic_thread_fence(std::memory_order_acquire);
  if (hdr_->reset_gen.load(std::memory_order_relaxed) != gen) return false;
  const uint64_t produced = this->produced();
  return produced >= seq && reused(seq, produced) == Reuse::kNo;
}

int View::data_end(uint64_t seq, uint32_t* end) const noexcept {
  const uint32_t padding = meta_[slot_of(seq, n_)].padding.load(std::memory_order_relaxed);
  if (padding > size_) return -EIO;
  *end = size_ - padding;
  return 0;
}

bool View::complete(uint64_t seq) const noexcept {
  return committed(meta_[slot_of(seq, n_)]) == lap_end(seq, n_, size_);
}

uint32_t View::committed_prefix(uint64_t seq, bool current) const noexcept {
  const uint32_t slot = slot_of(seq, n_);
  const uint64_t base = lap_base(seq, n_, size_);
  const SubbufMeta& m = meta_[slot];
  uint32_t best = 0;
  // The writers' own proof (Producer::commit). Values of other laps fall outside [base, base+S].
  const uint64_t r = m.ready.load(std::memory_order_acquire);
  if (r >= base && r - base <= size_) best = static_cast<uint32_t>(r - base);
  if (current) {
    // The reader's own proof: load commit, then the position word. Every commit counted was
    // reserved before the word we load, so if the count equals the reserved offset, nothing is
    // in flight.
    const uint64_t commit = committed(m);
    const uint64_t w = hdr_->wpos.load(std::memory_order_acquire);
    if (word_slot(w) == slot && word_seq(w) == static_cast<uint16_t>(seq)) {
      const uint32_t off = decode_off(*hdr_, word_off(w));  // kOffStopped: closed before it began
      if (off <= size_ && commit == base + off) best = std::max(best, off);
    }
  }
  return best;
}

bool View::settled(uint64_t produced) const noexcept {
  // Seqlock reader side: the caller's loads before these. A switch claims the busy word (and a
  // release fence) before it stores anything, and moves `produced` before it releases the word.
  std::atomic_thread_fence(std::memory_order_acquire);
  const uint64_t w = hdr_->wpos.load(std::memory_order_acquire);
  return !off_busy(word_off(w)) && this->produced() == produced;
}

uint64_t View::committed_bytes(uint64_t known_seq, uint32_t known_prefix) const noexcept {
  uint64_t closed_bytes = 0;
  for (unsigned tries = 0; tries < kSettleTries; ++tries) {
    // acquire: bytes_produced and the closed sub-buffers' metadata, published with `produced`.
    const uint64_t produced = this->produced();
    closed_bytes = hdr_->bytes_produced.load(std::memory_order_acquire);
    uint32_t prefix = committed_prefix(produced, true);
    if (produced == known_seq) prefix = std::max(prefix, known_prefix);
    // A pair read across a switch sees it here.
    if (settled(produced)) return closed_bytes + prefix;
    cpu_relax();
  }
  return closed_bytes;
}

uint32_t View::reserved_end(uint64_t seq) const noexcept {
  const uint64_t w = hdr_->wpos.load(std::memory_order_acquire);
  if (word_slot(w) != slot_of(seq, n_) || word_seq(w) != static_cast<uint16_t>(seq)) return 0;
  const uint32_t off = decode_off(*hdr_, word_off(w));
  return off <= size_ ? off : 0;
}

}  // namespace relayfs::core
