// Geometry of one relay buffer: sub-buffer size and count, their limits, and the
// layout of the shared-memory object that holds the buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace relayfs::core {

// Limits, and why each is what it is.
//
// kMaxSubbufSize: a sub-buffer offset lives in the low 32 bits of the position word
//   (layout.h), and two values above every valid offset mark "switching" and "stopped".
//   1 GiB keeps offset + record length far from overflow.
// kMaxSubbufs: the sub-buffer index lives in 16 bits of the position word.
// kMaxBufferBytes: the daemon registers each buffer's data area with io_uring as one fixed
//   buffer, and the kernel refuses fixed buffers above 1 GiB.
// The smallest geometry is one sub-buffer of one byte: legal, as in the kernel, though the
// spec warns that a single sub-buffer either loses or overwrites data.
inline constexpr uint64_t kMaxSubbufSize = uint64_t{1} << 30;
inline constexpr uint64_t kMaxSubbufs = uint64_t{1} << 16;
inline constexpr uint64_t kMaxBufferBytes = uint64_t{1} << 30;

struct Geometry {
  uint32_t subbuf_size = 0;
  uint32_t n_subbufs = 0;

  uint64_t data_size() const { return uint64_t{subbuf_size} * n_subbufs; }
  bool operator==(const Geometry&) const = default;
};

// Checks a requested geometry. Returns 0 and fills *out, or:
//   -EINVAL  a size is zero;
//   -EFBIG   a size, or their product, is above the limits above.
// When why is not null it receives a sentence naming the offending value and the limit.
int make_geometry(uint64_t subbuf_size, uint64_t n_subbufs, Geometry* out,
                  std::string* why = nullptr);

// Where things sit inside a buffer's shared-memory object. Every offset is page aligned, so
// the data area can be mapped, registered with io_uring or handed to O_DIRECT on its own.
struct Layout {
  uint64_t meta_offset = 0;  // SubbufMeta[n_subbufs]
  uint64_t data_offset = 0;  // n_subbufs * subbuf_size bytes
  uint64_t total_size = 0;   // size of the memfd

  static Layout of(const Geometry& g);
};

size_t page_size();

}  // namespace relayfs::core
