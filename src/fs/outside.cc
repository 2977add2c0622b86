// Outside control (relayctl flush/reset/close): a request names a channel by one of its files;
// the daemon checks who asks, hands the request to the producer that owns the channel, and
// passes the producer's answer back. The producer decides (relay_options.control): the daemon
// never touches a producer's buffers on anyone's behalf.
#include <cerrno>

#include "proto/protocol.h"
#include "fs/relayfs.h"

namespace relayfs::fs {

namespace {

// Requests one connection may have waiting for producers at once: bounds what a requester that
// never reads its replies can make the daemon keep.
constexpr size_t kMaxPendingPerRequester = 16;

void send_status(Connection& c, proto::Type t, int status, uint32_t seq) {
  std::lock_guard lk(c.send_mu);
  proto::send_message(c.fd.get(), proto::encode_status(t, {status}, seq));
}

}  // namespace

void RelayFs::handle_control(Connection& c, uint32_t seq, const char* payload, size_t len) {
  proto::ControlRequest req;
  int err = proto::decode(payload, len, &req);
  uint32_t channel_id = 0;
  uint64_t owner = 0;
  if (err == 0) {
    std::lock_guard lk(tree.mu);
    Node* n = tree.get(req.ino);
    const Source* s = n && n->parent ? n->source.get() : nullptr;
    auto it = s ? channels_.find(s->channel_id()) : channels_.end();
    if (it == channels_.end() || it->second->finalized)
      err = -ENOENT;  // not a relay file, or its producer is gone
    else if (!(it->second->flags & proto::kFlagControl))
      err = -EPERM;  // the producer does not take outside control
    else if (c.uid != 0 && c.uid != n->uid)
      err = -EPERM;  // only the channel's owner (its files' uid) and root
    else {
      channel_id = it->second->id;
      owner = it->second->owner;
    }
  }
  size_t mine = 0;
  for (auto& [k, p] : pending_controls_) mine += p.requester == c.id;
  if (err == 0 && mine >= kMaxPendingPerRequester) err = -EBUSY;
  std::shared_ptr<Connection> producer;
  if (err == 0 && !(producer = connection(owner))) err = -ENOENT;
  if (err == 0) {
    const uint32_t tag = next_control_seq_++;
    pending_controls_[tag] = {c.id, seq, owner};
    std::lock_guard lk(producer->send_mu);
    if (proto::send_message(producer->fd.get(), proto::encode(proto::ChannelControl{channel_id, req.op}, tag)) != 0) {
      pending_controls_.erase(tag);
      err = -EPIPE;
    }
  }
  if (err != 0) send_status(c, proto::Type::kControlReply, err, seq);
}

void RelayFs::handle_control_done(Connection& c, uint32_t seq, const char* payload, size_t len) {
  proto::Status st;
  auto it = pending_controls_.find(seq);
  // Only the producer that was asked may answer; anything else is ignored, as a stray reply.
  if (it == pending_controls_.end() || it->second.producer != c.id) return;
  const PendingControl p = it->second;
  pending_controls_.erase(it);
  int status = proto::decode(payload, len, &st) == 0 ? st.status : -EPROTO;
  if (status > 0 || status < -4095) status = -EPROTO;  // not an errno: a confused producer
  answer_control(p, status);
}

void RelayFs::answer_control(const PendingControl& p, int status) {
  std::shared_ptr<Connection> requester = connection(p.requester);
  if (!requester) return;
  send_status(*requester, proto::Type::kControlReply, status, p.seq);
}

// A connection went away: requests it made are forgotten, requests it was asked to serve fail.
void RelayFs::drop_controls(uint64_t conn_id) {
  for (auto it = pending_controls_.begin(); it != pending_controls_.end();) {
    if (it->second.requester == conn_id) {
      it = pending_controls_.erase(it);
    } else if (it->second.producer == conn_id) {
      const PendingControl p = it->second;
      it = pending_controls_.erase(it);
      answer_control(p, -ENOENT);
    } else {
      ++it;
    }
  }
}

}  // namespace relayfs::fs
