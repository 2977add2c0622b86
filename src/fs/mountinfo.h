// The mounts this process sees (proto/mountinfo.h reads /proc/self/mountinfo): the daemon asks
// them whether a relayfs is already mounted where it is to mount (main.cc), which filesystem
// holds a descriptor a recorder passed (record.cc), and whether its own mount is still there
// (MountWatch).
#pragma once

#include <string>
#include <vector>

#include "core/fd.h"
#include "proto/mountinfo.h"

namespace relayfs::fs {

using proto::MountEntry;
using proto::read_mountinfo;

// The device ("major:minor") of the topmost mount of type at point (a real path, as realpath
// gives it), or "" if none is there.
std::string mounted_dev(const std::string& point, const std::string& type);

// Tells the daemon when the filesystem it serves is mounted nowhere it can see: after
// `umount -l` or `fusermount3 -u -z` the kernel keeps a detached mount alive, and its daemon
// with it, for as long as any file of it is open, so a `tail -F` would keep the old daemon (and
// the producers' buffers) forever. The kernel signals POLLPRI on /proc/self/mountinfo at every
// change of the mount table; the watcher then reads the table again. The filesystem is known by
// its device, an anonymous one that stays its own until its superblock goes: a bind mount of it
// elsewhere, or a mount moved, still counts as mounted.
class MountWatch {
 public:
  // Watches for dev (mounted_dev's answer) of type. Returns 0 or -errno.
  int open(std::string dev, std::string type);
  // The descriptor to poll for POLLPRI; -1 before open.
  int fd() const { return fd_.get(); }
  // True if no mount of the filesystem is listed any more. A table that cannot be read is not
  // taken for one without it.
  bool gone() const;

 private:
  core::UniqueFd fd_;
  std::string dev_, type_;
};

}  // namespace relayfs::fs
