// Whether the writer has begun reusing a sub-buffer's slot: the question every reader of a
// buffer (the daemon's consumer, and mmap readers in other processes) asks before trusting bytes
// it copied. Everything here comes from the shared control area and is only compared, never used
// as an address.
#include "core/lap.h"

namespace relayfs::core {

namespace {

// How long to wait for a switch in progress: ~100 pause instructions are a few microseconds, far
// longer than a subbuf_start call.
constexpr unsigned kBusySpins = 256;

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

// Has the writer begun reusing the slot of sub-buffer seq? Sub-buffers up to produced - 1 are
// closed, and `produced` itself has begun unless the writer is stopped (a refused switch, or a
// close from that state). While a switch is being decided (kOffBusy) the answer is not known yet:
// the subbuf_start hook may accept and write the new header into that slot, or refuse (the
// contract is that a refusing hook writes nothing there). Such a decision takes a moment, so we
// wait for it, boundedly: a producer that stays busy gets kMaybe.
Reuse slot_reused(const ShmHeader& h, uint32_t n, uint64_t seq, uint64_t produced) noexcept {
  const uint64_t ahead = produced - seq;
  if (ahead != n) return ahead > n ? Reuse::kYes : Reuse::kNo;
  for (unsigned spins = 0; spins < kBusySpins; ++spins) {
    const uint64_t w = h.wpos.load(std::memory_order_acquire);
    const uint16_t lag = static_cast<uint16_t>(static_cast<uint16_t>(produced) - word_seq(w));
    uint32_t off = word_off(w);
    // A closing switch publishes `produced` while the busy word still carries the sequence of the
    // sub-buffer it closes: the next one is undecided. Any later word has moved past `produced`.
    if (lag == 1 && off_busy(off)) {
      cpu_relax();
      continue;
    }
    if (lag != 0) return Reuse::kYes;
    if (off == kOffClosed)
      off = h.closed.load(std::memory_order_acquire) ? h.close_off.load(std::memory_order_relaxed)
                                                     : kOffBusy;
    if (off == kOffStopped) return Reuse::kNo;
    if (!off_busy(off)) return Reuse::kYes;
    cpu_relax();
  }
  return Reuse::kMaybe;
}

}  // namespace relayfs::core
