// rseq availability and the remote fence: the slow side of rseq.h.
#include "core/rseq.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace relayfs::core::rseq {

namespace {

long membarrier(int cmd, unsigned flags, int cpu) noexcept {
  return ::syscall(__NR_membarrier, cmd, flags, cpu);
}

bool probe() noexcept {
#ifdef RELAYFS_HAVE_RSEQ
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
  if (membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu) == 0)
    return 0;
  return -errno;
}

}  // namespace relayfs::core::rseq
