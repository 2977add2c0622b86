// rseq availability and the remote fence: the slow side of rseq.h.
#include "core/rseq.h"

#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>

namespace relayfs::core::rseq {

namespace {

long membarrier(int cmd, unsigned flags, int cpu) noexcept {
  return ::syscall(__NR_membarrier, cmd, flags, cpu);
}

// Set before any fork(2) of this process, by a pthread_atfork prepare handler that probe()
// registers, and inherited set by the child. From then on the sections on a buffer's CPU may be
// another process's too (a child writes the parent's buffers, relay_open(3) "fork(2)"), and
// the membarrier of remote_fence reaches only the caller's own. seq_cst, and remote_fence loads
// it after the claimer's seq_cst CAS (Producer::claim_word): a claimer that finds it clear made
// its CAS before the store, so before the child existed, and every section of the child loads
// the word after the CAS.
std::atomic<bool> g_forked{false};

void on_fork_prepare() noexcept {
  g_forked.store(true, std::memory_order_seq_cst);
}

// Runs the calling thread on `cpu` for a moment, then where it was allowed before. Once it has
// run there, every task that was running there when the caller's change was made has been
// switched out, or has left its section: a switched-out task's section is restarted when it
// runs again, whatever its process. Returns 0, or -errno when the thread may not run there (a
// cpuset without that CPU) or could not be moved.
int run_on(int cpu) noexcept {
  if (cpu < 0 || cpu >= CPU_SETSIZE) return -EINVAL;
  cpu_set_t was, one;
  if (::sched_getaffinity(0, sizeof was, &was) != 0) return -errno;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (::sched_setaffinity(0, sizeof one, &one) != 0) return -errno;
  // sched_setaffinity moves the calling thread off a CPU it may no longer use before it returns;
  // the rseq area's cpu_id says where the thread runs now. The yields only cover a kernel that
  // moved it later.
  int rc = 0;
  for (int i = 0; current_cpu() != cpu; ++i) {
    if (i == 1000) {
      rc = -EAGAIN;
      break;
    }
    ::sched_yield();
  }
  // Back where it was. Should the mask have become invalid meanwhile (its CPUs all taken out of
  // the thread's cpuset), the thread stays on `cpu`: it still runs, and nothing else can be done.
  (void)::sched_setaffinity(0, sizeof was, &was);
  return rc;
}

bool probe() noexcept {
#ifdef RELAYFS_HAVE_RSEQ
  // Without the handler a fork would go unnoticed: take every fork as having happened.
  if (::pthread_atfork(&on_fork_prepare, nullptr, nullptr) != 0) on_fork_prepare();
  // glibc registers rseq for every thread it starts unless told not to
  // (GLIBC_TUNABLES=glibc.pthread.rseq=0); then __rseq_size is 0 process-wide. Otherwise it is
  // the registered feature size (20 on bookworm's glibc): we need cpu_id and rseq_cs within it.
  if (__rseq_size < offsetof(struct ::rseq, rseq_cs) + sizeof(uint64_t)) return false;
  if (static_cast<int32_t>(thread_area()->cpu_id) < 0) return false;
  // Remote changes of a per-CPU word need to restart the sections running on that CPU.
  return membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) == 0;
#else
  return false;
#endif
}

}  // namespace

bool available() noexcept {
  static const bool ok = probe();
  return ok;
}

bool fenced_commits() noexcept {
  // Registration is for the whole process and lasts; a kernel without the command (before 4.16)
  // or a seccomp filter that refuses it leaves the producer on its locked commit.
  static const bool ok =
      available() && membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
  return ok;
}

int arming_fence() noexcept {
  if (membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0) return 0;
  return -errno;
}

int remote_fence(int cpu) noexcept {
  // After a fork, sections of another process may run there, which only running there fences
  // out. If the thread may not run there, the membarrier is all there is (relay_open(3), BUGS).
  if (g_forked.load(std::memory_order_seq_cst) && run_on(cpu) == 0) return 0;
  if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu) == 0)
    return 0;
  return -errno;
}

}  // namespace relayfs::core::rseq
