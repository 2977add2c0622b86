// Recording a buffer to disk inside the daemon (relayctl record): whole sub-buffers go from the
// buffer's io_uring-registered mapping to the output file with fixed-buffer writes, O_DIRECT
// where the file and the write's alignment allow, and are consumed only once written.
#pragma once

#include <linux/time_types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "core/consumer.h"
#include "core/fd.h"
#include "proto/protocol.h"

namespace relayfs::fs {

class RelayBuffer;

// One buffer being recorded. Loop thread only; owned by RelayFs::recordings_, pointed to by its
// buffer's Source::recording while it runs.
struct Recording {
  uint64_t id = 0;
  uint64_t conn = 0;    // the recorder's control connection; 0 once it went away
  std::shared_ptr<RelayBuffer> buf;
  core::UniqueFd out, index, direct;  // passed by the recorder, checked (record.cc)
  uint32_t mem_align = 0, off_align = 0;

  uint64_t off = 0;                 // bytes in the output file
  core::Consumer::Extent ext{};     // the extent being written, while writing
  uint32_t written = 0;             // of it, so far (a short write goes on)
  bool writing = false;             // a write is in flight: the recording must outlive it
  bool via_direct = false;          // the write in flight uses the O_DIRECT descriptor
  bool ending = false;              // ends once nothing is in flight (end_recording)
  bool dead = false;                // ended: waits for the loop to free it
  unsigned retries = 0;             // EAGAIN/EINTR results in a row
  std::string index_pending;        // index lines not yet submitted
  std::string index_inflight;       // the index write in flight (kept alive until it completes)
  size_t index_done = 0;            // of it, written so far
  bool index_writing = false;
  bool index_timed_out = false;     // a stop's deadline cancelled the index write in flight
  __kernel_timespec index_deadline{};  // that deadline, read by the kernel at submission
  core::UniqueFd stall;             // fault index_stall: what the index writes wait on
  std::chrono::steady_clock::time_point last_progress{};
  proto::RecordEvent totals{};      // what the events report

  // The descriptor for a write of len bytes from addr at file offset off: O_DIRECT only if
  // every one of them meets the filesystem's alignment.
  bool direct_ok(uint64_t at, const void* addr, uint32_t len) const {
    if (!direct.valid() || mem_align == 0 || off_align == 0) return false;
    return reinterpret_cast<uintptr_t>(addr) % mem_align == 0 && at % off_align == 0 &&
           len % off_align == 0;
  }
};

// How a recording ended (proto::RecordEvent::ended_by).
enum RecordEnd : uint32_t {
  kEndClosed = 1,       // the channel closed and the buffer is drained
  kEndStopped = 2,      // kRecordStop, or the recorder went away
  kEndFailed = 3,       // a write to the output file failed (status)
  kEndIndexFailed = 4,  // a write to the index failed (status)
};

}  // namespace relayfs::fs
