// Control connections: one per client process (a producer, an mmap reader, relayctl). A
// Connection owns its socket, its send lock and its queue of messages waiting for room, so a
// message to a client is sent, queued until the socket takes it, or, when the client does not
// read what it is sent, the connection is shut down with a reason on stderr. None is dropped,
// except progress reports offered as such (offer()).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "core/fd.h"
#include "fs/quota.h"
#include "fs/table.h"

namespace relayfs::fs {

class RelayBuffer;
struct ReaderBell;

// Who is on the other end, from the socket's SO_PEERCRED and SO_PEERGROUPS.
struct Peer {
  uid_t uid = 0;
  gid_t gid = 0;
  pid_t pid = 0;
  std::vector<gid_t> groups;
};

class Connection {
 public:
  // want_writable(id): the queue is no longer empty; the loop must wait for POLLOUT on fd()
  // and then call flush(). Called with the send lock held; it may only post to the loop.
  Connection(core::UniqueFd fd, const Peer& peer, std::function<void(uint64_t)> want_writable)
      : peer(peer), fd_(std::move(fd)), want_writable_(std::move(want_writable)) {}
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  uint64_t id = 0;  // set once by Connections::add
  const Peer peer;
  bool refused = false;  // another user, and the mount has no allow_other: every request fails
  Charge charge;         // its user's connection count (quota.h), given back when it closes
  // The buffer this connection's reader mapped (relay_reader_open), if any. Loop thread only.
  std::shared_ptr<RelayBuffer> mapped;
  // Its bell, if the daemon gave it one (also in mapped->bells). Loop thread only.
  std::shared_ptr<ReaderBell> bell;

  int fd() const { return fd_.get(); }  // loop thread: valid until close()

  // Sends msg with fds (descriptors to pass, duplicated if the message has to wait). Any thread.
  // In order: nothing overtakes what is queued. Returns 0 (sent or queued), or -errno when the
  // socket failed or was closed (the loop's poll sees it and closes the connection) or the
  // connection was shut down for not reading.
  int send(const std::vector<char>& msg, const int* fds = nullptr, size_t nfds = 0);
  // Sends msg (with fds) only if it can go at once; otherwise it is dropped and nothing is kept.
  // For progress reports, which the next one (and the end) supersedes, and for what others'
  // requests would have queued without bound (a reader's bell). Any thread.
  bool offer(const std::vector<char>& msg, const int* fds = nullptr, size_t nfds = 0);
  // The socket has room: sends what is queued. Returns true if some is still queued (wait for
  // room again). Loop thread.
  bool flush();
  // Closes the socket, once no other thread is sending on it. Loop thread.
  void close();

 private:
  struct Queued {
    std::vector<char> msg;
    std::vector<core::UniqueFd> fds;
  };
  int queue(const std::vector<char>& msg, const int* fds, size_t nfds);  // send_mu_ held
  void shut_down(const char* why);                                        // send_mu_ held

  std::mutex send_mu_;  // a leaf lock: nothing is taken while it is held
  core::UniqueFd fd_;   // guarded by send_mu_ for writes; reset by close() only
  std::function<void(uint64_t)> want_writable_;
  std::deque<Queued> outq_;  // guarded by send_mu_
  size_t out_bytes_ = 0;     // of outq_
  size_t out_fds_ = 0;       // descriptors held by outq_
  bool waiting_ = false;     // the loop waits for room on the socket for us
  bool shut_ = false;        // shut down for not reading: nothing more is sent
};

// Every open control connection, by id.
class Connections {
 public:
  // Gives c its id and keeps it.
  void add(const std::shared_ptr<Connection>& c) {
    c->id = table_.next_id();
    table_.add(c->id, c);
  }
  // The connection with this id, if it is still there. Any thread.
  std::shared_ptr<Connection> get(uint64_t id) { return table_.find(id); }
  // Takes it out of the table (it closes when the last reference goes).
  std::shared_ptr<Connection> take(uint64_t id) { return table_.take(id); }

 private:
  Table<uint64_t, Connection> table_;
};

}  // namespace relayfs::fs
