// The control server: the daemon's side of the control socket. Clients (producers through
// librelayfs, mmap readers, relayctl) connect here to open and close channels, map buffers,
// report what they consumed, record to disk and pass outside control to a producer. Everything
// a client sends is checked; a malformed message gets an error reply and the daemon carries on.
//
// Loop thread only, except that a Connection may be sent on from any thread (connection.h).
// Each request handler, do_<request>, returns 0 or -errno; on_message sends the reply.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "core/fd.h"
#include "fs/access.h"
#include "fs/connection.h"
#include "fs/hooks.h"
#include "fs/loop.h"
#include "fs/options.h"
#include "fs/record.h"
#include "fs/registry.h"
#include "fs/tree.h"
#include "proto/protocol.h"
#include "proto/wire.h"

namespace relayfs::fs {

class ControlServer {
 public:
  ControlServer(const Options& opts, Tree& tree, Registry& registry, Connections& conns,
                Loop& loop, Access& access, Recorder& recorder, Hooks& hooks)
      : opts_(opts), tree_(tree), registry_(registry), conns_(conns), loop_(loop),
        access_(access), recorder_(recorder), hooks_(hooks) {}

  // Creates the listening socket: abstract, named after this daemon and a random nonce, so no
  // file is left behind and no other process can guess it before we bind. Returns 0 or -errno.
  int listen();
  // Its name, "@relayfs-PID-NONCE": the value of the control attribute.
  const std::string& name() const { return name_; }
  int listen_fd() const { return listen_fd_.get(); }

  // ---- Loop thread.
  void on_accept();
  // Messages arrived on connection conn_id (or more were left from the last pass).
  void on_readable(uint64_t conn_id);
  // Connection conn_id queued a message: wait for room on its socket.
  void on_want_writable(uint64_t conn_id);
  // Its socket has room.
  void on_writable(uint64_t conn_id);
  // The descriptor a re-armed watch of connection conn_id needs, or -1 if it is gone.
  int fd_of(uint64_t conn_id);

 private:
  struct PendingControl {
    uint64_t requester = 0;  // connection that asked
    uint32_t seq = 0;        // its request's seq, echoed in the reply
    uint64_t producer = 0;   // connection that was asked
  };

  void on_message(Connection& c, proto::Received& r);
  void refuse_request(Connection& c, const proto::Received& r);
  int do_open(Connection& c, proto::Received& r, proto::OpenReply* reply,
              std::shared_ptr<Channel>* made);
  int do_close(Connection& c, const proto::Received& r);
  // The channel channel_id if c's producer owns it and it has buffer `buffer`; null otherwise.
  std::shared_ptr<Channel> owned(const Connection& c, uint32_t channel_id, uint32_t buffer);
  void do_consumed(Connection& c, const proto::Received& r);
  // *wants_bell: the request asked for a bell (kReaderBell).
  int do_reader_open(Connection& c, const proto::Received& r, proto::ReaderOpenReply* reply,
                     core::UniqueFd* ro, bool* wants_bell);
  int do_reader_consumed(Connection& c, const proto::Received& r);
  void give_bell(Connection& c, core::UniqueFd* page, core::UniqueFd* reader_end);
  void drop_bell(Connection& c);
  void do_bell_refused(Connection& c, const proto::Received& r);
  // Outside control (outside.cc): 0 once passed to the producer, whose answer comes later.
  int do_control(Connection& c, const proto::Received& r);
  void do_control_done(Connection& c, const proto::Received& r);
  void answer_control(const PendingControl& p, int status);
  void drop_controls(uint64_t conn_id);
  void close_connection(uint64_t id);

  const Options& opts_;
  Tree& tree_;
  Registry& registry_;
  Connections& conns_;
  Loop& loop_;
  Access& access_;
  Recorder& recorder_;
  Hooks& hooks_;
  std::string name_;
  core::UniqueFd listen_fd_;
  std::unordered_map<uint32_t, PendingControl> pending_controls_;  // by the seq sent to the producer
  uint32_t next_bell_ = 0;  // the last bell number given (give_bell); loop thread
  uint32_t next_control_seq_ = 1;
};

}  // namespace relayfs::fs
