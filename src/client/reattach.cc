#include "client/reattach.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "proto/names.h"

namespace relayfs::client {

int place_of(const char* parent, Place* out) {
  std::unique_ptr<char, decltype(&std::free)> real(::realpath(parent, nullptr), &std::free);
  if (!real) return -errno;
  struct stat st;  // of dir, as it walks up
  if (::stat(real.get(), &st) != 0) return -errno;
  const dev_t dev = st.st_dev;
  Place p;
  std::string dir = real.get();
  std::vector<Place::Dir> below;  // innermost first
  while (dir != "/") {
    const size_t slash = dir.rfind('/');
    const std::string up = slash == 0 ? "/" : dir.substr(0, slash);
    struct stat ust;
    if (::stat(up.c_str(), &ust) != 0) return -errno;
    if (ust.st_dev != dev) break;  // dir is the mount's root
    below.push_back({dir.substr(slash + 1), st.st_mode & 07777});
    dir = up;
    st = ust;
  }
  p.root = dir;
  p.dirs.assign(below.rbegin(), below.rend());
  *out = std::move(p);
  return 0;
}

int open_root(const Place& place, core::UniqueFd* root) {
  root->reset(::open(place.root.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  return *root ? 0 : -errno;
}

int daemon_of(int root, std::string* name) {
  char buf[108];
  const ssize_t n = ::fgetxattr(root, proto::kControlXattr, buf, sizeof buf - 1);
  if (n < 0) return errno == ENODATA || errno == EOPNOTSUPP ? -ENOTSUP : -errno;
  name->assign(buf, static_cast<size_t>(n));
  return 0;
}

int open_parent(int root, const Place& place, ino_t* ino) {
  struct stat rst;
  if (::fstat(root, &rst) != 0) return -errno;
  core::UniqueFd dir(::fcntl(root, F_DUPFD_CLOEXEC, 0));
  if (!dir) return -errno;
  for (const auto& d : place.dirs) {
    const bool made = ::mkdirat(dir.get(), d.name.c_str(), d.mode) == 0;
    if (!made && errno != EEXIST) return -errno;
    core::UniqueFd next(
        ::openat(dir.get(), d.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!next) return -errno;
    // mkdir applied the umask: give the directory the bits it had.
    if (made && ::fchmod(next.get(), d.mode) != 0) return -errno;
    dir = std::move(next);
  }
  struct stat st;
  if (::fstat(dir.get(), &st) != 0) return -errno;
  if (st.st_dev != rst.st_dev) return -EXDEV;  // another file system mounted on the way
  *ino = st.st_ino;
  return 0;
}

int MountWatch::open() {
  mountinfo_.reset(::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC));
  return mountinfo_ ? 0 : -errno;
}

int MountWatch::wait(int wake, int timeout_ms) {
  pollfd fds[2] = {{mountinfo_.get(), POLLPRI, 0}, {wake, POLLIN, 0}};
  // Without the mount table (no /proc), the timeout alone paces the attempts.
  const int n = ::poll(mountinfo_ ? fds : fds + 1, mountinfo_ ? 2 : 1, timeout_ms);
  if (n <= 0) return 0;  // timed out, or EINTR: look again
  if (fds[1].revents & POLLIN) {
    uint64_t count;
    if (::read(wake, &count, sizeof count) < 0) {
    }  // EAGAIN: another reader took it; the wake-up happened all the same
    return 2;
  }
  return 1;  // POLLPRI | POLLERR: the kernel reports each change once per open file
}

}  // namespace relayfs::client
