#include "fs/mountinfo.h"

#include <fcntl.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <utility>

namespace relayfs::fs {

namespace {

// mountinfo escapes space, tab, newline and backslash in paths as \ooo.
std::string unescape(const std::string& s) {
  std::string out;
  auto octal = [](char c) { return c >= '0' && c <= '7'; };
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && octal(s[i + 1]) && octal(s[i + 2]) &&
        octal(s[i + 3])) {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 +
                                      (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

std::vector<MountEntry> read_mountinfo() {
  std::vector<MountEntry> out;
  std::ifstream in("/proc/self/mountinfo");
  for (std::string line; std::getline(in, line);) {
    // ID PARENT MAJOR:MINOR ROOT POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER-OPTIONS
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    const auto dash = line.find(" - ");
    if (!(f >> id >> parent >> dev >> root >> point) || dash == std::string::npos) continue;
    std::istringstream t(line.substr(dash + 3));
    std::string type;
    if (t >> type) out.push_back({dev, unescape(point), type});
  }
  return out;
}

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
