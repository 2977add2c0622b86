// struct relay_stats, the public C view of a buffer's counters, filled from core::BufferStats by
// code generated from the counter table (core/stats.h).
//
// relay_stats is an ABI and keeps its own fields and order: the table's order, without the
// counters it never had (kNotInRelayStats), then those a later soname appended
// (kAppendedToRelayStats). A counter the table adds that relay_stats lacks (or names otherwise),
// a relay_stats field the table does not name, or a field out of that order does not compile.
#pragma once

#include <relayfs/relay.h>

#include <cstddef>
#include <iterator>
#include <string_view>

#include "core/stats.h"

namespace relayfs::client {

// The daemon's alone, or added after the ABI was fixed without room for them: corrupt is the
// daemon's view of the control area; redelivered_bytes is read from xattrs and relayctl stat.
inline constexpr std::string_view kNotInRelayStats[] = {"corrupt", "redelivered_bytes"};
// Appended to relay_stats after the fields in table order (librelayfs.so.1).
inline constexpr std::string_view kAppendedToRelayStats[] = {"bytes_unread"};

namespace detail {

template <size_t N>
constexpr int position(const std::string_view (&list)[N], std::string_view name) {
  for (size_t i = 0; i < N; ++i)
    if (list[i] == name) return static_cast<int>(i);
  return -1;
}

// The field number of counter `name` in relay_stats, or -1 if relay_stats has none.
constexpr int relay_stats_slot(std::string_view name) {
  if (position(kNotInRelayStats, name) >= 0) return -1;
  const int in_order = static_cast<int>(core::kCounterCount - std::size(kNotInRelayStats) -
                                        std::size(kAppendedToRelayStats));
  if (const int i = position(kAppendedToRelayStats, name); i >= 0) return in_order + i;
  int slot = 0;
  for (std::string_view n : core::kCounterNames) {
    if (n == name) return slot;
    if (position(kNotInRelayStats, n) < 0 && position(kAppendedToRelayStats, n) < 0) ++slot;
  }
  return -1;
}

constexpr bool all_counters(const std::string_view* list, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    bool found = false;
    for (std::string_view c : core::kCounterNames) found = found || c == list[i];
    if (!found) return false;
  }
  return true;
}
static_assert(all_counters(kNotInRelayStats, std::size(kNotInRelayStats)) &&
              all_counters(kAppendedToRelayStats, std::size(kAppendedToRelayStats)),
              "kNotInRelayStats, kAppendedToRelayStats: counters of core/stats.h only");
// No field beyond the table's counters.
static_assert(sizeof(relay_stats) ==
              (core::kCounterCount - std::size(kNotInRelayStats)) * sizeof(unsigned long long));

// A template, so that a counter relay_stats lacks is a checked case rather than a compile
// error of its own (S is relay_stats).
template <typename S>
void to_relay_stats(const core::BufferStats& from, S* to) {
#define RELAYFS_TO_RELAY_STATS(name, what)                                                    \
  if constexpr (requires { to->name; }) {                                                      \
    static_assert(relay_stats_slot(#name) >= 0 &&                                              \
                      offsetof(S, name) ==                                                     \
                          static_cast<size_t>(relay_stats_slot(#name)) * sizeof(to->name),     \
                  "struct relay_stats: field " #name " is not where its ABI has it");         \
    to->name = from.name;                                                                      \
  } else {                                                                                     \
    static_assert(sizeof(S) == 0 || relay_stats_slot(#name) < 0,                              \
                  "struct relay_stats lacks counter " #name " (or kNotInRelayStats should list it)"); \
  }
  RELAYFS_BUFFER_COUNTERS(RELAYFS_TO_RELAY_STATS)
#undef RELAYFS_TO_RELAY_STATS
}

}  // namespace detail

// Fills *to from the counters of from (every field of relay_stats).
inline void to_relay_stats(const core::BufferStats& from, relay_stats* to) {
  detail::to_relay_stats(from, to);
}

}  // namespace relayfs::client
