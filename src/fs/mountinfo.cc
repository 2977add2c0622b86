#include "fs/mountinfo.h"

#include <fcntl.h>

#include <cerrno>
#include <utility>

namespace relayfs::fs {

std::string mounted_dev(const std::string& point, const std::string& type) {
  std::string dev;
  // A later line is a mount made later: the one on top of any other at the same point.
  for (const auto& m : read_mountinfo())
    if (m.point == point && m.type == type) dev = m.dev;
  return dev;
}

int MountWatch::open(std::string dev, std::string type) {
  // Opened once and only polled: the kernel reports each change once per open file, at poll.
  fd_.reset(::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC));
  if (!fd_) return -errno;
  dev_ = std::move(dev);
  type_ = std::move(type);
  return 0;
}

bool MountWatch::gone() const {
  const auto mounts = read_mountinfo();
  if (mounts.empty()) return false;  // unreadable (there is always a root)
  for (const auto& m : mounts)
    if (m.dev == dev_ && m.type == type_) return false;
  return true;
}

}  // namespace relayfs::fs
