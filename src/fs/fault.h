// Fault injection for the test suite. RELAYFS_TEST_FAULTS, in the daemon's environment, names the
// faults to inject (comma-separated); main() reads it once, before any thread starts. Each fault
// makes a rare path happen on demand, so that a test of that path is deterministic instead of a
// race it may or may not win. Unset (the normal case) nothing changes, and a check costs a load
// of one word on paths that are slow already.
#pragma once

#include <atomic>
#include <cstdint>

namespace relayfs::fs {

enum class Fault : uint32_t {
  // notify_owner (buf_mapped / buf_unmapped) fails with std::bad_alloc, as when memory runs out.
  kNotifyAlloc = 1u << 0,
  // The next zero-copy read's reply to the kernel fails, once, as when the reader's request is
  // gone: the daemon answers that read with EIO instead of the data, and treats it as a failed
  // reply.
  kReplyFail = 1u << 1,
  // A recording holds its index lines back until it is asked to stop: the stop then finds
  // index text not yet written for extents already consumed.
  kIndexHold = 1u << 2,
  // A recording's index writes never complete, as on a filesystem that stopped answering (each
  // waits on an eventfd nothing writes instead).
  kIndexStall = 1u << 3,
  // A read being parked waits half a second between registering its interrupt callback and
  // handing itself to the loop: an interrupt then reaches the loop before the read does.
  kParkDelay = 1u << 4,
  // The daemon kills itself (SIGKILL) right after the first read(2) reply that carried data went
  // out, before the position is released: a reply in flight when the daemon died, which reached
  // its reader (relay(7), "Daemon restarts").
  kDieAfterReply = 1u << 5,
  // The daemon kills itself (SIGKILL) while recording, once a recording kept two extents and a
  // third reached the output and the state file but is not consumed yet: the window in which a
  // daemon dies with bytes on disk that the next one delivers again (a resume passes over them).
  kRecordCrash = 1u << 6,
  // The first channel a kOpen makes waits two seconds, its files in the tree, before its reply
  // goes out: the daemon can be killed while a relay_open is in flight.
  kOpenReplyDelay = 1u << 7,
  // Every lookup of the control socket's attribute (kControlXattr) waits 5 s on its FUSE worker,
  // as in a daemon that does not answer: a producer reattaching then waits in getxattr(2).
  kSlowControlXattr = 1u << 8,
};

// Parses a RELAYFS_TEST_FAULTS value. Returns false, setting nothing, for an unknown name.
bool load_faults(const char* spec) noexcept;

namespace detail {
// relaxed: a fault is a bit nobody orders anything by; main() sets them before threads start.
inline std::atomic<uint32_t> g_faults{0};
}  // namespace detail

// Whether fault f is on.
inline bool fault(Fault f) noexcept {
  return (detail::g_faults.load(std::memory_order_relaxed) & static_cast<uint32_t>(f)) != 0;
}

// Whether fault f is on, turning it off: for a fault that strikes once.
inline bool fault_once(Fault f) noexcept {
  if (!fault(f)) return false;
  const auto bit = static_cast<uint32_t>(f);
  return (detail::g_faults.fetch_and(~bit, std::memory_order_relaxed) & bit) != 0;
}

}  // namespace relayfs::fs
