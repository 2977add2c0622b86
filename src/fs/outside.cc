// Outside control (relayctl flush/reset/close): a request names a channel by one of its files;
// the daemon checks who asks, hands the request to the producer that owns the channel, and
// passes the producer's answer back. The producer decides (relay_options.control): the daemon
// never touches a producer's buffers on anyone's behalf.
#include <cerrno>

#include "fs/channel.h"
#include "fs/control.h"

namespace relayfs::fs {

namespace {

// Requests one connection may have waiting for producers at once: bounds what a requester that
// never reads its replies can make the daemon keep.
constexpr size_t kMaxPendingPerRequester = 16;

}  // namespace

int ControlServer::do_control(Connection& c, const proto::Received& r) {
  proto::ControlRequest req;
  if (int rc = proto::decode(r.payload.data(), r.payload.size(), &req)) return rc;
  std::shared_ptr<Channel> ch;
  {
    std::lock_guard lk(tree_.mu);
    Node* n = tree_.get(req.ino);
    const Source* s = n && n->parent ? n->source.get() : nullptr;
    if (s) ch = registry_.find(s->channel_id());
    if (!ch || ch->finalized) return -ENOENT;  // not a relay file, or its producer is gone
    if (!(ch->flags & proto::kFlagControl)) return -EPERM;  // it takes no outside control
    if (c.peer.uid != 0 && c.peer.uid != n->uid)
      return -EPERM;  // only the channel's owner (its files' uid) and root
  }
  size_t mine = 0;
  for (auto& [k, p] : pending_controls_) mine += p.requester == c.id;
  if (mine >= kMaxPendingPerRequester) return -EBUSY;
  std::shared_ptr<Connection> producer = conns_.get(ch->owner);
  if (!producer) return -ENOENT;
  const uint32_t tag = next_control_seq_++;
  pending_controls_[tag] = {c.id, r.header.seq, ch->owner};
  if (producer->send(proto::encode(proto::ChannelControl{ch->id, req.op}, tag)) != 0) {
    pending_controls_.erase(tag);
    return -EPIPE;
  }
  return 0;
}

void ControlServer::do_control_done(Connection& c, const proto::Received& r) {
  auto it = pending_controls_.find(r.header.seq);
  // Only the producer that was asked may answer; anything else is ignored, as a stray reply.
  if (it == pending_controls_.end() || it->second.producer != c.id) return;
  const PendingControl p = it->second;
  pending_controls_.erase(it);
  proto::Status st;
  int status = proto::decode(r.payload.data(), r.payload.size(), &st) == 0 ? st.status : -EPROTO;
  if (status > 0 || status < -4095) status = -EPROTO;  // not an errno: a confused producer
  answer_control(p, status);
}

void ControlServer::answer_control(const PendingControl& p, int status) {
  if (std::shared_ptr<Connection> requester = conns_.get(p.requester))
    requester->send(proto::encode_status(proto::Type::kControlReply, {status}, p.seq));
}

// A connection went away: requests it made are forgotten, requests it was asked to serve fail.
void ControlServer::drop_controls(uint64_t conn_id) {
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
