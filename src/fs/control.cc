// The control server (control.h): connections, and the requests that make and use channels.
#include "fs/control.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/bell.h"
#include "core/geometry.h"
#include "core/layout.h"
#include "fs/channel.h"
#include "fs/fault.h"
#include "fs/ring_tag.h"

namespace relayfs::fs {

namespace {

// Refuses a new connection with one unsolicited kError message (seq 0) carrying err (-errno),
// and hangs up: a client's first request, sent or about to be, then reads that refusal instead
// of a broken connection (proto::send_failure). The socket stops taking messages first (SHUT_RD:
// the peer's sends fail with EPIPE from then on) and what came before is read away: closing a
// socket with unread messages would make the peer's next receive fail with ECONNRESET before it
// sees the refusal. Bounded: a peer that filled its socket before that loses the refusal.
void refuse_connection(core::UniqueFd fd, int err) {
  proto::send_message(fd.get(), proto::encode_status(proto::Type::kError, {err}, 0));
  ::shutdown(fd.get(), SHUT_RD);
  char byte;
  for (int i = 0; i < 256; ++i)  // MSG_TRUNC: a whole message each; descriptors in it are closed
    if (::recv(fd.get(), &byte, sizeof byte, MSG_DONTWAIT | MSG_TRUNC) <= 0) break;
}

// How many descriptors the next message on fd may bring, by its type: a kAdopt one per buffer
// and the doorbell, others up to 4 (a kRecord with its O_DIRECT descriptor; the control buffer
// for 3 had room for a fourth only by the alignment CMSG_SPACE rounds to). Peeked, so that no
// client can make this daemon take hundreds with any message; what comes beyond is closed by
// the kernel (-EPROTO).
size_t fds_allowed(int fd) {
  proto::Header h{};
  const ssize_t n = ::recv(fd, &h, sizeof h, MSG_PEEK | MSG_DONTWAIT);
  return n == sizeof h && h.type == static_cast<uint16_t>(proto::Type::kAdopt) ? proto::kMaxFds : 4;
}


// Who is on the other end of fd. Returns 0 or -errno.
int peer_of(int fd, Peer* p) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -errno;
  p->uid = cred.uid;
  p->gid = cred.gid;
  p->pid = cred.pid;
  gid_t groups[256];
  len = sizeof groups;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
    p->groups.assign(groups, groups + len / sizeof(gid_t));
  return 0;
}

}  // namespace

int ControlServer::listen() {
  std::random_device rd;
  char name[64];
  std::snprintf(name, sizeof name, "relayfs-%d-%08x%08x", static_cast<int>(::getpid()), rd(), rd());
  name_ = std::string("@") + name;
  listen_fd_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_fd_) return -errno;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, name, std::strlen(name));
  const socklen_t alen =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + std::strlen(name));
  if (::bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), alen) != 0) return -errno;
  if (::listen(listen_fd_.get(), 128) != 0) return -errno;
  return 0;
}

void ControlServer::on_accept() {
  for (;;) {
    core::UniqueFd fd(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd) return;  // EAGAIN, or a connection that vanished
    Peer peer;
    if (peer_of(fd.get(), &peer) != 0) continue;
    access_.fds().made(1);
    // A user other than root and the mounter stays within its connections and out of the
    // descriptors kept for those two (quota.h).
    Charge charge;
    int err = access_.admit_fds(peer.uid, 0);
    const char* why = err ? "descriptors" : "user_connections";
    if (!err) err = access_.quota().charge_connection(peer.uid, &charge);
    if (err) {
      access_.note_refusal(peer.uid, "a connection", why);
      refuse_connection(std::move(fd), err);
      continue;
    }
    auto c = std::make_shared<Connection>(std::move(fd), peer, [this](uint64_t id) {
      loop_.post({LoopEvent::kWritable, id, nullptr});
    });
    // Without allow_other only the mounter (and root) may use the mount, through the kernel
    // and through this socket alike: the socket's name is visible in /proc/net/unix.
    c->refused = !opts_.allow_other && peer.uid != 0 && peer.uid != ::getuid();
    c->charge = std::move(charge);
    conns_.add(c);
    if (int rc = loop_.watch(c->fd(), tag(kConn, c->id)); rc != 0) {
      std::fprintf(stderr, "relayfs: cannot watch a new connection: %s\n", std::strerror(-rc));
      close_connection(c->id);
    }
  }
}

int ControlServer::fd_of(uint64_t conn_id) {
  std::shared_ptr<Connection> c = conns_.get(conn_id);
  return c ? c->fd() : -1;
}

void ControlServer::on_readable(uint64_t conn_id) {
  std::shared_ptr<Connection> c = conns_.get(conn_id);
  if (!c) return;
  // Bounded per wake-up, so one chatty client cannot starve the others.
  for (int i = 0; i < 64; ++i) {
    proto::Received r;
    const int rc = proto::recv_message(c->fd(), &r, fds_allowed(c->fd()));
    access_.fds().made(r.fds.size());
    if (rc == -EAGAIN) return;
    if (rc == 1) {
      on_message(*c, r);
      // Descriptors nobody took (any message may carry some): closed through the ring, since
      // closing one from a stalled filesystem could block.
      for (auto& fd : r.fds) loop_.close_later(std::move(fd));
      continue;
    }
    // A malformed message, or descriptors this daemon had no room for: refused, and the
    // connection goes on.
    if (rc == -EPROTO || rc == -EPROTONOSUPPORT || rc == -EMFILE) {
      c->send(proto::encode_status(proto::Type::kError, {rc}, r.header.seq));
      continue;
    }
    close_connection(c->id);  // end of stream, or the socket failed
    return;
  }
  // More may be waiting, and the multishot poll reports only new arrivals: a sender blocked on
  // a full socket would wait for us forever. Come back for the rest after the others' turn.
  if (io_uring_sqe* e = loop_.sqe()) {
    io_uring_prep_nop(e);
    io_uring_sqe_set_data64(e, tag(kConnMore, c->id));
  } else {
    close_connection(c->id);  // it would never be read again
    std::fprintf(stderr, "relayfs: connection %llu closed: no room in the ring to come back\n",
                 static_cast<unsigned long long>(conn_id));
  }
}

void ControlServer::on_want_writable(uint64_t conn_id) {
  std::shared_ptr<Connection> c = conns_.get(conn_id);
  if (!c) return;
  if (int rc = loop_.watch_out(c->fd(), tag(kConnOut, conn_id)); rc != 0) {
    std::fprintf(stderr, "relayfs: connection %llu closed: cannot wait for room: %s\n",
                 static_cast<unsigned long long>(conn_id), std::strerror(-rc));
    close_connection(conn_id);
  }
}

void ControlServer::on_writable(uint64_t conn_id) {
  std::shared_ptr<Connection> c = conns_.get(conn_id);
  if (c && c->flush()) on_want_writable(conn_id);
}

// Every request gets its own reply type, so a client reports EACCES, not a protocol error.
void ControlServer::refuse_request(Connection& c, const proto::Received& r) {
  const auto type = static_cast<proto::Type>(r.header.type);
  const uint32_t seq = r.header.seq;
  if (type == proto::Type::kOpen || type == proto::Type::kAdopt)
    c.send(proto::encode(proto::OpenReply{-EACCES, 0, 0, 0, 0}, seq));
  else if (type == proto::Type::kReaderOpen)
    c.send(proto::encode(proto::ReaderOpenReply{-EACCES, 0, 0, 0}, seq));
  else if (type == proto::Type::kControl)
    c.send(proto::encode_status(proto::Type::kControlReply, {-EACCES}, seq));
  else if (type == proto::Type::kRecord)
    c.send(proto::encode(proto::RecordReply{-EACCES, 0, 0}, seq));
  else
    c.send(proto::encode_status(proto::Type::kError, {-EACCES}, seq));
}

void ControlServer::on_message(Connection& c, proto::Received& r) {
  if (c.refused) return refuse_request(c, r);
  const uint32_t seq = r.header.seq;
  switch (static_cast<proto::Type>(r.header.type)) {
    case proto::Type::kOpen:
    case proto::Type::kAdopt: {
      const bool adopt = static_cast<proto::Type>(r.header.type) == proto::Type::kAdopt;
      proto::OpenReply reply{};
      std::shared_ptr<Channel> ch;
      if (int rc = do_open(c, r, &reply, &ch); rc != 0) reply = {rc, 0, 0, 0, 0};
      std::vector<int> fds;
      if (ch && !adopt) {  // an adopting producer has its buffers and doorbell already
        for (auto& b : ch->buffers) fds.push_back(b->memfd());
        fds.push_back(ch->doorbell.get());
        // The whole loop waits: nothing else is served meanwhile, which the test does not need.
        if (!adopt && fault_once(Fault::kOpenReplyDelay)) ::sleep(2);
      }
      if (c.send(proto::encode(reply, seq), fds.data(), fds.size()) != 0 && ch)
        hooks_.finalize(ch);  // the producer is gone already
      return;
    }
    case proto::Type::kClose:
      c.send(proto::encode_status(proto::Type::kCloseReply, {do_close(c, r)}, seq));
      return;
    case proto::Type::kConsumed:
      return do_consumed(c, r);  // no reply: the producer does not wait for one
    case proto::Type::kBellRefused:
      return do_bell_refused(c, r);  // no reply either
    case proto::Type::kReaderOpen: {
      proto::ReaderOpenReply reply{};
      core::UniqueFd ro;
      bool wants_bell = false;
      if (int rc = do_reader_open(c, r, &reply, &ro, &wants_bell); rc != 0) reply = {rc, 0, 0, 0};
      std::vector<int> fds;
      if (ro) fds.push_back(ro.get());
      // Neither the page's descriptor nor the reader's socket is kept: the mapping and the
      // ringing socket are what the daemon needs.
      core::UniqueFd page, reader_end;
      if (ro && wants_bell) give_bell(c, &page, &reader_end);
      if (page) fds.insert(fds.end(), {page.get(), reader_end.get()});  // given just now
      c.send(proto::encode(reply, seq), fds.data(), fds.size());
      return;
    }
    case proto::Type::kReaderConsumed:
      c.send(proto::encode_status(proto::Type::kReaderConsumedReply, {do_reader_consumed(c, r)},
                                  seq));
      return;
    case proto::Type::kControl:
      if (int rc = do_control(c, r); rc != 0)
        c.send(proto::encode_status(proto::Type::kControlReply, {rc}, seq));
      return;
    case proto::Type::kControlDone:
      return do_control_done(c, r);
    case proto::Type::kRecord:
      return recorder_.start(c, r);
    case proto::Type::kRecordStop:
      return recorder_.stop(c.id, false);
    default:  // a reply or event type: clients do not send those
      c.send(proto::encode_status(proto::Type::kError, {-EPROTO}, seq));
  }
}

// relay_open, and a producer's reattach after a daemon died (kAdopt): the same checks, the same
// channel, except that an adopted channel's buffers are the producer's, as it brings them.
int ControlServer::do_open(Connection& c, proto::Received& r, proto::OpenReply* reply,
                           std::shared_ptr<Channel>* made) {
  proto::OpenRequest req;
  if (int rc = proto::decode(r.payload.data(), r.payload.size(), &req); rc) return rc;
  const bool adopt = static_cast<proto::Type>(r.header.type) == proto::Type::kAdopt;
  if (adopt != (req.adopt != 0)) return -EPROTO;
  core::Geometry g;
  if (int rc = core::make_geometry(req.subbuf_size, req.n_subbufs, &g); rc) return rc;
  if (opts_.read_only) return -EROFS;  // as creating a file would be
  const bool global = req.flags & proto::kFlagGlobal;
  const unsigned n = global ? 1 : static_cast<unsigned>(std::max(1, get_nprocs_conf()));
  // Adopted buffers: one per buffer this channel has, each a sealed memfd of the geometry's
  // exact size with a header of this layout (Buffer::attach), writable (a read-only descriptor,
  // such as relay_reader_open hands out, cannot be mapped so), each a different file.
  // The doorbell comes last: the eventfd the producer's threads (and its fork children) ring,
  // kept, so that a ring made while no daemon ran, or by a child holding the old descriptor,
  // still reaches this one.
  std::vector<core::Buffer> adopted;
  core::UniqueFd adopted_doorbell;
  if (adopt) {
    if (req.adopt != n || r.fds.size() != n + 1) return -EINVAL;
    // Nothing is asked of a file system before the seals say it is a memory file: fstat, mmap or
    // close of a file on a FUSE mount that does not answer would stall this thread. Refused
    // descriptors stay in r.fds, closed through the ring.
    for (unsigned i = 0; i < n; ++i)
      if (::fcntl(r.fds[i].get(), F_GET_SEALS) < 0) return -EINVAL;
    if (!core::is_eventfd(r.fds[n].get())) return -EINVAL;
    std::vector<std::pair<dev_t, ino_t>> seen;
    for (unsigned i = 0; i < n; ++i) {
      struct stat st;
      if (::fstat(r.fds[i].get(), &st) != 0) return -errno;
      const std::pair<dev_t, ino_t> id{st.st_dev, st.st_ino};
      if (std::find(seen.begin(), seen.end(), id) != seen.end()) return -EINVAL;
      seen.push_back(id);
    }
    for (unsigned i = 0; i < n; ++i) {
      core::Buffer buf;
      if (int rc = core::Buffer::attach(std::move(r.fds[i]), g, PROT_READ | PROT_WRITE, true,
                                        &buf);
          rc)
        return rc == -EACCES ? -EINVAL : rc;
      adopted.push_back(std::move(buf));
    }
    // Nor a buffer another channel has (this thread alone adds channels: no race).
    for (const auto& other : registry_.all())
      for (const auto& b : other->buffers)
        if (std::find(seen.begin(), seen.end(), b->file()) != seen.end()) return -EBUSY;
    adopted_doorbell = std::move(r.fds[n]);
    r.fds.clear();
  }
  std::vector<std::string> names;
  for (unsigned i = 0; i < n; ++i) names.push_back(req.base_filename + std::to_string(i));
  names.push_back(req.base_filename);  // the merged view
  // Whether the files can go in their directory. Tree::mu held. Asked before anything is
  // made, and again when the files go in: the tree may have changed meanwhile.
  auto place = [&](Node** dir) {
    *dir = tree_.get(req.parent_ino);
    if (!*dir || (!(*dir)->parent && (*dir)->ino != FUSE_ROOT_ID)) return -ENOENT;
    if (!(*dir)->is_dir()) return -ENOTDIR;
    if (!access_.may_create(*dir, c.peer)) return -EACCES;
    for (auto& name : names) {
      if (name.size() > proto::kMaxName) return -ENAMETOOLONG;
      if (tree_.child(*dir, name)) return -EEXIST;
    }
    return 0;
  };
  {
    std::lock_guard lk(tree_.mu);
    Node* dir;
    if (int rc = place(&dir)) return rc;
  }
  // Within its owner's limits, checked before anything is made (quota.h): every buffer's
  // whole memfd counts, since registering it with the ring pins all of it; a buffer each and
  // the doorbell are the descriptors it takes.
  Charge charge;
  const char* why = "descriptors";
  const unsigned new_fds = adopt ? 0 : n + 1;  // an adopted channel's came with the request
  int err = access_.admit_fds(c.peer.uid, new_fds);
  if (!err)
    err = access_.quota().charge_channel(c.peer.uid, n * core::Layout::of(g).total_size, &charge,
                                         &why);
  if (err) {
    access_.note_refusal(c.peer.uid, "a channel", why);
    return err;
  }
  access_.fds().made(new_fds);

  // Made with no lock held: memfds, mappings, the doorbell, io_uring registration.
  auto ch = std::make_shared<Channel>();
  ch->charge = std::move(charge);
  ch->id = registry_.next_id();
  ch->owner = c.id;
  ch->flags = req.flags;
  ch->base = req.base_filename;
  if (adopt)
    ch->doorbell = std::move(adopted_doorbell);
  else
    ch->doorbell.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!ch->doorbell) return -errno;
  const bool zero_copy = !(req.flags & (proto::kFlagOverwrite | proto::kFlagHookMode));
  for (unsigned i = 0; i < n; ++i) {
    core::Buffer buf;
    if (adopt)
      buf = std::move(adopted[i]);
    else if (int rc = core::Buffer::create(g, names[i].c_str(), &buf); rc)
      return rc;
    ch->buffers.push_back(
        std::make_shared<RelayBuffer>(std::move(buf), ch->id, c.id, i, zero_copy, adopt));
  }
  ch->merged = std::make_shared<MergedView>(ch->id, c.id, ch->buffers);
  int reg_err = 0;
  for (auto& b : ch->buffers) {
    // Unregistered buffers still work (reads copy from the mapping); say why once per channel
    // so a missing registration is never silent.
    const int slot = loop_.register_buffer(b->data(), b->geometry().data_size());
    if (slot < 0)
      reg_err = slot;
    else
      b->fixed_index = slot;
  }
  if (reg_err < 0)
    std::fprintf(stderr, "relayfs: channel %s: io_uring buffer registration failed: %s\n",
                 req.base_filename.c_str(), std::strerror(-reg_err));
  auto unregister = [&] {
    for (auto& b : ch->buffers) {
      if (loop_.unregister_buffer(b->fixed_index) != 0)
        std::fprintf(stderr, "relayfs: channel %s: a fixed buffer slot stays taken\n",
                     req.base_filename.c_str());
      b->fixed_index = -1;
    }
  };

  // In the registry before its files are in the tree: whoever finds a file finds its channel.
  registry_.add(ch);
  if (int rc = loop_.watch(ch->doorbell.get(), tag(kDoorbell, ch->id)); rc != 0) {
    registry_.take(ch->id);
    unregister();
    return rc;
  }
  {
    std::lock_guard lk(tree_.mu);
    Node* dir;
    err = place(&dir);
    if (!err) {
      const mode_t mode = S_IFREG | (req.mode ? (req.mode & 07777) : 0400);
      const auto sources = ch->sources();
      for (size_t i = 0; i < sources.size(); ++i) {
        Node* node = tree_.add(dir, names[i], mode, c.peer.uid, c.peer.gid);
        node->source = sources[i];
        sources[i]->ino = node->ino;
      }
    }
  }
  if (err) {
    registry_.take(ch->id);
    loop_.retire(tag(kDoorbell, ch->id));
    unregister();
    return err;
  }
  *reply = {0, ch->id, n, g.subbuf_size, g.n_subbufs};
  *made = std::move(ch);
  return 0;
}

int ControlServer::do_close(Connection& c, const proto::Received& r) {
  proto::CloseRequest req;
  if (int rc = proto::decode(r.payload.data(), r.payload.size(), &req)) return rc;
  std::shared_ptr<Channel> ch = registry_.find(req.channel_id);
  // A producer may close only its own channels.
  if (!ch || ch->owner != c.id) return -ENOENT;
  hooks_.finalize(ch);
  return 0;
}

std::shared_ptr<Channel> ControlServer::owned(const Connection& c, uint32_t channel_id,
                                              uint32_t buffer) {
  std::shared_ptr<Channel> ch = registry_.find(channel_id);
  if (!ch || ch->owner != c.id || buffer >= ch->buffers.size()) return nullptr;
  return ch;
}

void ControlServer::do_consumed(Connection& c, const proto::Received& r) {
  proto::ConsumedRequest req;
  if (proto::decode(r.payload.data(), r.payload.size(), &req) != 0) return;
  std::shared_ptr<Channel> ch = owned(c, req.channel_id, req.buffer);
  if (!ch) return;
  std::shared_ptr<RelayBuffer> b = ch->buffers[req.buffer];
  {
    std::lock_guard lk(b->mu);
    if (req.count) b->subbufs_consumed(req.count);
  }
  hooks_.news(b);
  hooks_.news(ch->merged);
}

// relay_reader_open: hands a read-only descriptor of a relay file's buffer to a reader that may
// read the file. The reader keeps the file open meanwhile (it polls it), so buf_mapped and
// buf_unmapped follow its life through open and release.
int ControlServer::do_reader_open(Connection& c, const proto::Received& r,
                                  proto::ReaderOpenReply* reply, core::UniqueFd* ro,
                                  bool* wants_bell) {
  proto::ReaderOpenRequest req;
  if (int rc = proto::decode(r.payload.data(), r.payload.size(), &req)) return rc;
  *wants_bell = (req.flags & proto::kReaderBell) != 0;
  if (c.mapped) return -EBUSY;  // one reader per connection
  std::shared_ptr<RelayBuffer> b;
  if (int rc = access_.readable_buffer(c.peer, req.ino, &b)) return rc;
  // The descriptor below is the daemon's until sent: not from the reserve (quota.h).
  if (int rc = access_.admit_fds(c.peer.uid, 1)) return rc;
  // A descriptor of its own, opened read-only, so the reader cannot map the buffer writable.
  const std::string self = "/proc/self/fd/" + std::to_string(b->memfd());
  access_.fds().made(1);
  ro->reset(::open(self.c_str(), O_RDONLY | O_CLOEXEC));
  if (!*ro) return -errno;
  const auto& g = b->geometry();
  *reply = {0, g.subbuf_size, g.n_subbufs, b->index()};
  c.mapped = std::move(b);
  return 0;
}

// A bell for the reader c just mapped its buffer for (core/bell.h), handed to the buffer's
// producer first (kBell), so that the reader, which gets it with the reply, is rung from its
// first wait on. *page and *reader_end: the page's descriptor and the reader's socket, for the
// reply. Best effort: a reader without a bell (over kMaxBells readers, out of descriptors, no
// producer) wakes through its FUSE file.
void ControlServer::give_bell(Connection& c, core::UniqueFd* page, core::UniqueFd* reader_end) {
  const std::shared_ptr<RelayBuffer>& b = c.mapped;
  // Kept: the ringing socket; passed on and closed: the page's descriptor, the reader's socket.
  if (access_.admit_fds(c.peer.uid, 3) != 0) return;
  std::shared_ptr<Connection> producer = conns_.get(b->owner());
  if (!producer) return;  // gone: its channel is finalized, or about to be
  auto bell = std::make_shared<ReaderBell>();
  access_.fds().made(3);
  core::UniqueFd fd, reader;
  if (core::make_bell_page(&fd) != 0 ||
      core::Mapping::map(fd.get(), core::kBellPageSize, PROT_READ | PROT_WRITE, &bell->page) != 0)
    return;
  if (core::make_bell_sockets(&reader, &bell->wake) != 0) return;
  // Rung once now: the reader's first poll() returns at once, and its relay_reader_next then
  // arms the bell and looks (take_bell, client/reader.cc).
  core::ring_bell(bell->wake.get());
  bell->id = ++next_bell_;
  if (bell->id == 0) bell->id = ++next_bell_;  // never 0, even after wrapping
  {
    std::lock_guard lk(b->mu);
    // A finalized buffer will never be rung by its producer; bounded per buffer.
    if (b->finalized() || b->bells.size() >= core::kMaxBells) return;
    b->bells.push_back(bell);
  }
  const int fds[2] = {fd.get(), bell->wake.get()};
  const proto::BellEvent ev{b->channel_id(), b->index(), bell->id};
  // Offered, never queued: readers decide how often this is sent, and a producer that does not
  // read its socket for a while (stopped, busy) would otherwise have their bells' descriptors
  // queued until the daemon cut it off for not reading, and finalized its channels. Without
  // room now, the reader goes without a bell and wakes through its relay file.
  if (!producer->offer(proto::encode_event(proto::Type::kBell, ev), fds, 2)) {
    std::lock_guard lk(b->mu);
    std::erase(b->bells, bell);
    return;
  }
  c.bell = std::move(bell);
  *page = std::move(fd);
  *reader_end = std::move(reader);
}

// The producer could not take a reader's bell (no descriptor left, or it refused the page or the
// socket): nobody will ring it, so its reader falls back to its relay file now, as at finalize,
// rather than sleep until then. Only the buffer's producer may say so.
void ControlServer::do_bell_refused(Connection& c, const proto::Received& r) {
  proto::BellEvent ev;
  if (proto::decode(r.payload.data(), r.payload.size(), &ev) != 0) return;
  std::shared_ptr<Channel> ch = owned(c, ev.channel_id, ev.buffer);
  if (!ch) return;
  const std::shared_ptr<RelayBuffer>& b = ch->buffers[ev.buffer];
  std::lock_guard lk(b->mu);
  const auto it =
      std::find_if(b->bells.begin(), b->bells.end(),
                   [&](const std::shared_ptr<ReaderBell>& x) { return x->id == ev.bell; });
  if (it == b->bells.end()) return;  // its reader went away meanwhile
  (*it)->fall_back();
  b->bells.erase(it);
}

// The reader of c went away: its producer forgets the bell (kBellGone), the buffer drops it.
void ControlServer::drop_bell(Connection& c) {
  if (!c.bell || !c.mapped) return;
  const std::shared_ptr<RelayBuffer>& b = c.mapped;
  {
    std::lock_guard lk(b->mu);
    std::erase(b->bells, c.bell);
  }
  if (std::shared_ptr<Connection> producer = conns_.get(b->owner()))
    producer->send(proto::encode_event(proto::Type::kBellGone,
                                       proto::BellEvent{b->channel_id(), b->index(), c.bell->id}));
  c.bell.reset();
}

// The reply comes once the sub-buffers are released, so a reader's relay_reader_consumed has
// taken effect when it returns, as the kernel's relay_subbufs_consumed has.
int ControlServer::do_reader_consumed(Connection& c, const proto::Received& r) {
  proto::ReaderConsumed req;
  if (int rc = proto::decode(r.payload.data(), r.payload.size(), &req)) return rc;
  if (!c.mapped) return -EBADF;  // no relay_reader_open on this connection
  std::shared_ptr<RelayBuffer> b = c.mapped;
  int status;
  {
    std::lock_guard lk(b->mu);
    status = b->consume_upto(req.gen, req.upto);
  }
  hooks_.news(b);
  // The reader may have drained a finalized buffer (its tail): then its file goes, as after read.
  hooks_.maybe_remove(b->channel_id());
  return status;
}

void ControlServer::close_connection(uint64_t id) {
  std::shared_ptr<Connection> c = conns_.take(id);
  if (!c) return;
  // The producer exited, was killed, or hung up: its channels are finalized. What it committed
  // stays readable until drained; then the files go.
  for (auto& ch : registry_.owned_by(id)) hooks_.finalize(ch);
  drop_controls(id);
  recorder_.stop(id, true);
  drop_bell(*c);
  c->mapped.reset();
  c->charge.reset();
  // Both its watches go: a pending POLLOUT wait would keep the socket open (it holds the file).
  // Submitted before the close, so that a wait prepared in this pass takes the socket it was
  // meant for, not a descriptor that reuses its number.
  if (loop_.retire(tag(kConn, id)) != 0 || loop_.cancel(tag(kConnOut, id)) != 0)
    std::fprintf(stderr, "relayfs: connection %llu: no room in the ring to stop watching it\n",
                 static_cast<unsigned long long>(id));
  loop_.submit();
  c->close();
}

}  // namespace relayfs::fs
