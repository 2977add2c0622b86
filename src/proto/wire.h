// Sending and receiving protocol messages, with file descriptors, over a Unix SOCK_SEQPACKET
// socket. A seqpacket socket keeps message boundaries, so one malformed message can be refused
// without losing the framing of the next.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "core/fd.h"
#include "proto/protocol.h"

namespace relayfs::proto {

// Sends one whole message with fds (may be empty). Returns 0 or -errno. Never raises SIGPIPE.
int send_message(int sock, const std::vector<char>& msg, const int* fds = nullptr, size_t nfds = 0);

struct Received {
  Header header{};
  std::vector<char> payload;
  std::vector<core::UniqueFd> fds;
};

// Receives one message. Returns 1 with *out filled, 0 at end of stream, -EAGAIN when a
// non-blocking socket has nothing, -EPROTO / -EPROTONOSUPPORT for a malformed message (header too
// short, bad magic or version, length that does not match what arrived, more descriptors than
// max_fds), -EMFILE when this process could not take the descriptors that came (its limit; the
// kernel closed them), or -errno. With max_fds == 0 any descriptors sent along are closed by the
// kernel.
int recv_message(int sock, Received* out, size_t max_fds = 0);

// What to report for a request on sock whose send failed with err (-errno). A daemon that
// refuses a connection (relayfs(8), "Limits") sends one kError message and hangs up, possibly
// before the request went out (then -EPIPE): that refusal is still waiting to be read and says
// why. Returns its status (-errno), or err.
int send_failure(int sock, int err);

// Connects to the control socket of the daemon of the mount that holds dir, named by the
// extended attribute user.relayfs.control every relayfs directory carries; replies are awaited
// at most timeout_s seconds. Returns 0 or -errno: -ENOENT, -ENOTSUP (not inside relayfs), or
// the socket or connect error.
int connect_control(const char* dir, int timeout_s, core::UniqueFd* out);

// The same, to the daemon whose control socket is name (the attribute's value, "@..."), as read
// already. Returns 0 or -errno (-ENOTSUP for a name that is not one).
int connect_named(const std::string& name, int timeout_s, core::UniqueFd* out);

}  // namespace relayfs::proto
