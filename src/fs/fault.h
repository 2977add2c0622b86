// Fault injection for the test suite. RELAYFS_TEST_FAULTS, in the daemon's environment, names the
// faults to inject (comma-separated); main() reads it once, before any thread starts. Each fault
// makes a rare path happen on demand, so that a test of that path is deterministic instead of a
// race it may or may not win. Unset (the normal case) nothing changes, and a check costs a load
// of one word on paths that are slow already.
#pragma once

#include <cstdint>

namespace relayfs::fs {

enum class Fault : uint32_t {
  // notify_owner (buf_mapped / buf_unmapped) fails with std::bad_alloc, as when memory runs out.
  kNotifyAlloc = 1u << 0,
  // A zero-copy read's reply to the kernel fails, as when the reader's request is gone: the
  // daemon answers the read with EIO instead of the data, and treats it as a failed reply.
  kReplyFail = 1u << 1,
  // A recording holds its index lines back until it is asked to stop: the stop then finds
  // index text not yet written for extents already consumed.
  kIndexHold = 1u << 2,
};

// Parses a RELAYFS_TEST_FAULTS value. Returns false, setting nothing, for an unknown name.
bool load_faults(const char* spec) noexcept;

namespace detail {
inline uint32_t g_faults = 0;  // written once by main() before the threads start
}  // namespace detail

inline bool fault(Fault f) noexcept {
  return (detail::g_faults & static_cast<uint32_t>(f)) != 0;
}

}  // namespace relayfs::fs
