#include "core/doorbell.h"

#include <atomic>

#include "core/rseq.h"

namespace relayfs::core {

int arm_doorbell(ShmHeader& h, uint32_t bits) noexcept {
  // seq_cst: the Dekker pair of a locked commit's add-then-load (Producer::commit, unbound).
  // fetch_or: a record waiter and a sub-buffer waiter may share the buffer.
  h.waiters.fetch_or(bits, std::memory_order_seq_cst);
  return order_arming(h);
}

int order_arming(const ShmHeader& h) noexcept {
  // The caller's re-check loads the position word and counters with acquire, which the language
  // does not order after a seq_cst store; this fence does (free on x86 after a locked RMW).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // relaxed: set once, by Producer::bind_cpu, before any writer of the buffer starts; every rseq
  // commit comes after that store, so a commit our re-check could miss cannot precede it.
  if (h.fenced_commits.load(std::memory_order_relaxed) == 0) return 0;
  // An rseq commit stores its counter with a plain store and then loads `waiters` with no fence
  // between. After this barrier, each producer thread either had its commit store visible to our
  // re-check, or executes its load of `waiters` after the barrier and sees our bit.
  return rseq::arming_fence();
}

}  // namespace relayfs::core
