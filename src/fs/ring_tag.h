// user_data of the daemon's io_uring submissions: what completed (top byte) and which one.
#pragma once

#include <cstdint>

namespace relayfs::fs {

enum Watch : uint64_t {
  kListen = 1,       // multishot poll: the control socket's listener
  kNotify = 2,       // multishot poll: the eventfd FUSE workers ring
  kConn = 3,         // multishot poll: a control connection, by id
  kDoorbell = 4,     // multishot poll: a channel's doorbell, by channel id
  kCancel = 5,       // a poll removal
  kRecordWrite = 6,  // a recording's write to disk, by recording id (one shot)
  kIndexWrite = 7,   // a recording's write to its index, by recording id (one shot)
  kConnOut = 8,      // one-shot poll: a control connection has room for queued messages
  kConnMore = 9,     // a no-op: a control connection has more messages to read than one pass took
  kExpire = 10,      // a timeout: look for orphaned channels to free (-o orphan_timeout)
  kIndexDeadline = 11,  // a timeout: a stopped recording's index write had its time (record.cc)
  kMounts = 12,         // multishot poll (POLLPRI): the mount table changed (unmounted.cc)
  kEndSession = 13,     // a timeout: ask the FUSE session loop again to end (unmounted.cc)
  kStateWrite = 14,     // a recording's write to its state file, by recording id (one shot)
  kRecheck = 15,        // a timeout: look again at every source a reader waits on (recheck.cc)
};
constexpr uint64_t tag(Watch s, uint64_t id) {
  return (uint64_t{s} << 56) | id;
}
constexpr Watch source_of(uint64_t ud) {
  return static_cast<Watch>(ud >> 56);
}
constexpr uint64_t id_of(uint64_t ud) {
  return ud & ((uint64_t{1} << 56) - 1);
}

}  // namespace relayfs::fs
