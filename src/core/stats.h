// Per-buffer counters, as the consumer reports them. The list below is the one place they are
// named: BufferStats, the relay files' extended attributes (src/fs/ops.cc), the merged view's
// sums and relayctl stat all come from it. (struct relay_stats in the public C header mirrors
// it by hand; tests/fs/features_test.cc checks that they agree, field by field.)
//
// The books balance (relay(7) "Losses"): at any time,
//   bytes_produced = bytes_consumed + bytes_unread + lost_uncommitted + every lost_*_bytes,
// each term counted by the consumer where the read position moves.
#pragma once

#include <cstddef>
#include <cstdint>

namespace relayfs::core {

// X(name, what): every counter, in the order the attributes are listed.
#define RELAYFS_BUFFER_COUNTERS(X)                                                               \
  X(subbuf_size, "geometry: bytes per sub-buffer")                                               \
  X(n_subbufs, "geometry: sub-buffers per buffer")                                               \
  X(subbufs_produced, "sub-buffers switched away from since open or reset")                      \
  X(subbufs_consumed, "sub-buffers fully read or released since open or reset")                  \
  X(bytes_produced, "bytes committed, header bytes included, padding excluded; never shrinks")  \
  X(bytes_consumed, "bytes handed to readers (less what lost_readahead_bytes took back)")       \
  X(bytes_unread, "bytes between the read position and the end of what is produced")            \
  X(lost_full, "records dropped: buffer full (switch refused, or a blocking write timed out)")   \
  X(lost_too_big, "records dropped: larger than a sub-buffer")                                   \
  X(lost_wrap, "records dropped: next sub-buffer still being committed")                         \
  X(overruns, "sub-buffers the writer lapped before they were read")                             \
  X(lost_uncommitted, "bytes reserved but never committed (producer died mid-record)")           \
  X(lost_overrun_bytes, "bytes of the sub-buffers counted in overruns, overwritten unread")     \
  X(lost_reset_bytes, "bytes relay_reset discarded unread")                                      \
  X(lost_readahead_bytes, "bytes a splice or sendfile took into the page cache, not delivered") \
  X(lost_expired_bytes, "bytes of an exited producer's channel freed unread (orphan_timeout)")  \
  X(corrupt, "times the control area was found inconsistent")

struct BufferStats {
#define RELAYFS_COUNTER_MEMBER(name, what) uint64_t name = 0;
  RELAYFS_BUFFER_COUNTERS(RELAYFS_COUNTER_MEMBER)
#undef RELAYFS_COUNTER_MEMBER

  // Adds o's counters to ours, as the merged view reports its buffers; the geometry is theirs.
  void add(const BufferStats& o) noexcept {
#define RELAYFS_COUNTER_ADD(name, what) name += o.name;
    RELAYFS_BUFFER_COUNTERS(RELAYFS_COUNTER_ADD)
#undef RELAYFS_COUNTER_ADD
    subbuf_size = o.subbuf_size;
    n_subbufs = o.n_subbufs;
  }
};

// The counters' names, in the list's order, and a counter by its index there.
inline constexpr const char* kCounterNames[] = {
#define RELAYFS_COUNTER_NAME(name, what) #name,
    RELAYFS_BUFFER_COUNTERS(RELAYFS_COUNTER_NAME)
#undef RELAYFS_COUNTER_NAME
};
inline constexpr size_t kCounterCount = sizeof kCounterNames / sizeof kCounterNames[0];

inline uint64_t counter(const BufferStats& st, size_t i) noexcept {
  const uint64_t values[] = {
#define RELAYFS_COUNTER_VALUE(name, what) st.name,
      RELAYFS_BUFFER_COUNTERS(RELAYFS_COUNTER_VALUE)
#undef RELAYFS_COUNTER_VALUE
  };
  return i < kCounterCount ? values[i] : 0;
}

}  // namespace relayfs::core
