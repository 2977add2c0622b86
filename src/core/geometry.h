// Geometry of one relay buffer: sub-buffer size and count, their limits, and the
// layout of the shared-memory object that holds the buffer.
#pragma once

#include <relayfs/relay_fast.h>

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

// Ring arithmetic, the one place it is written. Sequence numbers count sub-buffers from 0 (until a
// reset): sub-buffer seq of a buffer of n sub-buffers of size bytes lives in slot seq % n during
// lap seq / n, and its slot's commit counter (layout.h, SubbufMeta::commit) runs from lap * size
// when the lap begins to (lap + 1) * size when every byte of it is committed. Inline and
// constexpr: the producer's fast path uses them.
inline constexpr uint32_t slot_of(uint64_t seq, uint32_t n) noexcept {
  return static_cast<uint32_t>(seq % n);
}
inline constexpr uint64_t lap_base(uint64_t seq, uint32_t n, uint32_t size) noexcept {
  return seq / n * size;
}
// The commit-counter value of a complete sub-buffer seq.
inline constexpr uint64_t lap_end(uint64_t seq, uint32_t n, uint32_t size) noexcept {
  return lap_base(seq, n, size) + size;
}
// Where slot's bytes start in the data area.
inline constexpr uint64_t slot_offset(uint32_t slot, uint32_t size) noexcept {
  return RELAY_FAST_SLOT_OFFSET(slot, size);  // relay_fast.h: the inline relay_write's rule too
}
// The oldest sub-buffer whose slot the writer has not begun to reuse, once it has switched away
// from `produced` sub-buffers and begun the next one (produced >= n): where a lapped reader goes
// on, as the kernel's relay does.
inline constexpr uint64_t oldest_unlapped(uint64_t produced, uint32_t n) noexcept {
  return produced - n + 1;
}

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
