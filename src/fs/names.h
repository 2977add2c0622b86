// The names of the daemon's extended attributes (relay(7)). To be replaced by proto/names.h.
#pragma once

namespace relayfs::fs {

// The name the xattr on every directory gives: how a producer finds this daemon.
inline constexpr const char* kControlXattr = "user.relayfs.control";
// The root directory's: each user's channels, memory and connections, and the limits (quota.h).
inline constexpr const char* kUsersXattr = "user.relayfs.users";

}  // namespace relayfs::fs
