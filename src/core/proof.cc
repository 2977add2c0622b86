#include "core/proof.h"

#include <algorithm>

namespace relayfs::core {

uint32_t committed_prefix(const ShmHeader& h, const SubbufMeta& m, uint32_t size, uint64_t seq,
                          uint32_t slot, uint64_t base, bool current) noexcept {
  uint32_t best = 0;
  // The writers' own proof (Producer::commit). Values of other laps fall outside [base, base+S].
  const uint64_t r = m.ready.load(std::memory_order_acquire);
  if (r >= base && r - base <= size) best = static_cast<uint32_t>(r - base);
  if (current) {
    // The reader's own proof: load commit, then the position word. Every commit counted was
    // reserved before the word we load, so if the count equals the reserved offset, nothing is
    // in flight.
    const uint64_t commit = m.commit.load(std::memory_order_acquire);
    const uint64_t w = h.wpos.load(std::memory_order_acquire);
    uint32_t off = word_off(w);
    const bool ours = word_slot(w) == slot && word_seq(w) == static_cast<uint16_t>(seq);
    if (ours && off == kOffClosed && h.closed.load(std::memory_order_acquire) != 0)
      off = h.close_off.load(std::memory_order_relaxed);  // kOffStopped if never begun
    if (ours && off <= size && commit == base + off) best = std::max(best, off);
  }
  return best;
}

uint64_t committed_bytes(const ShmHeader& h, const SubbufMeta* meta, uint32_t size, uint32_t n,
                         uint64_t known_seq, uint32_t known_prefix) noexcept {
  uint64_t closed_bytes = 0;
  // A few microseconds of retries: a switch holds the busy word for the time of a subbuf_start
  // call. Bounded, whatever the producer does.
  for (unsigned tries = 0; tries < 1024; ++tries) {
    // acquire: bytes_produced and the closed sub-buffers' metadata, published with `produced`.
    const uint64_t produced = h.produced.load(std::memory_order_acquire);
    closed_bytes = h.bytes_produced.load(std::memory_order_acquire);
    const uint32_t slot = static_cast<uint32_t>(produced % n);
    uint32_t prefix =
        committed_prefix(h, meta[slot], size, produced, slot, (produced / n) * size, true);
    if (produced == known_seq) prefix = std::max(prefix, known_prefix);
    // Seqlock reader side: the loads above before these. A switch claims the busy word (and a
    // release fence) before it stores the new closed total, and moves `produced` before it
    // releases the word: a pair read across a switch sees one or the other here.
    std::atomic_thread_fence(std::memory_order_acquire);
    const uint64_t w = h.wpos.load(std::memory_order_acquire);
    if (!off_busy(word_off(w)) && h.produced.load(std::memory_order_acquire) == produced)
      return closed_bytes + prefix;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  return closed_bytes;
}

}  // namespace relayfs::core
