#include "core/mapping.h"

#include <unistd.h>

#include <cerrno>

namespace relayfs::core {

int Mapping::map(int fd, size_t len, int prot, Mapping* out) noexcept {
  const size_t guard = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t outer_len = len + 2 * guard;
  void* outer =
      ::mmap(nullptr, outer_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (outer == MAP_FAILED) return -errno;
  void* want = static_cast<char*>(outer) + guard;
  void* p = ::mmap(want, len, prot, MAP_SHARED | MAP_FIXED, fd, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    ::munmap(outer, outer_len);
    return -err;
  }
  out->reset();
  out->addr_ = p;
  out->len_ = len;
  out->outer_ = outer;
  out->outer_len_ = outer_len;
  return 0;
}

}  // namespace relayfs::core
