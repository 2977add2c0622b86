// The disk side of relayctl record: one io_uring that writes channel buffers' sub-buffers to
// output files straight from the reader mappings, and the output files themselves.
//
// Fixed buffers: every reader mapping is offered to io_uring_register_buffers, so writes can be
// IORING_OP_WRITE_FIXED with no page lookup per write. The kernel pins registered buffers for
// writing (FOLL_WRITE), and a reader's mapping is read-only, so a kernel that refuses (EFAULT,
// as 6.x does) gets IORING_OP_WRITE from the same mapping instead: either way the kernel takes
// the bytes from the shared buffer itself, with no copy through user space.
//
// O_DIRECT: a write goes through the file's O_DIRECT descriptor when the filesystem supports
// direct I/O (statx STATX_DIOALIGN) and the write's file offset, length and memory address are
// all multiples of its alignment; otherwise through the page cache. Padding removal makes most
// lengths unaligned, so in practice only channels whose records fill sub-buffers exactly (say
// 4 KiB records in 256 KiB sub-buffers) stay direct.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/fd.h"

namespace relayctl {

// An output file: a buffered descriptor, and an O_DIRECT one where the filesystem has direct
// I/O. Created (truncated) by open().
class OutputFile {
 public:
  // Returns 0 or an errno.
  int open(const std::string& path, bool allow_direct);
  // The descriptor to write len bytes from addr at offset off with, by the rule above.
  int fd_for(uint64_t off, const void* addr, size_t len) const;
  // Cuts the file back to len bytes (a lapped sub-buffer's bytes are taken back). 0 or errno.
  int truncate(uint64_t len) const;
  bool direct_capable() const { return direct_.valid(); }
  int buffered_fd() const { return buffered_.get(); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  relayfs::core::UniqueFd buffered_, direct_;
  uint32_t mem_align_ = 0, off_align_ = 0;
};

// The ring. One owner; every submission carries a 64-bit tag the caller decodes.
class Ring {
 public:
  Ring() = default;
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;
  ~Ring();

  // Returns 0 or -errno.
  int init(unsigned entries);
  // Registers the buffers; returns 0 or -errno (the ring then writes without fixed buffers).
  int register_buffers(const std::vector<iovec>& bufs);
  bool fixed() const { return fixed_; }

  // Queue a write of len bytes at addr (inside registered buffer buf_index when fixed()) to fd at
  // off; a poll for events on fd; a read into buf. Return false if the submission queue is full
  // even after submitting what it held.
  bool write(uint64_t tag, int fd, const void* addr, size_t len, uint64_t off, int buf_index);
  bool poll(uint64_t tag, int fd, unsigned events);
  bool read(uint64_t tag, int fd, void* buf, size_t len);

  // Submits what is queued and waits for at least one completion, at most timeout_ms (-1: no
  // limit). Fills done with (tag, res) pairs, empty after a timeout or a signal. Returns 0 or
  // -errno.
  int wait(int timeout_ms, std::vector<std::pair<uint64_t, int>>* done);

 private:
  io_uring_sqe* sqe();
  io_uring ring_{};
  bool ready_ = false;
  bool fixed_ = false;
};

}  // namespace relayctl
