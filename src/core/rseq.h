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

#include <cstdint>

#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RELAYFS_NO_RSEQ 1
#endif
#endif
#ifndef RELAYFS_NO_RSEQ
#define RELAYFS_HAVE_RSEQ 1
#endif
#endif

#ifdef RELAYFS_HAVE_RSEQ
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

// The frame of every rseq section here (asm text; labels 1 = start, 2 = post-commit,
// 3 = descriptor, 4 = abort handler; operand [rseq_cs] and label other_cpu are the section's).
// The "?" flag puts the descriptor and the abort handler in the section group of the code around
// them: an inline function's code is a COMDAT group, and when the linker discards a duplicate
// copy it must discard the descriptor that points into it too (else clang builds fail to link).
// The abort handler is preceded by the signature glibc registered (RSEQ_SIG), encoded in a ud1 so
// that falling into it traps. An abort restarts nothing: the caller retries from its loop.
#define RELAYFS_RSEQ_BEGIN                  \
  ".pushsection __rseq_cs, \"aw?\"\n\t"      \
  ".balign 32\n\t"                          \
  "3:\n\t"                                  \
  ".long 0, 0\n\t"                          \
  ".quad 1f, (2f - 1f), 4f\n\t"             \
  ".popsection\n\t"                         \
  "leaq 3b(%%rip), %%rax\n\t"               \
  "movq %%rax, %[rseq_cs]\n\t"              \
  "1:\n\t"
#define RELAYFS_RSEQ_END                    \
  "2:\n\t"                                  \
  ".pushsection __rseq_failure, \"ax?\"\n\t" \
  ".byte 0x0f, 0xb9, 0x3d\n\t"              \
  ".long 0x53053053\n\t"                    \
  "4:\n\t"                                  \
  "jmp %l[other_cpu]\n\t"                   \
  ".popsection\n\t"

inline struct ::rseq* thread_area() noexcept {
  return reinterpret_cast<struct ::rseq*>(static_cast<char*>(__builtin_thread_pointer()) +
                                          __rseq_offset);
}

// The CPU the calling thread runs on, as the kernel last stored it in the thread's rseq area.
inline int32_t current_cpu() noexcept {
  return static_cast<int32_t>(__atomic_load_n(&thread_area()->cpu_id, __ATOMIC_RELAXED));
}

// If the calling thread runs on `cpu` and *word == expect, stores desired; all or nothing with
// respect to every other rseq section on that CPU. A plain store: on x86 it has release
// semantics and the compare's load has acquire semantics, which is what the CAS it replaces
// provided; the "memory" clobber keeps the compiler from moving accesses across it.
inline Cas cas_on_cpu(uint64_t* word, uint64_t expect, uint64_t desired, uint32_t cpu) noexcept {
  struct ::rseq* rs = thread_area();
  __asm__ goto(
      RELAYFS_RSEQ_BEGIN
      "cmpl %[cpu], %[cpu_id]\n\t"
      "jnz %l[other_cpu]\n\t"
      "cmpq %[word], %[expect]\n\t"
      "jnz %l[changed]\n\t"
      "movq %[desired], %[word]\n\t"
      RELAYFS_RSEQ_END
      :
      : [rseq_cs] "m"(rs->rseq_cs), [cpu_id] "m"(rs->cpu_id), [cpu] "r"(cpu),
        [word] "m"(*word), [expect] "r"(expect), [desired] "r"(desired)
      : "memory", "cc", "rax"
      : other_cpu, changed);
  return Cas::kStored;
changed:
  return Cas::kChanged;
other_cpu:
  return Cas::kOtherCpu;
}

// If the calling thread runs on `cpu`: *word += add, all or nothing with respect to every other
// rseq section on that CPU, and *sum = the new value. Returns false if the thread is not on `cpu`
// or the section was aborted (preempted, migrated, signalled) before its store: nothing stored;
// the caller looks at current_cpu() and retries or goes elsewhere. Only rseq sections on `cpu`
// may ever write *word (layout.h, SubbufMeta): a remote atomic add landing between our load and
// our store would be lost, and no fence restarts us for it.
// The store is a plain store (release on x86: the record's bytes, stored before, are visible to
// whoever sees the new count). It is not ordered before the caller's later loads: the doorbell's
// store->load ordering comes from the arming side (arming_fence).
inline bool add_on_cpu(uint64_t* word, uint64_t add, uint32_t cpu, uint64_t* sum) noexcept {
  struct ::rseq* rs = thread_area();
  // *sum is written inside the section before the commit store: an aborted attempt leaves a
  // value the retry overwrites.
  __asm__ goto(
      RELAYFS_RSEQ_BEGIN
      "cmpl %[cpu], %[cpu_id]\n\t"
      "jnz %l[other_cpu]\n\t"
      "movq %[word], %%rax\n\t"
      "addq %[add], %%rax\n\t"
      "movq %%rax, %[sum]\n\t"
      "movq %%rax, %[word]\n\t"
      RELAYFS_RSEQ_END
      :
      : [rseq_cs] "m"(rs->rseq_cs), [cpu_id] "m"(rs->cpu_id), [cpu] "r"(cpu),
        [word] "m"(*word), [add] "r"(add), [sum] "m"(*sum)
      : "memory", "cc", "rax"
      : other_cpu);
  return true;
other_cpu:
  return false;
}

static_assert(RSEQ_SIG == 0x53053053, "the abort signature in cas_on_cpu must match glibc's");

#else

// Never called: available() is false.
inline int32_t current_cpu() noexcept { return -1; }
inline Cas cas_on_cpu(uint64_t*, uint64_t, uint64_t, uint32_t) noexcept { return Cas::kOtherCpu; }
inline bool add_on_cpu(uint64_t*, uint64_t, uint32_t, uint64_t*) noexcept { return false; }

#endif

}  // namespace relayfs::core::rseq
