// The daemon's event loop, on io_uring: it waits for control connections and their messages, for
// producers' doorbells, and for work handed over by FUSE workers (parked reads, interrupts),
// and it owns every channel buffer's registration with the ring.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <random>

#include "fs/relayfs.h"
#include "fs/ring_tag.h"

namespace relayfs::fs {

namespace {

// The kernel's limit on registered buffers (IORING_MAX_REG_BUFFERS).
constexpr unsigned kFixedSlots = 1 << 14;
constexpr size_t kMaxRead = 1 << 20;

}  // namespace

RelayFs::RelayFs(const Options& o) : opts_(o), quota_(o.limits, ::getuid()) {}

RelayFs::~RelayFs() {
  stop();
  free_handles();  // the session is over: no RELEASE will come for files still open
  if (ring_ok_) io_uring_queue_exit(&ring_);
}

size_t RelayFs::channel_count() {
  std::lock_guard lk(tree.mu);
  return channels_.size();
}

void RelayFs::post(const LoopEvent& ev) {
  while (!events_.push(ev)) {  // only fails if the queue cannot grow: retry
  }
  const uint64_t one = 1;
  if (::write(notify_fd_.get(), &one, sizeof one) < 0) {
    // The eventfd counter cannot overflow in practice; nothing else to do.
  }
}

int RelayFs::start() {
  fds_.init();
  // The control socket: abstract, named after this daemon and a random nonce, so no file is
  // left behind and no other process can guess it before we bind.
  std::random_device rd;
  char name[64];
  std::snprintf(name, sizeof name, "relayfs-%d-%08x%08x", static_cast<int>(::getpid()), rd(), rd());
  control_name_ = std::string("@") + name;
  listen_fd_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_fd_) return -errno;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, name, std::strlen(name));
  const socklen_t alen =
      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + std::strlen(name));
  if (::bind(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), alen) != 0) return -errno;
  if (::listen(listen_fd_.get(), 128) != 0) return -errno;

  notify_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!notify_fd_) return -errno;

  if (int rc = io_uring_queue_init(256, &ring_, 0); rc < 0) return rc;
  ring_ok_ = true;
  // A sparse table of fixed buffers, filled as channels come and go. Pinning counts against
  // RLIMIT_MEMLOCK for unprivileged daemons: if the table cannot be had, relayfs works on
  // without it (only recording to disk from fixed buffers needs it).
  if (int rc = io_uring_register_buffers_sparse(&ring_, kFixedSlots); rc == 0)
    fixed_used_.assign(kFixedSlots, false);
  else
    std::fprintf(stderr, "relayfs: io_uring fixed buffers unavailable (%s)\n", std::strerror(-rc));

  watch(listen_fd_.get(), tag(kListen, 0));
  watch(notify_fd_.get(), tag(kNotify, 0));
  arm_expiry();
  io_uring_submit(&ring_);
  // Without it relayfs works on, but keeps the buffers of drained channels the kernel did not
  // happen to forget.
  if (int rc = se_ ? forgetter_.start(fuse_session_fd(se_)) : -EINVAL; rc != 0)
    std::fprintf(stderr, "relayfs: cannot start the forgetter: %s\n", std::strerror(-rc));
  loop_ = std::thread([this] { loop_main(); });
  return 0;
}

void RelayFs::stop() {
  forgetter_.stop();
  if (!loop_.joinable()) return;
  stopping_.store(true, std::memory_order_release);
  post({LoopEvent::kFree, 0, nullptr});  // wakes the loop
  loop_.join();
  // Answer whatever is still parked: the mount is going away.
  for (auto& [id, pr] : parked_) {
    fuse_req_interrupt_func(pr->req, nullptr, nullptr);
    fuse_reply_buf(pr->req, nullptr, 0);
    delete pr;
  }
  parked_.clear();
  LoopEvent ev;
  while (events_.pop(ev))
    if (ev.kind == LoopEvent::kPark) {
      fuse_req_interrupt_func(ev.read->req, nullptr, nullptr);
      fuse_reply_buf(ev.read->req, nullptr, 0);
      delete ev.read;
    }
}

void RelayFs::loop_main() {
  std::vector<uint64_t> rearm;
  while (!stopping_.load(std::memory_order_acquire)) {
    io_uring_cqe* cqe;
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      std::fprintf(stderr, "relayfs: io_uring wait failed: %s\n", std::strerror(-rc));
      break;
    }
    unsigned head, seen = 0;
    rearm.clear();
    std::vector<std::pair<uint64_t, int>> ready, writes;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      const uint64_t ud = io_uring_cqe_get_data64(cqe);
      if (source_of(ud) == kRecordWrite || source_of(ud) == kIndexWrite) {
        writes.emplace_back(ud, cqe->res);  // one shot, and its result is the byte count
        continue;
      }
      const bool more = cqe->flags & IORING_CQE_F_MORE;
      ready.emplace_back(ud, cqe->res);
      if (!more && cqe->res != -ECANCELED) rearm.push_back(ud);
    }
    io_uring_cq_advance(&ring_, seen);
    // An exception from one event's handler (std::bad_alloc) is reported and the loop goes
    // on: only main() may end the process.
    for (auto& [ud, res] : ready) {
      try {
        dispatch(ud, res);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "relayfs: %s while handling event %llu; going on\n", e.what(),
                     static_cast<unsigned long long>(ud));
      }
    }
    for (auto& [ud, res] : writes) {
      try {
        if (source_of(ud) == kRecordWrite)
          on_record_write(id_of(ud), res);
        else
          on_index_write(id_of(ud), res);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "relayfs: %s while handling a recording's write; going on\n",
                     e.what());
      }
    }
    reap_recordings();  // here, where no handler holds a reference to one
    // A multishot poll that ended (the kernel may end one under pressure): arm it again.
    for (uint64_t ud : rearm) {
      int fd = -1;
      switch (source_of(ud)) {
        case kListen:
          fd = listen_fd_.get();
          break;
        case kNotify:
          fd = notify_fd_.get();
          break;
        case kConn:
          if (auto c = connection(id_of(ud))) fd = c->fd.get();
          break;
        case kDoorbell: {
          std::lock_guard lk(tree.mu);
          auto it = channels_.find(static_cast<uint32_t>(id_of(ud)));
          if (it != channels_.end()) fd = it->second->doorbell.get();
          break;
        }
        case kExpire:  // a one-shot timeout: the next tick
          arm_expiry();
          break;
        case kIndexDeadline:  // one shot, once per stop
        case kCancel:
        case kRecordWrite:
        case kIndexWrite:
        case kConnOut:  // one shot: on_conn_writable arms another when needed
        case kConnMore:
          break;
      }
      if (fd >= 0) watch(fd, ud);
    }
  }
}

// Handles one completion of a multishot poll (or a no-op or a cancel).
void RelayFs::dispatch(uint64_t ud, int res) {
  if (source_of(ud) == kExpire) {
    if (res == -ETIME) expire_orphans();  // the tick (a cancelled one is the ring's end)
    return;
  }
  if (source_of(ud) == kIndexDeadline) {
    if (res == -ETIME) on_index_deadline(id_of(ud));
    return;
  }
  if (res < 0 && res != -ECANCELED && source_of(ud) != kCancel)
    std::fprintf(stderr, "relayfs: poll failed on source %llu: %s\n",
                 static_cast<unsigned long long>(ud), std::strerror(-res));
  if (res < 0) return;
  switch (source_of(ud)) {
    case kListen:
      on_accept();
      break;
    case kNotify: {
      uint64_t v;
      while (::read(notify_fd_.get(), &v, sizeof v) > 0) {
      }
      drain_events();
      break;
    }
    case kConn:
    case kConnMore:
      if (auto c = connection(id_of(ud))) on_connection(c);
      break;
    case kDoorbell:
      on_doorbell(static_cast<uint32_t>(id_of(ud)));
      break;
    case kConnOut:
      on_conn_writable(id_of(ud));
      break;
    case kCancel:
    case kRecordWrite:
    case kIndexWrite:
    case kExpire:
    case kIndexDeadline:
      break;
  }
}

// A submission slot; when the queue is full, what is queued is submitted first to make room.
io_uring_sqe* RelayFs::sqe() {
  io_uring_sqe* e = io_uring_get_sqe(&ring_);
  if (!e) {
    io_uring_submit(&ring_);
    e = io_uring_get_sqe(&ring_);
  }
  return e;
}

// Watches fd for input with a multishot poll whose completions carry user_data ud.
void RelayFs::watch(int fd, uint64_t ud) {
  io_uring_sqe* e = sqe();
  io_uring_prep_poll_multishot(e, fd, POLLIN);
  io_uring_sqe_set_data64(e, ud);
}

// Stops watching a descriptor. The caller may close it at once: the pending poll holds its own
// reference to the file until the removal completes.
void RelayFs::retire(uint64_t ud) {
  io_uring_sqe* sqe = this->sqe();
  io_uring_prep_poll_remove(sqe, ud);
  io_uring_sqe_set_data64(sqe, tag(kCancel, 0));
}

void RelayFs::drain_events() {
  LoopEvent ev;
  while (events_.pop(ev)) {
    switch (ev.kind) {
      case LoopEvent::kPark: {
        ParkedRead* pr = ev.read;
        parked_.emplace(pr->id, pr);
        auto b = pr->source;
        b->parked.push_back(pr);
        service(b);
        break;
      }
      case LoopEvent::kInterrupt: {
        auto it = parked_.find(ev.id);
        if (it == parked_.end()) break;  // answered already
        ParkedRead* pr = it->second;
        auto& q = pr->source->parked;
        q.erase(std::remove(q.begin(), q.end(), pr), q.end());
        finish_read(pr, nullptr, -EINTR);
        break;
      }
      case LoopEvent::kFree:
        if (ev.id) free_channel(static_cast<uint32_t>(ev.id));
        break;
    }
  }
}

void RelayFs::finish_read(ParkedRead* pr, const char* data, ssize_t n) {
  // After this no interrupt callback runs for the request (it waits for one in progress).
  fuse_req_interrupt_func(pr->req, nullptr, nullptr);
  if (n >= 0)
    fuse_reply_buf(pr->req, data, static_cast<size_t>(n));
  else
    fuse_reply_err(pr->req, static_cast<int>(-n));
  parked_.erase(pr->id);
  delete pr;
}

// Answers parked reads and pollers of one file for which there is news.
void RelayFs::service(const std::shared_ptr<Source>& b) {
  static thread_local std::unique_ptr<char[]> tmp(new char[kMaxRead]);
  bool check_removal = false;
  {
    std::lock_guard lk(b->mu);
    // Bounded: each pass answers a read, or arms the doorbell once and re-checks.
    for (int pass = 0; pass < 2; ++pass) {
      while (!b->parked.empty()) {
        ParkedRead* pr = b->parked.front();
        const ssize_t n = b->consume(tmp.get(), std::min(pr->size, kMaxRead));
        if (n == 0 && !b->drained()) break;
        b->parked.pop_front();
        if (n == 0) check_removal = true;
        finish_read(pr, tmp.get(), n);
      }
      bool want_records = !b->parked.empty();
      bool want_subbufs = false;
      if (!b->polls.empty()) {
        // Each poller's own question: any record, or a whole sub-buffer (an mmap reader).
        const bool records = b->data_available() || b->drained();
        const bool subbufs = b->subbuf_ready() || b->finalized();
        std::erase_if(b->polls, [&](const Poller& p) {
          if (!(p.whole_subbufs ? subbufs : records)) {
            (p.whole_subbufs ? want_subbufs : want_records) = true;
            return false;
          }
          fuse_lowlevel_notify_poll(p.ph);
          fuse_pollhandle_destroy(p.ph);
          return true;
        });
      }
      if (!want_records && !want_subbufs) break;
      // Someone still waits: have the producer ring on its next record (or sub-buffer), then
      // look again for one that came before the doorbell was armed.
      if (want_records) b->arm_doorbell(false);
      if (want_subbufs) b->arm_doorbell(true);
      const bool news =
          want_records ? b->data_available() || b->drained() : b->subbuf_ready() || b->finalized();
      if (!news) break;
    }
  }
  if (check_removal) maybe_remove(b->channel_id());
  if (b->recording) record_step(*b->recording);
}

void RelayFs::on_doorbell(uint32_t channel_id) {
  std::shared_ptr<Channel> ch;
  {
    std::lock_guard lk(tree.mu);
    auto it = channels_.find(channel_id);
    if (it == channels_.end()) return;
    ch = it->second;
  }
  uint64_t v;
  while (::read(ch->doorbell.get(), &v, sizeof v) > 0) {
  }
  for (auto& s : ch->sources()) service(s);
}

int RelayFs::register_buffer(RelayBuffer& b) {
  if (fixed_used_.empty()) return -ENOTSUP;
  auto it = std::find(fixed_used_.begin(), fixed_used_.end(), false);
  if (it == fixed_used_.end()) return -ENOSPC;
  const unsigned slot = static_cast<unsigned>(it - fixed_used_.begin());
  iovec iov{b.buf.data(), b.buf.geometry().data_size()};
  __u64 tag_value = 0;
  const int rc = io_uring_register_buffers_update_tag(&ring_, slot, &iov, &tag_value, 1);
  if (rc < 0) return rc;
  fixed_used_[slot] = true;
  b.fixed_index = static_cast<int>(slot);
  return 0;
}

void RelayFs::unregister_buffer(RelayBuffer& b) {
  if (b.fixed_index < 0) return;
  // A recording's write to this slot may be prepared and not yet submitted: submit it first, so
  // that it takes its reference to the buffer before the slot is emptied.
  io_uring_submit(&ring_);
  iovec iov{nullptr, 0};
  __u64 tag_value = 0;
  io_uring_register_buffers_update_tag(&ring_, static_cast<unsigned>(b.fixed_index), &iov,
                                       &tag_value, 1);
  fixed_used_[static_cast<size_t>(b.fixed_index)] = false;
  b.fixed_index = -1;
}

size_t RelayFs::fixed_buffers_registered() const {
  return static_cast<size_t>(std::count(fixed_used_.begin(), fixed_used_.end(), true));
}

void RelayFs::close_later(core::UniqueFd fd) {
  if (!fd) return;
  io_uring_sqe* e = sqe();
  if (!e) return;  // no room even after submitting: fd closes here, as it goes out of scope
  io_uring_prep_close(e, fd.release());
  io_uring_sqe_set_data64(e, tag(kCancel, 0));
}

void RelayFs::cancel(uint64_t ud) {
  if (io_uring_sqe* e = sqe()) {
    io_uring_prep_cancel64(e, ud, 0);
    io_uring_sqe_set_data64(e, tag(kCancel, 0));
  }
}

void RelayFs::send_queued(Connection& c, std::vector<char> msg, bool must) {
  std::lock_guard lk(c.send_mu);
  if (!c.fd) return;
  // In order: nothing overtakes what is queued.
  if (c.outq.empty() && proto::send_message(c.fd.get(), msg) != -EAGAIN) return;  // sent, or
                                                   // the socket failed (its close comes next)
  if (!must) return;
  c.outq.push_back(std::move(msg));
  arm_out(c);
}

void RelayFs::arm_out(Connection& c) {
  if (c.out_armed) return;
  if (io_uring_sqe* e = sqe()) {
    io_uring_prep_poll_add(e, c.fd.get(), POLLOUT);
    io_uring_sqe_set_data64(e, tag(kConnOut, c.id));
    c.out_armed = true;
  }
}

std::shared_ptr<Connection> RelayFs::connection(uint64_t id) {
  std::lock_guard lk(conns_mu_);
  auto it = conns_.find(id);
  return it == conns_.end() ? nullptr : it->second;
}

void RelayFs::on_conn_writable(uint64_t conn_id) {
  std::shared_ptr<Connection> c = connection(conn_id);
  if (!c) return;
  std::lock_guard lk(c->send_mu);
  c->out_armed = false;
  while (!c->outq.empty() && c->fd) {
    const int rc = proto::send_message(c->fd.get(), c->outq.front());
    if (rc == -EAGAIN) break;
    c->outq.pop_front();  // sent, or the socket failed: then none of them can go
    if (rc != 0) c->outq.clear();
  }
  if (!c->outq.empty() && c->fd) arm_out(*c);
}

}  // namespace relayfs::fs
