// The mounts this process sees, from /proc/self/mountinfo: the daemon asks it whether a relayfs
// is already mounted where it is to mount (main.cc), and which filesystem holds a descriptor a
// recorder passed (record.cc).
#pragma once

#include <string>
#include <vector>

namespace relayfs::fs {

struct MountEntry {
  std::string dev;    // "major:minor"
  std::string point;  // the mount point, with mountinfo's \ooo escapes undone
  std::string type;   // e.g. "ext4", "fuse.relayfs"
};

// Every mount, in mountinfo's order; empty if it cannot be read.
std::vector<MountEntry> read_mountinfo();

}  // namespace relayfs::fs
