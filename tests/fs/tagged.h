// Self-describing records for the soak and fault tests: each record says who wrote it (producer,
// channel, buffer, writer thread), its sequence number in that writer's stream, its length, and
// a checksum over all of it, so a reader can tell an intact record from a torn, foreign or
// repeated one without knowing anything else. Used by producer processes and by readers alike:
// no doctest here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace relayfs::test {

struct TaggedHeader {
  uint32_t magic;
  uint32_t len;       // whole record, header included
  uint32_t producer;  // producer process number
  uint32_t channel;   // channel number, unique in a run
  uint32_t buffer;    // the buffer (CPU) it was written to
  uint32_t thread;    // writer thread number in its producer
  uint64_t seq;       // sequence number in (channel, thread): 0, 1, 2, ... for committed records
  uint64_t sum;       // checksum of the record with this field zero
};
static_assert(sizeof(TaggedHeader) == 40);

inline constexpr uint32_t kTaggedMagic = 0x54414752;  // "RGAT"
inline constexpr size_t kTaggedMin = sizeof(TaggedHeader);

// 64-bit mix over the record, 8 bytes at a time (FNV-style with a multiply-xorshift finish).
inline uint64_t tagged_sum(const char* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull ^ n;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * 0x100000001b3ull;
    h ^= h >> 29;
  }
  for (; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ull;
  return h ^ (h >> 31);
}

// Fills out[0 .. h.len) with the record h describes: the header, then bytes derived from it.
inline void tagged_make(TaggedHeader h, char* out) {
  h.magic = kTaggedMagic;
  h.sum = 0;
  std::memcpy(out, &h, sizeof h);
  uint64_t x = h.seq * 0x9e3779b97f4a7c15ull + h.channel * 131u + h.thread + 1;
  for (size_t i = sizeof h; i < h.len; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    out[i] = static_cast<char>(x);
  }
  const uint64_t s = tagged_sum(out, h.len);
  std::memcpy(out + offsetof(TaggedHeader, sum), &s, sizeof s);
}

// Checks the record at p with n bytes available. Returns its length if it is whole and intact
// (*h filled), 0 if more bytes are needed to tell, -1 if it is not a valid record.
inline long tagged_check(const char* p, size_t n, TaggedHeader* h) {
  if (n < sizeof(TaggedHeader)) return 0;
  std::memcpy(h, p, sizeof *h);
  if (h->magic != kTaggedMagic || h->len < sizeof(TaggedHeader) || h->len > (64u << 20))
    return -1;
  if (n < h->len) return 0;
  thread_local std::string copy;  // reused: no allocation per record
  copy.assign(p, h->len);
  std::memset(copy.data() + offsetof(TaggedHeader, sum), 0, sizeof(uint64_t));
  return tagged_sum(copy.data(), h->len) == h->sum ? static_cast<long>(h->len) : -1;
}

}  // namespace relayfs::test
