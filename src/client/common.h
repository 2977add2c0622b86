// Pieces the producer side (relay.cc) and the reader side (reader.cc) of librelayfs share.
//
// The errno rule of src/client (and of src/proto and src/core beneath it): every internal
// function returns 0 (or a count) on success and -errno on failure, and passes such a value on
// as it is. The sign flips once, at the C boundary: an exported RELAY_API function sets
// errno = -rc (through its file's fail()) and returns what its man page says (-1, NULL).
#pragma once

#include <relayfs/relay.h>

#include <chrono>
#include <new>

#include "core/buffer.h"
#include "core/fd.h"
#include "proto/wire.h"

namespace relayfs::client {

// Runs body, an exported function's work returning 0 or -errno: no exception crosses the C
// boundary. std::bad_alloc becomes -ENOMEM, anything else -EIO.
template <typename Body>
int guarded(Body&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return -ENOMEM;
  } catch (...) {
    return -EIO;
  }
}

// How long a request waits for the daemon. Generous: a daemon serving many busy channels on a
// loaded machine has been seen to take over 5 s to answer; the limit is for a hung daemon only.
inline constexpr auto kReplyTimeout = std::chrono::seconds(30);

// Connects to the control socket of the daemon of the mount that holds dir, found through the
// extended attribute every relayfs directory carries. Returns 0 or -errno: -ENOENT, -ENOTSUP
// (not inside relayfs), or the socket or connect error.
int connect_daemon(const char* dir, core::UniqueFd* out);

// The status (-errno) a refusal from the daemon carries (a kError message), or -EIO if it is not
// one.
int refusal(const proto::Received& m);

// relay_control's requests (RELAY_CTL_*) travel as proto::ControlOp, with the same numbers;
// they are converted through these two only.
static_assert(RELAY_CTL_FLUSH == static_cast<int>(proto::ControlOp::kFlush) &&
              RELAY_CTL_RESET == static_cast<int>(proto::ControlOp::kReset) &&
              RELAY_CTL_CLOSE == static_cast<int>(proto::ControlOp::kClose));
// The ControlOp of RELAY_CTL_* code op. Returns false if op is none of them.
inline bool control_op(int op, proto::ControlOp* out) {
  return op >= 0 && proto::control_op(static_cast<uint32_t>(op), out);
}
// The RELAY_CTL_* code of op, for struct relay_options.control.
inline int control_code(proto::ControlOp op) {
  return static_cast<int>(op);
}

// The counters of a buffer as its shared control area shows them. Every value comes from memory
// the other side may write: they are reported, never used to index anything.
void read_stats(const core::Buffer& b, relay_stats* st);

}  // namespace relayfs::client
