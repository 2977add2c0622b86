// The io_uring event loop (loop.h).
#include "fs/loop.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>

#include "fs/ring_tag.h"

namespace relayfs::fs {

namespace {

// The kernel's limit on registered buffers (IORING_MAX_REG_BUFFERS).
constexpr unsigned kFixedSlots = 1 << 14;

}  // namespace

Loop::~Loop() {
  stop();
  exit();
}

void Loop::exit() {
  if (ring_ok_) io_uring_queue_exit(&ring_);
  ring_ok_ = false;
}

int Loop::init() {
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
  return watch(notify_fd_.get(), tag(kNotify, 0));
}

void Loop::run(LoopHandler* h) {
  io_uring_submit(&ring_);
  thread_ = std::thread([this, h] { main(h); });
}

void Loop::stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true, std::memory_order_release);  // read by the loop after its wake-up
  post({LoopEvent::kWake, 0, nullptr});
  thread_.join();
}

void Loop::post(const LoopEvent& ev) {
  while (!events_.push(ev)) {  // only fails if the queue cannot grow: retry
  }
  const uint64_t one = 1;
  if (::write(notify_fd_.get(), &one, sizeof one) < 0) {
    // EAGAIN only, at a counter of 2^64-2: the loop is awake already.
  }
}

void Loop::main(LoopHandler* h) {
  std::vector<Completion> batch;
  while (!stopping_.load(std::memory_order_acquire)) {
    const int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      std::fprintf(stderr, "relayfs: io_uring wait failed: %s\n", std::strerror(-rc));
      break;
    }
    batch.clear();
    bool notified = false;
    io_uring_cqe* cqe;
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      const uint64_t ud = io_uring_cqe_get_data64(cqe);
      const bool more = cqe->flags & IORING_CQE_F_MORE;
      if (source_of(ud) == kNotify) {
        notified = true;
        // A multishot poll the kernel ended (it may, under pressure): armed again.
        if (!more && cqe->res != -ECANCELED && watch(notify_fd_.get(), ud) != 0)
          std::fprintf(stderr, "relayfs: cannot watch the loop's eventfd again\n");
        continue;
      }
      batch.push_back({ud, cqe->res, more});
    }
    io_uring_cq_advance(&ring_, seen);
    h->on_completions(batch);
    if (notified) {
      uint64_t v;
      while (::read(notify_fd_.get(), &v, sizeof v) > 0) {
      }
      drain_posted(h);
    }
  }
}

void Loop::drain_posted(LoopHandler* h) {
  LoopEvent ev;
  while (!stopping_.load(std::memory_order_acquire) && events_.pop(ev)) {
    try {
      h->on_posted(ev);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "relayfs: %s while handling a posted event; going on\n", e.what());
    }
  }
}

io_uring_sqe* Loop::sqe() {
  io_uring_sqe* e = io_uring_get_sqe(&ring_);
  if (!e) {
    io_uring_submit(&ring_);
    e = io_uring_get_sqe(&ring_);
  }
  return e;
}

template <typename Prep>
int Loop::submit_one(uint64_t ud, Prep prep) {
  io_uring_sqe* e = sqe();
  if (!e) return -EBUSY;
  prep(e);
  io_uring_sqe_set_data64(e, ud);
  return 0;
}

int Loop::watch(int fd, uint64_t ud, unsigned events) {
  return submit_one(ud, [=](io_uring_sqe* e) { io_uring_prep_poll_multishot(e, fd, events); });
}

int Loop::watch_out(int fd, uint64_t ud) {
  return submit_one(ud, [fd](io_uring_sqe* e) { io_uring_prep_poll_add(e, fd, POLLOUT); });
}

int Loop::retire(uint64_t ud) {
  return submit_one(tag(kCancel, 0), [ud](io_uring_sqe* e) { io_uring_prep_poll_remove(e, ud); });
}

int Loop::cancel(uint64_t ud) {
  return submit_one(tag(kCancel, 0), [ud](io_uring_sqe* e) { io_uring_prep_cancel64(e, ud, 0); });
}

int Loop::timeout(__kernel_timespec* ts, uint64_t ud) {
  return submit_one(ud, [ts](io_uring_sqe* e) { io_uring_prep_timeout(e, ts, 0, 0); });
}

void Loop::close_later(core::UniqueFd fd) {
  if (!fd) return;
  // Without room even after submitting, fd closes here, as it goes out of scope.
  submit_one(tag(kCancel, 0), [&fd](io_uring_sqe* e) { io_uring_prep_close(e, fd.release()); });
}

int Loop::register_buffer(void* addr, size_t len) {
  if (fixed_used_.empty()) return -ENOTSUP;
  auto it = std::find(fixed_used_.begin(), fixed_used_.end(), false);
  if (it == fixed_used_.end()) return -ENOSPC;
  const unsigned slot = static_cast<unsigned>(it - fixed_used_.begin());
  iovec iov{addr, len};
  __u64 tag_value = 0;
  const int rc = io_uring_register_buffers_update_tag(&ring_, slot, &iov, &tag_value, 1);
  if (rc < 0) return rc;
  fixed_used_[slot] = true;
  return static_cast<int>(slot);
}

int Loop::unregister_buffer(int slot) {
  if (slot < 0) return 0;
  // A recording's write to this slot may be prepared and not yet submitted: submit it first, so
  // that it takes its reference to the buffer before the slot is emptied.
  io_uring_submit(&ring_);
  iovec iov{nullptr, 0};
  __u64 tag_value = 0;
  const int rc = io_uring_register_buffers_update_tag(&ring_, static_cast<unsigned>(slot), &iov,
                                                      &tag_value, 1);
  if (rc < 0) return rc;  // the slot stays taken: better lost than reused while still mapped
  fixed_used_[static_cast<size_t>(slot)] = false;
  return 0;
}

}  // namespace relayfs::fs
