#include "core/mapping.h"

#include <cerrno>

namespace relayfs::core {

int Mapping::map(int fd, size_t len, int prot, Mapping* out) noexcept {
  void* p = ::mmap(nullptr, len, prot, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return -errno;
  *out = Mapping(p, len);
  return 0;
}

}  // namespace relayfs::core
