// The daemon's options: what relayfs(8)'s -o list sets, beside libfuse's own.
#pragma once

#include <cstdint>
#include <string>

#include "fs/quota.h"

namespace relayfs::fs {

struct Options {
  std::string fsname = "relayfs";  // SOURCE, shown in /proc/mounts
  bool blocking = false;           // -o blocking: an empty read waits for data
  bool allow_other = false;        // -o allow_other: users other than the mounter may use it
  bool read_only = false;          // -o ro: no new channels (EROFS), as no new files
  uint32_t readahead = 0;          // -o readahead=SIZE: the kernel's page-cache read-ahead
  uint32_t orphan_timeout = 0;     // -o orphan_timeout=S: free finalized channels unread after S
                                   // seconds (0: never)
  uint32_t recheck_ms = 250;       // -o recheck_ms=MS: the doorbell's backstop tick (0: none)
  Limits limits = default_limits();  // -o user_memory, users_memory, user_channels, ...
};

}  // namespace relayfs::fs
