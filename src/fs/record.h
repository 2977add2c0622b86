// Recording a buffer to disk inside the daemon (relayctl record): whole sub-buffers go from the
// buffer's io_uring-registered mapping to the output file with fixed-buffer writes, O_DIRECT
// where the file and the write's alignment allow, and are consumed only once written.
#pragma once

#include <linux/time_types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/consumer.h"
#include "core/fd.h"
#include "fs/access.h"
#include "fs/connection.h"
#include "fs/hooks.h"
#include "fs/loop.h"
#include "proto/protocol.h"
#include "proto/record_state.h"
#include "proto/wire.h"

namespace relayfs::fs {

class RelayBuffer;

// One buffer being recorded. Loop thread only; owned by Recorder::recordings_, pointed to by its
// buffer's Source::recording while it runs.
struct Recording {
  uint64_t id = 0;
  uint64_t conn = 0;    // the recorder's control connection; 0 once it went away
  std::shared_ptr<RelayBuffer> buf;
  core::UniqueFd out, index, direct;  // passed by the recorder, checked (record.cc)
  core::UniqueFd state;               // the state file (proto/record_state.h), if one came
  uint32_t mem_align = 0, off_align = 0;

  // The state file: what it says now (on_disk), what the output's kept bytes make true (kept),
  // and the write in flight. A state is written after an extent reached the output and before
  // the extent is consumed, so the file is true of the output whenever the daemon dies.
  proto::RecordState on_disk{}, kept{}, state_pending{};
  std::string state_text;           // the write in flight (kept alive until it completes)
  bool state_writing = false;
  bool finish_after_state = false;  // the state in flight is the extent's: consume it then
  // A resume: what lies before stream position skip_to was written to the output by the daemon
  // that died; it is consumed without being written again.
  bool skipping = false;
  uint64_t skip_to = 0;

  uint64_t off = 0;                 // bytes in the output file
  uint64_t position = 0;            // where the buffer's reader stood at the start
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

// Every recording, on the loop thread.
class Recorder {
 public:
  Recorder(Loop& loop, Connections& conns, Access& access, Hooks& hooks)
      : loop_(loop), conns_(conns), access_(access), hooks_(hooks) {}

  // kRecord from c: checks the request and its descriptors, replies, and starts.
  void start(Connection& c, proto::Received& m);
  // Ends every recording of connection conn_id (kRecordStop); gone: the connection went away,
  // so nothing is reported to it.
  void stop(uint64_t conn_id, bool gone);
  // Starts the next write, or arms the doorbell for the next sub-buffer, or ends the recording
  // once the channel is finalized and drained.
  void step(Recording& r);
  void on_write(uint64_t id, int res);
  void on_index_write(uint64_t id, int res);
  void on_state_write(uint64_t id, int res);
  void on_index_deadline(uint64_t id);
  // Frees the recordings that ended, where no handler holds a reference to one.
  void reap();

 private:
  // The recording with this id, nullptr once it was freed (a completion that came after).
  Recording* find(uint64_t id);
  int check(Connection& c, proto::Received& m, const proto::RecordRequest& req, Recording* rec);
  void submit_write(Recording& r);
  void finish_extent(Recording& r);
  int resume(Recording& r, const proto::RecordRequest& req, uint64_t* at);
  bool skip(Recording& r);
  void write_state(Recording& r, const proto::RecordState& s, bool then_finish);
  void submit_index_write(Recording& r);
  void resubmit_index_write(Recording& r);
  void send_event(Recording& r, proto::RecordKind kind);
  void end(Recording& r, proto::RecordEnd how, int err);
  void end_after_write(Recording& r, int res, proto::RecordEnd how);

  Loop& loop_;
  Connections& conns_;
  Access& access_;
  Hooks& hooks_;
  std::unordered_map<uint64_t, std::unique_ptr<Recording>> recordings_;
  std::vector<uint64_t> reap_;  // ended recordings, freed at the end of the loop's pass
  uint64_t next_id_ = 1;
};

}  // namespace relayfs::fs
