// librelayfs, the reader side: relay_reader_open maps a relay file's buffer read-only, as the
// spec's mmap() readers do, and reports what they consumed to the daemon. The mapping is
// read-only and the control area is written by the producer, so every value read here is
// checked before it is used to compute an address.
#include <fcntl.h>
#include <libgen.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "client/common.h"
#include "core/bell.h"
#include "core/buffer.h"
#include "core/geometry.h"
#include "core/layout.h"
#include "core/view.h"
#include "proto/protocol.h"
#include "proto/wire.h"

namespace {

namespace core = relayfs::core;
namespace proto = relayfs::proto;

struct Reader {
  relay_reader pub{};
  core::Buffer buffer;
  core::UniqueFd file;  // the relay file, open: the daemon counts it as a reader (buf_mapped)
  core::UniqueFd sock;  // this reader's own connection to the daemon
  // The reader's bell (core/bell.h), if the daemon gave one: its page, its socket, and the
  // epoll descriptor handed out as pub.fd, which watches the socket for POLLIN and the relay
  // file for POLLERR/POLLHUP only. When the bell ends (fall_back), pub.fd's number becomes the
  // relay file itself (dup3) and poll_fd owns that copy; bell and bell_fd are then empty.
  core::Mapping bell;
  core::UniqueFd bell_fd;
  core::UniqueFd poll_fd;
  uint32_t seq = 1;
  // Our view of the shared read position: the next sub-buffer to hand out, in generation gen.
  uint64_t next = 0;
  uint32_t gen = 0;
  // The tail of a closed buffer: the sequence number it was given under (kNoTail: none), and
  // whether the reader consumed it (its number is then past `produced`).
  static constexpr uint64_t kNoTail = ~uint64_t{0};
  uint64_t tail = kNoTail;
  bool tail_taken = false;
};

Reader* impl(relay_reader* r) {
  return static_cast<Reader*>(r->impl);
}

// The C boundary: reports rc (-errno) in errno, and returns -1.
int fail(int rc) {
  errno = -rc;
  return -1;
}

// What pub.fd's epoll set reports (epoll_event::data).
constexpr uint32_t kBellTag = 1;
constexpr uint32_t kFileTag = 2;

// Takes the bell the daemon sent (its page and the reader's socket), and makes pub.fd the epoll
// descriptor that waits on it. Returns 0 or -errno; on failure the reader has no bell and polls
// its file.
int take_bell(Reader* r, core::UniqueFd page, core::UniqueFd sock) {
  if (!core::is_bell_socket(sock.get())) return -EINVAL;
  core::Mapping m;
  if (int rc = core::map_bell_page(page.get(), &m); rc) return rc;
  core::UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) return -errno;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u32 = kBellTag;
  if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, sock.get(), &ev) != 0) return -errno;
  // No POLLIN: the producer rings the bell for data; the file says only that the channel ended
  // or the daemon went away (POLLERR/POLLHUP, which epoll always watches). The daemon sees that
  // the poll asks for no POLLIN and arms no doorbell for it (Files::poll).
  ev.events = 0;
  ev.data.u32 = kFileTag;
  if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, r->file.get(), &ev) != 0) return -errno;
  // The first poll() returns at once: the daemon rang the bell when it made it
  // (ControlServer::give_bell), and relay_reader_next then arms the bell and looks, so a
  // sub-buffer completed before now is not waited for in vain.
  r->bell = std::move(m);
  r->bell_fd = std::move(sock);
  r->poll_fd = std::move(ep);
  return 0;
}

// The bell has ended: the daemon finalized the channel (BellPage::fallback), or the relay file
// reports POLLERR/POLLHUP (the daemon went away). From now on pub.fd is the relay file, under
// the same number, so a caller's pollfd stays valid and sees what the file says, as without a
// bell: POLLIN for what is left, then POLLERR.
void fall_back(Reader* r) {
  if (::dup3(r->file.get(), r->poll_fd.get(), O_CLOEXEC) < 0) return;  // try again next time
  r->bell.reset();
  r->bell_fd.reset();
}

bool bell_ended(Reader* r) {
  // acquire: pairs with the daemon's release (ReaderBell::fall_back); nothing else to see, but
  // the flag is read as the daemon wrote it.
  if (reinterpret_cast<const core::BellPage*>(r->bell.bytes())
          ->fallback.load(std::memory_order_acquire) != 0)
    return true;
  epoll_event ev[2];
  const int n = ::epoll_wait(r->poll_fd.get(), ev, 2, 0);
  for (int i = 0; i < n; ++i)
    if (ev[i].data.u32 == kFileTag && (ev[i].events & (EPOLLERR | EPOLLHUP))) return true;
  return false;
}

// Whether to ask for a bell: unless RELAYFS_READER_BELL=0 (relay_reader_open(3), ENVIRONMENT),
// which keeps the FUSE file's poll, for comparison and as a way out.
bool bell_wanted() {
  const char* v = std::getenv("RELAYFS_READER_BELL");
  return !v || std::strcmp(v, "0") != 0;
}

// relay_reader_open's work. Returns 0 or -errno, as relay_reader_open(3) lists them.
int open_reader(Reader* r, const char* path) {
  // Opening the file is how the kernel checks read permission for us too, and the open file is
  // what poll() watches.
  r->file.reset(::open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (!r->file) return -errno;
  struct stat st;
  if (::fstat(r->file.get(), &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode)) return -EINVAL;
  std::string dir(path);
  if (int rc = relayfs::client::connect_daemon(::dirname(dir.data()), &r->sock); rc) return rc;
  if (::ioctl(r->file.get(), proto::kIocSubbufPoll) != 0)
    return errno == ENOTTY ? -ENOTSUP : -errno;

  const proto::ReaderOpenRequest req{st.st_ino, bell_wanted() ? proto::kReaderBell : 0u};
  if (int rc = proto::send_message(r->sock.get(), proto::encode(req, r->seq++)); rc)
    return proto::send_failure(r->sock.get(), rc);
  proto::Received m;
  const int rc = proto::recv_message(r->sock.get(), &m, 3);
  if (rc <= 0) return rc == 0 || rc == -EAGAIN ? -EIO : rc;
  proto::ReaderOpenReply reply;
  if (static_cast<proto::Type>(m.header.type) != proto::Type::kReaderOpenReply)
    return relayfs::client::refusal(m);
  if (proto::decode(m.payload.data(), m.payload.size(), &reply) != 0) return -EIO;
  if (reply.status < 0) return reply.status;
  if (m.fds.size() != 1 && m.fds.size() != 3) return -EIO;
  core::Geometry g;
  if (core::make_geometry(reply.subbuf_size, reply.n_subbufs, &g) != 0) return -EIO;
  // The memfd's inode names the buffer: a restarted daemon adopts the same memfd (relay(7),
  // "Daemon restarts"), a channel opened anew gets another.
  struct stat mst;
  if (::fstat(m.fds[0].get(), &mst) != 0) return -errno;
  r->pub.stream = mst.st_ino;
  // Read-only: the daemon sent a descriptor that cannot be mapped writable anyway.
  if (int rc = core::Buffer::attach(std::move(m.fds[0]), g, PROT_READ, false, &r->buffer))
    return rc;
  r->pub.base = r->buffer.data();
  r->pub.subbuf_size = g.subbuf_size;
  r->pub.n_subbufs = g.n_subbufs;
  r->pub.cpu = reply.buffer;
  r->pub.file = r->file.get();
  // A bell that does not check out is left unused: the file's poll works without it.
  if (m.fds.size() == 3 && take_bell(r, std::move(m.fds[1]), std::move(m.fds[2])) == 0)
    r->pub.fd = r->poll_fd.get();
  else
    r->pub.fd = r->file.get();
  return 0;
}

// The published read position, if it belongs to the current reset generation. Returns false
// while a reset is in progress.
bool position(Reader* r, uint64_t* pub) {
  const core::ShmHeader* h = r->buffer.header();
  const uint32_t gen = h->reset_gen.load(std::memory_order_acquire);
  if (gen & 1) return false;
  if (gen != r->gen) {  // a reset: everything starts again at sub-buffer 0
    r->gen = gen;
    r->next = 0;
    r->tail = Reader::kNoTail;
    r->tail_taken = false;
  }
  const uint64_t tagged = h->consumed.load(std::memory_order_acquire);
  *pub = core::consumed_count(tagged, gen);
  return true;
}

// Fills *sb with sub-buffer seq, given `produced` as the reader loaded it: a closed one once it
// is wholly committed, or the one being written once the producer closed the buffer and every
// byte reserved in it is committed (the tail, which never closes). Returns 1, 0 if it is not
// ready, or -EIO.
int take(Reader* r, const core::View& view, uint64_t seq, uint64_t produced, relay_subbuf* sb) {
  uint32_t end;
  if (seq < produced) {
    // The writers' bytes are visible once the sub-buffer is complete (View::complete).
    if (!view.complete(seq)) return 0;
    if (view.data_end(seq, &end) != 0) return -EIO;
  } else {
    // acquire: close_off, stored before `closed`, is visible (decode_off).
    if (view.header().closed.load(std::memory_order_acquire) == 0) return 0;
    end = view.reserved_end(seq);
    // committed_prefix's acquire loads make the committed bytes visible.
    if (end == 0 || view.committed_prefix(seq, true) != end) return 0;
    r->tail = seq;
  }
  const uint32_t slot = core::slot_of(seq, view.n_subbufs());
  sb->index = slot;
  sb->data = view.subbuf(slot);
  sb->length = end;
  sb->padding = view.subbuf_size() - end;
  sb->seq = seq;
  return 1;
}

// relay_reader_next's look: 1 with *sb, 0 for nothing ready, or -errno.
int next_subbuf(Reader* r, relay_subbuf* sb) {
  const core::View view(r->buffer);
  uint64_t pub;
  if (!position(r, &pub)) return 0;
  // Where the daemon's consumer would go on: if the writer has begun reusing the slot (overwrite
  // mode), at the oldest sub-buffer that can still be whole; the daemon counts the skipped ones
  // as overruns when we report our position.
  const uint64_t from = std::max(r->next, pub);
  if (from > view.produced() && r->tail_taken) return 0;  // the tail is consumed: nothing more
  core::View::Next at;
  const int found = view.next(from, &at);
  // A reset that finished since position() explains a position past `produced`.
  if (found < 0) return view.corrupt(r->gen) != 0 ? -EIO : 0;
  if (found == 0) return 0;  // a switch into that slot is being decided
  r->next = std::min(at.seq, at.produced);
  const int rc = take(r, view, at.seq, at.produced, sb);
  if (rc == 1) r->pub.generation = r->gen;
  return rc;
}

// relay_reader_peek's look: 1 with *sb, 0 for not ready, or -errno.
int peek_subbuf(Reader* r, uint64_t seq, relay_subbuf* sb) {
  const core::View view(r->buffer);
  uint64_t pub;
  if (!position(r, &pub)) return 0;
  if (seq < std::max(r->next, pub)) return -ESTALE;  // consumed, or passed as lapped
  const uint64_t produced = view.produced();
  if (seq > produced) return 0;
  // The writer began reusing its slot (overwrite mode): what it held is gone.
  if (seq < produced && view.reused(seq, produced) == core::Reuse::kYes) return -ESTALE;
  const int rc = take(r, view, seq, produced, sb);
  if (rc == 1) r->pub.generation = r->gen;
  return rc;
}

// A look (next_subbuf, peek_subbuf) that, finding nothing, readies the bell for the caller's
// poll(): drains it first, so that poll() does not return for a ring already seen (no spin);
// arms it; and looks once more, for a sub-buffer that completed before the arming (the
// producer, which did not see us armed, did not ring). Then, if the bell has ended, pub.fd
// becomes the relay file (fall_back). Returns what the last look returned.
template <typename Look>
int look_or_arm(Reader* r, Look look) {
  int rc = look();
  if (rc != 0 || !r->bell.valid()) return rc;
  // Never blocks, whatever the producer did to its end (core/bell.h).
  const bool alive = core::drain_bell(r->bell_fd.get());
  const int armed = core::arm_bell(*reinterpret_cast<core::BellPage*>(r->bell.bytes()),
                                   *r->buffer.header());
  rc = look();
  // An arming the producer's commits are not ordered against (its membarrier failed) cannot be
  // slept on, nor a bell whose ringing sockets are all gone (it would read as ringing for ever):
  // the relay file, whose wake-up the daemon owns, takes over.
  if (rc == 0 && (!alive || armed != 0 || bell_ended(r))) fall_back(r);
  return rc;
}

}  // namespace

extern "C" {

RELAY_API relay_reader* relay_reader_open(const char* path) {
  if (!path) {
    errno = EINVAL;
    return nullptr;
  }
  std::unique_ptr<Reader> r;
  if (int rc = relayfs::client::guarded([&] {
        r = std::make_unique<Reader>();
        r->pub.impl = r.get();
        r->pub.fd = -1;
        return open_reader(r.get(), path);
      })) {
    errno = -rc;
    return nullptr;
  }
  return &r.release()->pub;
}

RELAY_API int relay_reader_next(relay_reader* rr, relay_subbuf* sb) {
  if (!rr || !sb) return fail(-EINVAL);
  Reader* r = impl(rr);
  const int rc = look_or_arm(r, [&] { return next_subbuf(r, sb); });
  return rc < 0 ? fail(rc) : rc;
}

RELAY_API int relay_reader_peek(relay_reader* rr, unsigned long long seq, relay_subbuf* sb) {
  if (!rr || !sb) return fail(-EINVAL);
  Reader* r = impl(rr);
  const int rc = look_or_arm(r, [&] { return peek_subbuf(r, seq, sb); });
  return rc < 0 ? fail(rc) : rc;
}

RELAY_API int relay_reader_valid(relay_reader* rr, const relay_subbuf* sb) {
  if (!rr || !sb) return fail(-EINVAL);
  Reader* r = impl(rr);
  // Seqlock reader side: the caller's reads of the sub-buffer happen before its loads.
  return core::View(r->buffer).still_valid(sb->seq, r->gen) ? 1 : 0;
}

RELAY_API int relay_reader_consumed(relay_reader* rr, size_t subbufs_consumed) {
  if (!rr) return fail(-EINVAL);
  if (subbufs_consumed == 0) return 0;
  Reader* r = impl(rr);
  uint64_t pub;
  if (!position(r, &pub)) return 0;
  // As the kernel's relay_subbufs_consumed, clamped to what was produced.
  const uint64_t produced = core::View(r->buffer).produced();
  const uint64_t from = std::max(r->next, pub);
  // Clamped to what was produced, and the tail if it was given: its number is `produced`.
  const uint64_t limit = r->tail == produced ? produced + 1 : produced;
  r->next = std::max(from, std::min(limit, from + subbufs_consumed));
  if (r->next > produced) r->tail_taken = true;
  proto::Received m;
  try {
    const uint32_t seq = r->seq++;
    const auto msg = proto::encode(proto::ReaderConsumed{r->gen, r->next}, seq);
    // A daemon that died (relay(7), "Daemon restarts") is said as ENOTCONN: the reader opens the
    // file again at the next daemon's mount, from where the record of its releases left off.
    const auto gone = [](int rc) {
      return rc == 0 || rc == -EPIPE || rc == -ECONNRESET || rc == -ENOTCONN ? -ENOTCONN : -EIO;
    };
    if (int rc = proto::send_message(r->sock.get(), msg); rc != 0) return fail(gone(rc));
    // Wait for the release, so the sub-buffers are free when we return (kernel semantics). A
    // reply to an earlier request that timed out may come first: skip it.
    do {
      if (int rc = proto::recv_message(r->sock.get(), &m); rc != 1) return fail(gone(rc));
    } while (m.header.seq != seq);
  } catch (...) {
    return fail(-ENOMEM);
  }
  proto::Status st;
  if (static_cast<proto::Type>(m.header.type) != proto::Type::kReaderConsumedReply ||
      proto::decode(m.payload.data(), m.payload.size(), &st) != 0)
    return fail(-EIO);
  // -ESTALE: a reset came in between; our position starts again, nothing to release.
  if (st.status < 0 && st.status != -ESTALE) return fail(st.status);
  return 0;
}

RELAY_API int relay_reader_stats(relay_reader* rr, relay_stats* st) {
  if (!rr || !st) return fail(-EINVAL);
  relayfs::client::read_stats(impl(rr)->buffer, st);
  return 0;
}

RELAY_API int relay_reader_close(relay_reader* rr) {
  if (!rr) return fail(-EINVAL);
  delete impl(rr);  // unmaps, closes the file (buf_unmapped for the last reader) and the socket
  return 0;
}

}  // extern "C"
