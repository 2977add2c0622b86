// Buffer: one relay channel buffer (one per CPU, or one for a global channel), held in its own
// sealed memfd and mapped by both the producer and the daemon.
#pragma once

#include "core/fd.h"
#include "core/geometry.h"
#include "core/layout.h"
#include "core/mapping.h"

namespace relayfs::core {

class Buffer {
 public:
  Buffer() = default;
  Buffer(Buffer&&) noexcept = default;
  Buffer& operator=(Buffer&&) noexcept = default;

  // Creates a buffer: a memfd sized by Layout::of(g), sealed against shrinking and growing,
  // mapped read-write, with an initialised, empty control area. The buffer is not started:
  // the first sub-buffer begins when a Producer opens it. name labels the memfd (cut to the 249
  // bytes memfd_create takes; nullptr: "relayfs-buffer"). Returns 0 or -errno (-ENOMEM,
  // -EMFILE, ... from memfd_create/ftruncate/mmap).
  static int create(const Geometry& g, const char* name, Buffer* out) noexcept;

  // Maps a buffer received as an fd. The fd must be exactly Layout::of(g).total_size bytes
  // and sealed against shrinking and growing, so that no later ftruncate by the other side
  // can turn an access into SIGBUS. prot is PROT_READ or PROT_READ | PROT_WRITE.
  // Returns 0, or -EINVAL (wrong size, missing seals, bad magic when check_header), -errno.
  static int attach(UniqueFd fd, const Geometry& g, int prot, bool check_header,
                    Buffer* out) noexcept;

  // Allocates every page of the buffer and maps it writable in this process now
  // (MADV_POPULATE_WRITE), as the kernel's relay_open allocates a channel's buffers: a
  // producer's writes then take no page fault (each one a few microseconds, and up to 2048 per
  // 8 MiB lap the first time round), and memory the machine cannot give fails here, with
  // -ENOMEM, instead of inside a write. Returns 0 (also on a kernel before 5.14, which lacks
  // the advice: the pages then come on first touch, as before), or -ENOMEM, -EFAULT, -EINTR.
  // For a writable mapping only.
  int populate() const noexcept;

  ShmHeader* header() const noexcept { return reinterpret_cast<ShmHeader*>(map_.bytes()); }
  SubbufMeta* meta() const noexcept {
    return reinterpret_cast<SubbufMeta*>(map_.bytes() + layout_.meta_offset);
  }
  char* data() const noexcept { return map_.bytes() + layout_.data_offset; }
  const Geometry& geometry() const noexcept { return geo_; }
  const Layout& layout() const noexcept { return layout_; }
  int fd() const noexcept { return fd_.get(); }
  bool valid() const noexcept { return map_.valid(); }

 private:
  UniqueFd fd_;
  Mapping map_;
  Geometry geo_;
  Layout layout_;
};

}  // namespace relayfs::core
