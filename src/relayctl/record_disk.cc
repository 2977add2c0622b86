// The disk side of relayctl record (record_disk.h).
#include "relayctl/record_disk.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace relayctl {

int OutputFile::open(const std::string& path, bool allow_direct) {
  path_ = path;
  buffered_.reset(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!buffered_) return errno;
  if (!allow_direct) return 0;
  struct statx sx {};
  // Filesystems without direct I/O (tmpfs before 6.6, FUSE, ...) report no alignment, or
  // refuse O_DIRECT at open: then everything goes through the page cache.
  if (::statx(buffered_.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) != 0 ||
      !(sx.stx_mask & STATX_DIOALIGN) || sx.stx_dio_offset_align == 0 || sx.stx_dio_mem_align == 0)
    return 0;
  direct_.reset(::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
  if (!direct_) return 0;
  mem_align_ = sx.stx_dio_mem_align;
  off_align_ = sx.stx_dio_offset_align;
  return 0;
}

int OutputFile::fd_for(uint64_t off, const void* addr, size_t len) const {
  if (!direct_ || len == 0) return buffered_.get();
  const auto a = reinterpret_cast<uintptr_t>(addr);
  if (off % off_align_ == 0 && len % off_align_ == 0 && a % mem_align_ == 0) return direct_.get();
  return buffered_.get();
}

int OutputFile::truncate(uint64_t len) const {
  return ::ftruncate(buffered_.get(), static_cast<off_t>(len)) == 0 ? 0 : errno;
}

Ring::~Ring() {
  if (ready_) io_uring_queue_exit(&ring_);
}

int Ring::init(unsigned entries) {
  const int rc = io_uring_queue_init(entries, &ring_, 0);
  if (rc < 0) return rc;
  ready_ = true;
  return 0;
}

int Ring::register_buffers(const std::vector<iovec>& bufs) {
  const int rc = io_uring_register_buffers(&ring_, bufs.data(), static_cast<unsigned>(bufs.size()));
  fixed_ = rc == 0;
  return rc;
}

io_uring_sqe* Ring::sqe() {
  io_uring_sqe* s = io_uring_get_sqe(&ring_);
  if (!s && io_uring_submit(&ring_) >= 0) s = io_uring_get_sqe(&ring_);
  return s;
}

bool Ring::write(uint64_t tag, int fd, const void* addr, size_t len, uint64_t off, int buf_index) {
  io_uring_sqe* s = sqe();
  if (!s) return false;
  if (fixed_)
    io_uring_prep_write_fixed(s, fd, addr, static_cast<unsigned>(len), off, buf_index);
  else
    io_uring_prep_write(s, fd, addr, static_cast<unsigned>(len), off);
  io_uring_sqe_set_data64(s, tag);
  return true;
}

bool Ring::poll(uint64_t tag, int fd, unsigned events) {
  io_uring_sqe* s = sqe();
  if (!s) return false;
  io_uring_prep_poll_add(s, fd, events);
  io_uring_sqe_set_data64(s, tag);
  return true;
}

bool Ring::read(uint64_t tag, int fd, void* buf, size_t len) {
  io_uring_sqe* s = sqe();
  if (!s) return false;
  io_uring_prep_read(s, fd, buf, static_cast<unsigned>(len), 0);
  io_uring_sqe_set_data64(s, tag);
  return true;
}

int Ring::wait(int timeout_ms, std::vector<std::pair<uint64_t, int>>* done) {
  done->clear();
  io_uring_cqe* cqe = nullptr;
  int rc;
  if (timeout_ms < 0) {
    rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc >= 0) rc = io_uring_peek_cqe(&ring_, &cqe);
  } else {
    __kernel_timespec ts{timeout_ms / 1000, (timeout_ms % 1000) * 1000000LL};
    rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
  }
  if (rc == -EINTR || rc == -ETIME || rc == -EAGAIN) return 0;  // nothing completed
  if (rc < 0) return rc;
  unsigned head, n = 0;
  io_uring_for_each_cqe(&ring_, head, cqe) {
    done->emplace_back(io_uring_cqe_get_data64(cqe), cqe->res);
    ++n;
  }
  io_uring_cq_advance(&ring_, n);
  return 0;
}

}  // namespace relayctl
