#include "core/geometry.h"

#include <unistd.h>

#include <cerrno>

#include "core/layout.h"

namespace relayfs::core {

namespace {

uint64_t round_up(uint64_t v, uint64_t to) {
  return (v + to - 1) / to * to;
}

int fail(int err, std::string* why, std::string msg) {
  if (why) *why = std::move(msg);
  return -err;
}

}  // namespace

size_t page_size() {
  static const size_t ps = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return ps;
}

int make_geometry(uint64_t subbuf_size, uint64_t n_subbufs, Geometry* out, std::string* why) {
  if (subbuf_size == 0) return fail(EINVAL, why, "subbuf_size is 0; it must be at least 1 byte");
  if (n_subbufs == 0) return fail(EINVAL, why, "n_subbufs is 0; it must be at least 1");
  if (subbuf_size > kMaxSubbufSize)
    return fail(EFBIG, why,
                "subbuf_size " + std::to_string(subbuf_size) + " is above the limit of " +
                    std::to_string(kMaxSubbufSize) + " bytes (1 GiB)");
  if (n_subbufs > kMaxSubbufs)
    return fail(EFBIG, why,
                "n_subbufs " + std::to_string(n_subbufs) + " is above the limit of " +
                    std::to_string(kMaxSubbufs));
  // Both factors are at most 2^30 and 2^16 here, so the product cannot overflow 64 bits.
  const uint64_t total = subbuf_size * n_subbufs;
  if (total > kMaxBufferBytes)
    return fail(EFBIG, why,
                "subbuf_size * n_subbufs = " + std::to_string(total) +
                    " bytes is above the per-buffer limit of " + std::to_string(kMaxBufferBytes) +
                    " bytes (1 GiB, the largest io_uring fixed buffer)");
  out->subbuf_size = static_cast<uint32_t>(subbuf_size);
  out->n_subbufs = static_cast<uint32_t>(n_subbufs);
  return 0;
}

Layout Layout::of(const Geometry& g) {
  const uint64_t ps = page_size();
  Layout l;
  l.meta_offset = round_up(sizeof(ShmHeader), kCacheLine);
  l.data_offset = round_up(l.meta_offset + uint64_t{g.n_subbufs} * sizeof(SubbufMeta), ps);
  l.total_size = l.data_offset + round_up(g.data_size(), ps);
  return l;
}

}  // namespace relayfs::core
