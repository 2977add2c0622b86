// Per-buffer counters, as the consumer reports them.
#pragma once

#include <cstdint>

namespace relayfs::core {

struct BufferStats {
  uint32_t subbuf_size = 0;
  uint32_t n_subbufs = 0;
  uint64_t subbufs_produced = 0;  // sub-buffers switched away from since open or reset
  uint64_t subbufs_consumed = 0;  // sub-buffers fully read or released since open or reset
  uint64_t bytes_produced = 0;    // bytes written, header bytes included, padding excluded
  uint64_t bytes_consumed = 0;    // bytes handed to readers
  uint64_t lost_full = 0;         // records dropped: buffer full (switch refused)
  uint64_t lost_too_big = 0;      // records dropped: larger than a sub-buffer
  uint64_t lost_wrap = 0;         // records dropped: next sub-buffer still being committed
  uint64_t overruns = 0;          // sub-buffers the writer lapped before they were read
  uint64_t lost_uncommitted = 0;  // bytes reserved but never committed (producer died mid-record)
  uint64_t corrupt = 0;           // times the control area was found inconsistent
};

}  // namespace relayfs::core
