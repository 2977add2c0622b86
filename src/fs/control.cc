// Control connections: producers open and close channels here. Everything a producer sends is
// checked; a malformed message gets an error reply and the daemon carries on.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <utility>

#include "core/geometry.h"
#include "core/layout.h"
#include "proto/protocol.h"
#include "fs/fault.h"
#include "fs/relayfs.h"
#include "fs/ring_tag.h"

namespace relayfs::fs {

namespace {

// May the peer have `want` access (rwx bits, as for "other") to node n, and search every
// directory above it, as path resolution and open(2) would require?
bool may_access(Tree& t, Node* node, mode_t want, const Connection& c) {
  if (c.uid == 0) return true;
  auto allowed = [&](const Node* n, mode_t want) {  // want: bits for "other"
    if (n->uid == c.uid) return (n->mode & (want << 6)) == (want << 6);
    bool member = n->gid == c.gid;
    for (gid_t g : c.groups) member = member || g == n->gid;
    if (member) return (n->mode & (want << 3)) == (want << 3);
    return (n->mode & want) == want;
  };
  if (!allowed(node, want)) return false;
  for (Node* n = t.get(node->parent); n; n = n->ino == FUSE_ROOT_ID ? nullptr : t.get(n->parent))
    if (!allowed(n, S_IXOTH)) return false;
  return true;
}

// Creating entries in dir needs write and search permission on it, as creating a file would.
bool may_create(Tree& t, Node* dir, const Connection& c) {
  return may_access(t, dir, S_IWOTH | S_IXOTH, c);
}

// Refuses a new connection with one unsolicited kError message (seq 0) carrying -err, and hangs
// up: a client's first request, sent or about to be, then reads that refusal instead of a
// broken connection (proto::send_failure). The socket stops taking messages first (SHUT_RD:
// the peer's sends fail with EPIPE from then on) and what came before is read away: closing a
// socket with unread messages would make the peer's next receive fail with ECONNRESET before it
// sees the refusal. Bounded: a peer that filled its socket before that loses the refusal.
void refuse_connection(core::UniqueFd fd, int err) {
  proto::send_message(fd.get(), proto::encode_status(proto::Type::kError, {-err}, 0));
  ::shutdown(fd.get(), SHUT_RD);
  char byte;
  for (int i = 0; i < 256; ++i)  // MSG_TRUNC: a whole message each; descriptors in it are closed
    if (::recv(fd.get(), &byte, sizeof byte, MSG_DONTWAIT | MSG_TRUNC) <= 0) break;
}

}  // namespace

void RelayFs::on_accept() {
  for (;;) {
    core::UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) return;  // EAGAIN, or a connection that vanished
    auto c = std::make_shared<Connection>();
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) continue;
    // Without allow_other only the mounter (and root) may use the mount, through the kernel
    // and through this socket alike: the socket's name is visible in /proc/net/unix.
    c->refused = !opts_.allow_other && cred.uid != 0 && cred.uid != ::getuid();
    c->uid = cred.uid;
    c->gid = cred.gid;
    c->pid = cred.pid;
    gid_t groups[256];
    len = sizeof groups;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
      c->groups.assign(groups, groups + len / sizeof(gid_t));
    fds_.made(1);
    // A user other than root and the mounter stays within its connections and out of the
    // descriptors kept for those two (quota.h).
    int err = quota_.exempt(cred.uid) ? 0 : fds_.admit(0);
    const char* why = err ? "descriptors" : "user_connections";
    if (!err) err = quota_.charge_connection(cred.uid, &c->charge);
    if (err) {
      note_refusal(cred.uid, "a connection", why);
      refuse_connection(std::move(fd), -err);
      continue;
    }
    c->fd = std::move(fd);
    {
      std::lock_guard lk(conns_mu_);
      c->id = next_conn_id_++;
      conns_.emplace(c->id, c);
    }
    watch(c->fd.get(), tag(kConn, c->id));
  }
}

void RelayFs::on_connection(const std::shared_ptr<Connection>& c) {
  // Bounded per wake-up, so one chatty producer cannot starve the others.
  for (int i = 0; i < 64; ++i) {
    proto::Received r;
    const int rc = proto::recv_message(c->fd.get(), &r, 3);  // a kRecord carries up to 3
    fds_.made(r.fds.size());
    if (rc == -EAGAIN) return;
    if (rc == 1) {
      on_message(*c, r);
      // Descriptors nobody took (any message may carry some): closed through the ring, since
      // closing one from a stalled filesystem could block.
      for (auto& fd : r.fds) close_later(std::move(fd));
      continue;
    }
    // A malformed message, or descriptors this daemon had no room for: refused, and the
    // connection goes on.
    if (rc == -EPROTO || rc == -EPROTONOSUPPORT || rc == -EMFILE) {
      std::lock_guard lk(c->send_mu);
      proto::send_message(c->fd.get(),
                          proto::encode_status(proto::Type::kError, {rc}, r.header.seq));
      continue;
    }
    close_connection(c->id);  // end of stream, or the socket failed
    return;
  }
  // More may be waiting, and the multishot poll reports only new arrivals: a sender blocked on
  // a full socket would wait for us forever. Come back for the rest after the others' turn.
  if (io_uring_sqe* e = sqe()) {
    io_uring_prep_nop(e);
    io_uring_sqe_set_data64(e, tag(kConnMore, c->id));
  }
}

void RelayFs::on_message(Connection& c, proto::Received& r) {
  const auto type = static_cast<proto::Type>(r.header.type);
  if (c.refused) {
    // Every request gets its own reply type, so a client reports EACCES, not a protocol error.
    std::vector<char> msg;
    if (type == proto::Type::kOpen)
      msg = proto::encode(proto::OpenReply{-EACCES, 0, 0, 0, 0}, r.header.seq);
    else if (type == proto::Type::kReaderOpen)
      msg = proto::encode(proto::ReaderOpenReply{-EACCES, 0, 0, 0}, r.header.seq);
    else if (type == proto::Type::kControl)
      msg = proto::encode_status(proto::Type::kControlReply, {-EACCES}, r.header.seq);
    else if (type == proto::Type::kRecord)
      msg = proto::encode(proto::RecordReply{-EACCES, 0, 0}, r.header.seq);
    else
      msg = proto::encode_status(proto::Type::kError, {-EACCES}, r.header.seq);
    std::lock_guard lk(c.send_mu);
    proto::send_message(c.fd.get(), msg);
    return;
  }
  switch (type) {
    case proto::Type::kOpen:
      handle_open(c, r.header.seq, r.payload.data(), r.payload.size());
      return;
    case proto::Type::kClose:
      handle_close(c, r.header.seq, r.payload.data(), r.payload.size());
      return;
    case proto::Type::kConsumed:
      handle_consumed(c, r.payload.data(), r.payload.size());
      return;
    case proto::Type::kReaderOpen:
      handle_reader_open(c, r.header.seq, r.payload.data(), r.payload.size());
      return;
    case proto::Type::kReaderConsumed:
      handle_reader_consumed(c, r.header.seq, r.payload.data(), r.payload.size());
      return;
    case proto::Type::kControl:
      handle_control(c, r.header.seq, r.payload.data(), r.payload.size());
      return;
    case proto::Type::kControlDone:
      handle_control_done(c, r.header.seq, r.payload.data(), r.payload.size());
      return;
    case proto::Type::kRecord:
      handle_record(c, r);
      return;
    case proto::Type::kRecordStop:
      handle_record_stop(c);
      return;
    default: {  // a reply or event type: producers do not send those
      std::lock_guard lk(c.send_mu);
      proto::send_message(c.fd.get(),
                          proto::encode_status(proto::Type::kError, {-EPROTO}, r.header.seq));
    }
  }
}

void RelayFs::handle_open(Connection& c, uint32_t seq, const char* payload, size_t len) {
  proto::OpenRequest req;
  proto::OpenReply reply;
  std::shared_ptr<Channel> ch;
  auto fail = [&](int err) {
    reply = {};
    reply.status = -err;
    std::lock_guard lk(c.send_mu);
    proto::send_message(c.fd.get(), proto::encode(reply, seq));
  };
  if (int rc = proto::decode(payload, len, &req); rc) return fail(-rc);
  core::Geometry g;
  if (int rc = core::make_geometry(req.subbuf_size, req.n_subbufs, &g); rc) return fail(-rc);
  if (opts_.read_only) return fail(EROFS);  // as creating a file would be
  const bool global = req.flags & proto::kFlagGlobal;
  const unsigned n = global ? 1 : static_cast<unsigned>(std::max(1, get_nprocs_conf()));
  {
    std::lock_guard lk(tree.mu);
    Node* dir = tree.get(req.parent_ino);
    if (!dir || (!dir->parent && dir->ino != FUSE_ROOT_ID)) return fail(ENOENT);
    if (!dir->is_dir()) return fail(ENOTDIR);
    if (!may_create(tree, dir, c)) return fail(EACCES);
    std::vector<std::string> names;
    for (unsigned i = 0; i < n; ++i) names.push_back(req.base_filename + std::to_string(i));
    names.push_back(req.base_filename);  // the merged view
    for (auto& name : names) {
      if (name.size() > proto::kMaxName) return fail(ENAMETOOLONG);
      if (tree.child(dir, name)) return fail(EEXIST);
    }
    // Within its owner's limits, checked before anything is made (quota.h): every buffer's
    // whole memfd counts, since registering it with the ring pins all of it; a buffer each and
    // the doorbell are the descriptors it takes.
    Charge charge;
    const char* why = "descriptors";
    int err = quota_.exempt(c.uid) ? 0 : fds_.admit(n + 1);
    if (!err) err = quota_.charge_channel(c.uid, n * core::Layout::of(g).total_size, &charge, &why);
    if (err) {
      note_refusal(c.uid, "a channel", why);
      return fail(-err);
    }
    fds_.made(n + 1);
    ch = std::make_shared<Channel>();
    ch->charge = std::move(charge);
    ch->id = next_channel_id_++;
    ch->owner = c.id;
    ch->flags = req.flags;
    ch->base = req.base_filename;
    ch->doorbell.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!ch->doorbell) return fail(errno);
    for (unsigned i = 0; i < n; ++i) {
      core::Buffer buf;
      if (int rc = core::Buffer::create(g, names[i].c_str(), &buf); rc) return fail(-rc);
      ch->buffers.push_back(std::make_shared<RelayBuffer>(std::move(buf), ch->id, c.id, i));
    }
    ch->merged = std::make_shared<MergedView>(ch->id, c.id, ch->buffers);
    const mode_t mode = S_IFREG | (req.mode ? (req.mode & 07777) : 0400);
    const auto sources = ch->sources();
    for (size_t i = 0; i < sources.size(); ++i) {
      Node* node = tree.add(dir, names[i], mode, c.uid, c.gid);
      node->source = sources[i];
      sources[i]->ino = node->ino;
    }
    int reg_err = 0;
    for (auto& b : ch->buffers) {
      b->zero_copy = !(req.flags & (proto::kFlagOverwrite | proto::kFlagHookMode));
      // Unregistered buffers still work (reads copy from the mapping); say why once per
      // channel so a missing registration is never silent.
      if (int rc = register_buffer(*b); rc < 0) reg_err = rc;
    }
    if (reg_err < 0)
      std::fprintf(stderr, "relayfs: channel %s: io_uring buffer registration failed: %s\n",
                   req.base_filename.c_str(), std::strerror(-reg_err));
    channels_.emplace(ch->id, ch);
  }
  watch(ch->doorbell.get(), tag(kDoorbell, ch->id));

  reply = {0, ch->id, n, g.subbuf_size, g.n_subbufs};
  std::vector<int> fds;
  for (auto& b : ch->buffers) fds.push_back(b->buf.fd());
  fds.push_back(ch->doorbell.get());
  std::lock_guard lk(c.send_mu);
  if (proto::send_message(c.fd.get(), proto::encode(reply, seq), fds.data(), fds.size()) != 0)
    finalize_channel(ch);  // the producer is gone already
}

void RelayFs::handle_close(Connection& c, uint32_t seq, const char* payload, size_t len) {
  proto::CloseRequest req;
  int status = proto::decode(payload, len, &req);
  std::shared_ptr<Channel> ch;
  if (status == 0) {
    std::lock_guard lk(tree.mu);
    auto it = channels_.find(req.channel_id);
    // A producer may close only its own channels.
    if (it == channels_.end() || it->second->owner != c.id)
      status = -ENOENT;
    else
      ch = it->second;
  }
  if (ch) finalize_channel(ch);
  std::lock_guard lk(c.send_mu);
  proto::send_message(c.fd.get(), proto::encode_status(proto::Type::kCloseReply, {status}, seq));
}

void RelayFs::handle_consumed(Connection& c, const char* payload, size_t len) {
  proto::ConsumedRequest req;
  if (proto::decode(payload, len, &req) != 0) return;
  std::shared_ptr<RelayBuffer> b;
  {
    std::lock_guard lk(tree.mu);
    auto it = channels_.find(req.channel_id);
    if (it == channels_.end() || it->second->owner != c.id) return;
    if (req.buffer >= it->second->buffers.size()) return;
    b = it->second->buffers[req.buffer];
  }
  {
    std::lock_guard lk(b->mu);
    if (req.count) b->cons.subbufs_consumed(req.count);
  }
  service(b);
  std::shared_ptr<Source> merged;
  {
    std::lock_guard lk(tree.mu);
    auto it = channels_.find(req.channel_id);
    if (it != channels_.end()) merged = it->second->merged;
  }
  if (merged) service(merged);
}

// relay_reader_open: hands a read-only descriptor of a relay file's buffer to a reader that may
// read the file. The reader keeps the file open meanwhile (it polls it), so buf_mapped and
// buf_unmapped follow its life through open and release.
void RelayFs::handle_reader_open(Connection& c, uint32_t seq, const char* payload, size_t len) {
  proto::ReaderOpenRequest req;
  proto::ReaderOpenReply reply;
  core::UniqueFd ro;
  int err = -proto::decode(payload, len, &req);
  if (!err && c.mapped) err = EBUSY;  // one reader per connection
  std::shared_ptr<RelayBuffer> b;
  if (!err) err = readable_buffer(c, req.ino, &b);
  // The descriptor below is the daemon's until sent: not from the reserve (quota.h).
  if (!err && !quota_.exempt(c.uid)) err = -fds_.admit(1);
  if (!err) {
    // A descriptor of its own, opened read-only, so the reader cannot map the buffer writable.
    const std::string self = "/proc/self/fd/" + std::to_string(b->buf.fd());
    fds_.made(1);
    ro.reset(::open(self.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ro) {
      err = errno;
    } else {
      const auto& g = b->buf.geometry();
      reply = {0, g.subbuf_size, g.n_subbufs, b->index()};
      c.mapped = std::move(b);
    }
  }
  if (err) reply = {-err, 0, 0, 0};
  const int fd = ro.get();
  std::lock_guard lk(c.send_mu);
  proto::send_message(c.fd.get(), proto::encode(reply, seq), err ? nullptr : &fd, err ? 0 : 1);
}

int RelayFs::readable_buffer(const Connection& c, uint64_t ino, std::shared_ptr<RelayBuffer>* out) {
  std::lock_guard lk(tree.mu);
  Node* n = tree.get(ino);
  auto* b = n && n->parent ? dynamic_cast<RelayBuffer*>(n->source.get()) : nullptr;
  if (!b) return n && n->parent && !n->is_dir() ? EINVAL : ENOENT;  // the merged view: no buffer
  if (!may_access(tree, n, S_IROTH, c)) return EACCES;
  *out = std::static_pointer_cast<RelayBuffer>(n->source);
  return 0;
}

// The reply comes once the sub-buffers are released, so a reader's relay_reader_consumed has
// taken effect when it returns, as the kernel's relay_subbufs_consumed has.
void RelayFs::handle_reader_consumed(Connection& c, uint32_t seq, const char* payload, size_t len) {
  proto::ReaderConsumed req;
  int status = proto::decode(payload, len, &req);
  if (status == 0 && !c.mapped) status = -EBADF;  // no relay_reader_open on this connection
  if (status == 0) {
    std::shared_ptr<RelayBuffer> b = c.mapped;
    {
      std::lock_guard lk(b->mu);
      status = b->cons.consume_upto(req.gen, req.upto);
    }
    service(b);
  }
  std::lock_guard lk(c.send_mu);
  proto::send_message(c.fd.get(),
                      proto::encode_status(proto::Type::kReaderConsumedReply, {status}, seq));
}

void RelayFs::close_connection(uint64_t id) {
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lk(conns_mu_);
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    c = it->second;
    conns_.erase(it);
  }
  // The producer exited, was killed, or hung up: its channels are finalized. What it committed
  // stays readable until drained; then the files go.
  std::vector<std::shared_ptr<Channel>> owned;
  {
    std::lock_guard lk(tree.mu);
    for (auto& [cid, ch] : channels_)
      if (ch->owner == id) owned.push_back(ch);
  }
  for (auto& ch : owned) finalize_channel(ch);
  drop_controls(id);
  drop_recordings(id);
  c->mapped.reset();
  c->charge.reset();
  retire(tag(kConn, id));
  std::lock_guard lk(c->send_mu);  // a FUSE worker may be sending a buf_mapped event
  c->fd.reset();
}

void RelayFs::finalize_channel(const std::shared_ptr<Channel>& ch) {
  {
    std::lock_guard lk(tree.mu);
    if (ch->finalized) return;
    ch->finalized = true;
    ch->idle_since = std::chrono::steady_clock::now();
    for (auto& b : ch->buffers) {
      std::lock_guard blk(b->mu);
      b->cons.finalize();
    }
  }
  for (auto& s : ch->sources()) service(s);  // parked readers get data or EOF, pollers POLLERR
  maybe_remove(ch->id);
}

// Removes the files of a finalized channel that are drained, and frees the channel once all its
// files are gone and closed. Any thread; noexcept, because FUSE handlers call it after replying.
void RelayFs::maybe_remove(uint32_t channel_id) noexcept {
  try {
    remove_drained(channel_id);
  } catch (...) {
    // Out of memory: the files stay until the next reader or close looks again.
  }
}

void RelayFs::remove_drained(uint32_t channel_id) {
  bool free_it = true;
  {
    std::lock_guard lk(tree.mu);
    auto it = channels_.find(channel_id);
    if (it == channels_.end() || !it->second->finalized) return;
    for (auto& s : it->second->sources()) {
      std::lock_guard slk(s->mu);
      if (!s->unlinked && s->drained()) {
        s->unlinked = true;
        if (Node* n = tree.get(s->ino)) {
          // Until the kernel forgets the node, the node keeps the buffer alive.
          forgetter_.gone(n->parent, n->name);
          tree.unlink(n);
        }
      }
      if (!s->unlinked || s->opens) free_it = false;
    }
  }
  if (free_it) post({LoopEvent::kFree, channel_id, nullptr});
}

void RelayFs::free_channel(uint32_t id) {
  std::shared_ptr<Channel> ch;
  {
    std::lock_guard lk(tree.mu);
    auto it = channels_.find(id);
    if (it == channels_.end()) return;
    for (auto& s : it->second->sources()) {
      std::lock_guard slk(s->mu);
      if (!s->unlinked || s->opens) return;  // reopened meanwhile? not possible once unlinked
    }
    ch = it->second;
    channels_.erase(it);
  }
  for (auto& b : ch->buffers) unregister_buffer(*b);
  retire(tag(kDoorbell, id));
  ch->doorbell.reset();
  // Its files are gone and closed, its buffers no longer pinned: they count against their
  // owner no more. (The memfds themselves go with the last reference to their buffers.)
  ch->charge.reset();
}

void RelayFs::note_refusal(uid_t uid, const char* what, const char* why) {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_refusal_note_) {
    ++refusals_unsaid_;  // a user at a limit may ask again and again: not a line each time
    return;
  }
  next_refusal_note_ = now + std::chrono::seconds(10);
  const unsigned long long before = std::exchange(refusals_unsaid_, 0);
  std::fprintf(stderr, "relayfs: refused user %u %s: no room within %s (usage: %s)", uid, what, why,
               kUsersXattr);
  if (before) std::fprintf(stderr, "; %llu refusals before it went unsaid", before);
  std::fputc('\n', stderr);
}

std::string RelayFs::usage_report() const {
  return quota_.report(FdBudget::count_open(), fds_.limit(), fds_.reserve());
}

// noexcept: FUSE handlers call it after they replied (open), when a throw would reach the guard
// in main.cc and make it reply a second time to a request libfuse has already freed.
void RelayFs::notify_owner(const Source& s, bool mapped) noexcept {
  // buf_mapped and buf_unmapped concern one buffer's file, not the merged view.
  const auto* b = dynamic_cast<const RelayBuffer*>(&s);
  if (!b) return;
  try {
    if (fault(Fault::kNotifyAlloc)) throw std::bad_alloc();
    std::shared_ptr<Connection> c = connection(b->owner());
    if (!c) return;
    const auto msg = proto::encode_event(mapped ? proto::Type::kMapped : proto::Type::kUnmapped,
                                         {b->channel_id(), b->index()});
    std::lock_guard lk(c->send_mu);
    if (c->fd) proto::send_message(c->fd.get(), msg);
  } catch (const std::exception& e) {
    // Out of memory: the producer misses this one callback; the file itself works on.
    std::fprintf(stderr, "relayfs: %s event of channel %u buffer %u lost: %s\n",
                 mapped ? "buf_mapped" : "buf_unmapped", b->channel_id(), b->index(), e.what());
  }
}

}  // namespace relayfs::fs
