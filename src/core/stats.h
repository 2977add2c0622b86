// Per-buffer counters, as the consumer reports them. The list below is the one place they are
// named: BufferStats, the relay files' extended attributes (proto/names.h), the merged view's
// sums, proto::RecordEvent's loss counters, relayctl stat and record all come from it. struct
// relay_stats in the public C header keeps its own fields (an ABI); librelayfs fills it through
// code generated from this list (src/client/stats.h), which does not compile if they diverge.
//
// The books balance (relay(7) "Losses"): at any time,
//   bytes_produced = bytes_consumed + bytes_unread + lost_uncommitted + every lost_*_bytes,
// each term counted by the consumer where the read position moves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace relayfs::core {

// X(name, what): every counter, in the order the attributes are listed. The list is made of
// groups that others generate from too: the geometry; the flow of data; the loss counters
// (records dropped, overruns, and the bytes lost, which a recording's events carry, in this
// order: proto::RecordEvent); the buffer's health, and what a daemon restart delivered twice
// (relay(7), "Daemon restarts": at least once).
#define RELAYFS_BUFFER_COUNTERS(X) \
  RELAYFS_GEOMETRY_COUNTERS(X)     \
  RELAYFS_FLOW_COUNTERS(X)         \
  RELAYFS_LOSS_COUNTERS(X)         \
  X(corrupt, "times the control area was found inconsistent")                            \
  X(redelivered_bytes, "bytes of reads in flight when a daemon died, delivered again after")

#define RELAYFS_GEOMETRY_COUNTERS(X)                                                             \
  X(subbuf_size, "geometry: bytes per sub-buffer")                                               \
  X(n_subbufs, "geometry: sub-buffers per buffer")

#define RELAYFS_FLOW_COUNTERS(X)                                                                 \
  X(subbufs_produced, "sub-buffers switched away from since open or reset")                      \
  X(subbufs_consumed, "sub-buffers fully read or released since open or reset")                  \
  X(bytes_produced, "bytes committed, header bytes included, padding excluded; never shrinks")  \
  X(bytes_consumed, "bytes handed to readers (less what lost_readahead_bytes took back)")       \
  RELAYFS_BACKLOG_COUNTERS(X)

// What the buffer holds now. With the geometry, these are the levels, which go down as well as
// up (gauges, to Prometheus: relayctl stat --prometheus); every other counter is a total, which
// only grows, except that relay_reset starts the sub-buffer counts over and bytes_consumed gives
// back what lost_readahead_bytes takes.
#define RELAYFS_BACKLOG_COUNTERS(X)                                                              \
  X(bytes_unread, "bytes between the read position and the end of what is produced")

// Everything that left the buffer without reaching a reader.
#define RELAYFS_LOSS_COUNTERS(X)                                                                 \
  RELAYFS_LOST_RECORD_COUNTERS(X)                                                                \
  X(overruns, "sub-buffers the writer lapped before they were read")                             \
  X(lost_uncommitted, "bytes reserved but never committed (producer died mid-record)")           \
  RELAYFS_LOST_BYTE_COUNTERS(X)

// Records a writer dropped (relay_write failed; each counts one record).
#define RELAYFS_LOST_RECORD_COUNTERS(X)                                                          \
  X(lost_full, "records dropped: buffer full (switch refused, or a blocking write timed out)")   \
  X(lost_too_big, "records dropped: larger than a sub-buffer")                                   \
  X(lost_wrap, "records dropped: next sub-buffer still being committed")

// The "every lost_*_bytes" of the balance above: committed bytes that left unread.
#define RELAYFS_LOST_BYTE_COUNTERS(X)                                                            \
  X(lost_overrun_bytes, "bytes of the sub-buffers counted in overruns, overwritten unread")     \
  X(lost_reset_bytes, "bytes relay_reset discarded unread")                                      \
  X(lost_readahead_bytes, "bytes a splice or sendfile took into the page cache, not delivered") \
  X(lost_expired_bytes, "bytes of an exited producer's channel freed unread (orphan_timeout)")

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

// Every byte counted lost: lost_uncommitted and the lost_*_bytes. The balance above is
//   bytes_produced = bytes_consumed + bytes_unread + bytes_lost(st).
inline uint64_t bytes_lost(const BufferStats& st) noexcept {
  uint64_t sum = st.lost_uncommitted;
#define RELAYFS_COUNTER_SUM(name, what) sum += st.name;
  RELAYFS_LOST_BYTE_COUNTERS(RELAYFS_COUNTER_SUM)
#undef RELAYFS_COUNTER_SUM
  return sum;
}

// Every record counted dropped: the lost_* record counters (each counts one relay_write that
// failed). Bytes lost are bytes_lost's; the two are kept apart, being of different units.
inline uint64_t records_lost(const BufferStats& st) noexcept {
  uint64_t sum = 0;
#define RELAYFS_COUNTER_SUM(name, what) sum += st.name;
  RELAYFS_LOST_RECORD_COUNTERS(RELAYFS_COUNTER_SUM)
#undef RELAYFS_COUNTER_SUM
  return sum;
}

// The counters' names, in the list's order, and a counter by its index there.
inline constexpr const char* kCounterNames[] = {
#define RELAYFS_COUNTER_NAME(name, what) #name,
    RELAYFS_BUFFER_COUNTERS(RELAYFS_COUNTER_NAME)
#undef RELAYFS_COUNTER_NAME
};
inline constexpr size_t kCounterCount = sizeof kCounterNames / sizeof kCounterNames[0];
// What each counter counts, in the same order (the list's text).
inline constexpr const char* kCounterHelp[] = {
#define RELAYFS_COUNTER_HELP(name, what) what,
    RELAYFS_BUFFER_COUNTERS(RELAYFS_COUNTER_HELP)
#undef RELAYFS_COUNTER_HELP
};

// True if counter i is a level (the geometry, the backlog), false if it is a total.
constexpr bool is_level(size_t i) {
  constexpr std::string_view kLevels[] = {
#define RELAYFS_COUNTER_NAME(name, what) #name,
      RELAYFS_GEOMETRY_COUNTERS(RELAYFS_COUNTER_NAME) RELAYFS_BACKLOG_COUNTERS(RELAYFS_COUNTER_NAME)
#undef RELAYFS_COUNTER_NAME
  };
  for (std::string_view l : kLevels)
    if (i < kCounterCount && l == kCounterNames[i]) return true;
  return false;
}

inline uint64_t counter(const BufferStats& st, size_t i) noexcept {
  const uint64_t values[] = {
#define RELAYFS_COUNTER_VALUE(name, what) st.name,
      RELAYFS_BUFFER_COUNTERS(RELAYFS_COUNTER_VALUE)
#undef RELAYFS_COUNTER_VALUE
  };
  return i < kCounterCount ? values[i] : 0;
}

}  // namespace relayfs::core
