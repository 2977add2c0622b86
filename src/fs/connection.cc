// Control connections (connection.h).
#include "fs/connection.h"

#include <fcntl.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "proto/wire.h"

namespace relayfs::fs {

namespace {

// What one connection may have waiting for room: a client that does not read its socket is cut
// off beyond this, rather than hold the daemon's memory (a reply is a few dozen bytes).
constexpr size_t kMaxQueuedBytes = 1 << 20;
// Descriptors those may hold (duplicates of a channel's, for a kOpenReply): they count against
// nobody's limits, so a client must not make the daemon keep many of them.
constexpr size_t kMaxQueuedFds = 64;

}  // namespace

int Connection::send(const std::vector<char>& msg, const int* fds, size_t nfds) {
  std::lock_guard lk(send_mu_);
  if (!fd_ || shut_) return -EPIPE;
  if (outq_.empty()) {
    const int rc = proto::send_message(fd_.get(), msg, fds, nfds);
    if (rc != -EAGAIN) return rc;  // sent, or the socket failed (its close comes next)
  }
  return queue(msg, fds, nfds);
}

bool Connection::offer(const std::vector<char>& msg, const int* fds, size_t nfds) {
  std::lock_guard lk(send_mu_);
  if (!fd_ || shut_ || !outq_.empty()) return false;
  return proto::send_message(fd_.get(), msg, fds, nfds) == 0;
}

int Connection::queue(const std::vector<char>& msg, const int* fds, size_t nfds) {
  if (out_bytes_ + msg.size() > kMaxQueuedBytes) {
    shut_down("it does not read its replies");
    return -EPIPE;
  }
  if (out_fds_ + nfds > kMaxQueuedFds) {
    shut_down("it does not read the replies that carry descriptors");
    return -EPIPE;
  }
  Queued q{msg, {}};
  for (size_t i = 0; i < nfds; ++i) {
    q.fds.emplace_back(::fcntl(fds[i], F_DUPFD_CLOEXEC, 0));
    if (!q.fds.back()) {
      shut_down("no descriptor left to keep a reply's descriptors in");
      return -EPIPE;
    }
  }
  out_bytes_ += msg.size();
  out_fds_ += nfds;
  outq_.push_back(std::move(q));
  if (!waiting_) {
    waiting_ = true;
    want_writable_(id);
  }
  return 0;
}

bool Connection::flush() {
  std::lock_guard lk(send_mu_);
  while (!outq_.empty() && fd_ && !shut_) {
    Queued& q = outq_.front();
    std::vector<int> raw;
    for (auto& f : q.fds) raw.push_back(f.get());
    const int rc = proto::send_message(fd_.get(), q.msg, raw.data(), raw.size());
    if (rc == -EAGAIN) return true;  // still waiting_
    if (rc != 0) break;              // the socket failed: none of them can go; it closes next
    out_bytes_ -= q.msg.size();
    out_fds_ -= q.fds.size();
    outq_.pop_front();
  }
  outq_.clear();
  out_bytes_ = 0;
  out_fds_ = 0;
  waiting_ = false;
  return false;
}

void Connection::shut_down(const char* why) {
  std::fprintf(stderr, "relayfs: connection %llu (pid %d, uid %u) closed: %s\n",
               static_cast<unsigned long long>(id), static_cast<int>(peer.pid), peer.uid, why);
  shut_ = true;
  outq_.clear();
  out_bytes_ = 0;
  out_fds_ = 0;
  // The loop's poll sees the hang-up and closes the connection as any other that ends.
  ::shutdown(fd_.get(), SHUT_RDWR);
}

void Connection::close() {
  std::lock_guard lk(send_mu_);  // a FUSE worker may be sending a buf_mapped event
  fd_.reset();
  outq_.clear();
  out_bytes_ = 0;
  out_fds_ = 0;
}

}  // namespace relayfs::fs
