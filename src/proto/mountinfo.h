// The mount table as /proc/self/mountinfo lists it, and the type a relayfs mount has there: the
// daemon asks it whether a relayfs is already mounted where it is to mount and whether its own
// mount is still there (fs/mountinfo.h), relayctl top which relayfs mounts there are.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace relayfs::proto {

// A relayfs mount's type in the mount table: FUSE's "fuse." and the subtype the daemon mounts
// with (-o subtype=kSubtype).
inline constexpr char kSubtype[] = "relayfs";
inline constexpr char kFsType[] = "fuse.relayfs";
static_assert(std::string_view(kFsType).starts_with("fuse.") &&
              std::string_view(kFsType).substr(5) == kSubtype);

struct MountEntry {
  std::string dev;    // "major:minor"
  std::string point;  // the mount point, with mountinfo's \ooo escapes undone
  std::string type;   // e.g. "ext4", "fuse.relayfs"
};

// Every mount listed in text (mountinfo's format), in its order; lines that are not such an
// entry are passed over.
std::vector<MountEntry> parse_mountinfo(std::string_view text);

// Every mount this process sees, in mountinfo's order; empty if it cannot be read.
std::vector<MountEntry> read_mountinfo();

}  // namespace relayfs::proto
