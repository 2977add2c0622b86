// Pieces the producer side (relay.cc) and the reader side (reader.cc) of librelayfs share.
//
// The errno rule of src/client (and of src/proto and src/core beneath it): every internal
// function returns 0 (or a count) on success and -errno on failure, and passes such a value on
// as it is. The sign flips once, at the C boundary: an exported RELAY_API function sets
// errno = -rc (through its file's fail()) and returns what its man page says (-1, NULL).
#pragma once

#include <relayfs/relay.h>

#include <chrono>

#include "core/buffer.h"
#include "core/fd.h"
#include "proto/wire.h"

namespace relayfs::client {

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

// The counters of a buffer as its shared control area shows them. Every value comes from memory
// the other side may write: they are reported, never used to index anything.
void read_stats(const core::Buffer& b, relay_stats* st);

}  // namespace relayfs::client
