// The extended attributes the daemon shows and its clients read (relay(7) "Attributes",
// relayfs(8)): named here once, for the daemon (src/fs), librelayfs and relayctl.
//
// Every directory has kControlXattr, the mount's root also kUsersXattr. A relay file has
// kXattrPrefix + attr_name(i) for every i < kAttrCount: its buffer's counters (core/stats.h, in
// that order, so attribute i < core::kCounterCount is core::counter(st, i)), then what
// describes its channel.
#pragma once

#include <cstddef>
#include <iterator>
#include <string>
#include <string_view>

#include "core/stats.h"

namespace relayfs::proto {

inline constexpr char kXattrPrefix[] = "user.relayfs.";
// Every directory's: the daemon's control socket ("@name", abstract), how a producer finds it.
inline constexpr char kControlXattr[] = "user.relayfs.control";
// The root directory's: each user's channels, memory and connections, and the limits.
inline constexpr char kUsersXattr[] = "user.relayfs.users";

// A relay file's attributes after the counters.
enum FileAttr : size_t {
  kAttrMode = core::kCounterCount,  // "overwrite", "subbuf_start" or "no-overwrite"
  kAttrBlocking,                    // "1" for a RELAY_BLOCKING channel, else "0"
  kAttrChannel,                     // the channel's base_filename
  kAttrCount
};

// The name of attribute i < kAttrCount, without kXattrPrefix.
constexpr const char* attr_name(size_t i) {
  constexpr const char* kDescribed[] = {"mode", "blocking", "channel"};
  static_assert(std::size(kDescribed) == kAttrCount - core::kCounterCount);
  return i < core::kCounterCount ? core::kCounterNames[i] : kDescribed[i - core::kCounterCount];
}

// The index of the attribute called name (without kXattrPrefix), or kAttrCount if none is.
constexpr size_t attr_index(std::string_view name) {
  size_t i = 0;
  while (i < kAttrCount && name != attr_name(i)) ++i;
  return i;
}

// The index of the relay-file attribute whose full name is xattr, or kAttrCount if none is.
constexpr size_t xattr_index(std::string_view xattr) {
  return xattr.starts_with(kXattrPrefix) ? attr_index(xattr.substr(std::size(kXattrPrefix) - 1))
                                         : kAttrCount;
}

// The full name of attribute i: kXattrPrefix + attr_name(i).
inline std::string xattr_name(size_t i) {
  return std::string(kXattrPrefix) + attr_name(i);
}

// The directories' attributes share the prefix, and no file attribute takes their names.
static_assert(std::string_view(kControlXattr).starts_with(kXattrPrefix) &&
              std::string_view(kUsersXattr).starts_with(kXattrPrefix));
static_assert(xattr_index(kControlXattr) == kAttrCount && xattr_index(kUsersXattr) == kAttrCount);
static_assert(xattr_index("user.relayfs.mode") == kAttrMode && xattr_index("user.relayfs.") == kAttrCount);

}  // namespace relayfs::proto
