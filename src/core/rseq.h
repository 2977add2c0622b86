// Restartable sequences (rseq): a compare-and-store on a per-CPU word with no locked instruction.
//
// A per-CPU relay buffer is written only by threads running on its CPU (relay_write picks the
// buffer of the CPU it runs on). If every change of the buffer's position word is made either
// inside an rseq critical section on that CPU, or by a "remote" change that fences those
// sections out (remote_fence below), a plain load-compare-store is as good as a CAS: the kernel
// restarts the section if the thread is preempted, migrated or signalled before its store, so no
// other writer of the word can run between the compare and the store.
//
// glibc (2.35 and later) registers each thread's struct rseq; we only read its cpu_id and point
// its rseq_cs at our section descriptor. Availability is decided once per process
// (rseq_available): glibc registered rseq, and the kernel accepted our membarrier registration
// for remote fences. x86-64 only; elsewhere, and under ThreadSanitizer (which cannot see inside
// the asm), the producer keeps its CAS.
#pragma once

#include <cstddef>
#include <cstdint>

// The primitives themselves (the asm sections, the CPU read) are relay_fast.h's, shared with the
// inline relay_write of the public header: one definition of each.
#include <relayfs/relay_fast.h>

#ifdef RELAY_FAST_HAVE_RSEQ
#define RELAYFS_HAVE_RSEQ 1
#include <sys/rseq.h>
#endif

namespace relayfs::core::rseq {

// Outcome of cas_on_cpu.
enum class Cas : int {
  kStored = 0,    // *word was `expect`; it is now `desired`
  kChanged = 1,   // *word was not `expect`; nothing stored
  kOtherCpu = 2,  // the thread is not on `cpu` (or was moved off it before the store)
};

// True if cas_on_cpu and remote_fence work in this process. Decided once, on first call; the
// answer never changes afterwards, so every writer of a buffer takes the same side.
bool available() noexcept;

// After a remote thread (one not on `cpu`) changed a word that rseq sections on `cpu` may be
// about to overwrite: returns once every section in progress on that CPU has been restarted.
// A section that stored before the fence is visible to a reload after it. Returns 0 or -errno.
// Until the process first forks, a membarrier, which restarts the sections of this process. From
// its first fork(2) on (a pthread_atfork handler; children inherit the state), sections of the
// other process may write the same buffers: the calling thread then runs on `cpu` for a moment,
// which switches out whatever ran there, of any process. A thread that may not run there falls
// back on the membarrier. Children made without fork's handlers (_Fork, a raw clone) go unseen.
int remote_fence(int cpu) noexcept;

// Commits made with add_on_cpu store and then load `waiters` with no fence between: the ordering
// a reader arming the doorbell needs comes from arming_fence() on its side. True if this process
// registered for it (MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED), tried once; false: keep the
// locked commit.
bool fenced_commits() noexcept;

// The arming side's half (doorbell.cc): membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED). When it
// returns, every thread of every registered process that was running has executed a full memory
// barrier, and one that was not will before it runs again. Returns 0 or -errno. Needs no
// registration of the caller.
int arming_fence() noexcept;

#ifdef RELAYFS_HAVE_RSEQ

inline struct ::rseq* thread_area() noexcept {
  static_assert(offsetof(struct ::rseq, cpu_id) == offsetof(relay_fast_rseq_abi, cpu_id) &&
                offsetof(struct ::rseq, rseq_cs) == offsetof(relay_fast_rseq_abi, rseq_cs));
  return reinterpret_cast<struct ::rseq*>(relay_fast_rseq_area());
}

// The CPU the calling thread runs on, as the kernel last stored it in the thread's rseq area.
inline int32_t current_cpu() noexcept { return static_cast<int32_t>(relay_fast_cpu()); }

// relay_fast_cas_on_cpu: if the calling thread runs on `cpu` and *word == expect, stores desired; all
// or nothing with respect to every other rseq section on that CPU.
inline Cas cas_on_cpu(uint64_t* word, uint64_t expect, uint64_t desired, uint32_t cpu) noexcept {
  static_assert(RELAY_FAST_STORED == static_cast<int>(Cas::kStored) &&
                RELAY_FAST_CHANGED == static_cast<int>(Cas::kChanged) &&
                RELAY_FAST_OTHER == static_cast<int>(Cas::kOtherCpu));
  return static_cast<Cas>(
      relay_fast_cas_on_cpu(relay_fast_rseq_area(), word, expect, desired, cpu));
}

// relay_fast_add_on_cpu: if the calling thread runs on `cpu`: *word += add, all or nothing with
// respect to every other rseq section on that CPU. Returns false if nothing was stored (not on
// `cpu`, or aborted). Only rseq sections on `cpu` may ever write *word.
inline bool add_on_cpu(uint64_t* word, uint64_t add, uint32_t cpu) noexcept {
  return relay_fast_add_on_cpu(relay_fast_rseq_area(), word, add, cpu) != 0;
}

static_assert(RSEQ_SIG == RELAY_FAST_RSEQ_SIG, "the abort signature of relay_fast.h must be glibc's");

#else

// Never called: available() is false.
inline int32_t current_cpu() noexcept { return -1; }
inline Cas cas_on_cpu(uint64_t*, uint64_t, uint64_t, uint32_t) noexcept { return Cas::kOtherCpu; }
inline bool add_on_cpu(uint64_t*, uint64_t, uint32_t) noexcept {
  return false;
}

#endif

}  // namespace relayfs::core::rseq
