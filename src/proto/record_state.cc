#include "proto/record_state.h"

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace relayfs::proto {

namespace {

constexpr const char* kMagic = "relayfs-record-state 1";

// FNV-1a over the line before its checksum.
uint64_t checksum(const char* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ull;
  return h;
}

}  // namespace

std::string format_record_state(const RecordState& s) {
  char line[kRecordStateSize];
  int n = std::snprintf(line, sizeof line,
                        "%s stream=%" PRIu64 " buffer=%" PRIu32 " subbuf=%" PRIu32 " n=%" PRIu32 " gen=%" PRIu32
                        " seq=%" PRIu64 " position=%" PRIu64 " exact=%d offset=%" PRIu64,
                        kMagic, s.stream, s.buffer, s.subbuf_size, s.n_subbufs, s.gen, s.seq, s.position,
                        s.exact ? 1 : 0, s.offset);
  // At most 22 + 8 * 20 digits and the names: well within the line, with the checksum.
  const uint64_t sum = checksum(line, static_cast<size_t>(n));
  n += std::snprintf(line + n, sizeof line - static_cast<size_t>(n), " sum=%016" PRIx64, sum);
  std::string out(line, static_cast<size_t>(n));
  out.resize(kRecordStateSize - 1, ' ');
  out.push_back('\n');
  return out;
}

int parse_record_state(const char* p, size_t len, RecordState* out) {
  if (len == 0) return -ENODATA;
  if (len != kRecordStateSize) return -EINVAL;
  char line[kRecordStateSize + 1];
  std::memcpy(line, p, len);
  line[len] = '\0';
  if (std::strlen(line) != len) return -EINVAL;  // a NUL inside
  RecordState s;
  int exact = 0;
  // sscanf only to pick the numbers out; whether the text is exactly what format_record_state
  // writes for them (no sign, no leading zero, no space too many, the right checksum) is decided
  // by writing it again and comparing.
  if (std::sscanf(line,
                  "relayfs-record-state 1 stream=%" SCNu64 " buffer=%" SCNu32 " subbuf=%" SCNu32 " n=%" SCNu32
                  " gen=%" SCNu32 " seq=%" SCNu64 " position=%" SCNu64 " exact=%d offset=%" SCNu64,
                  &s.stream, &s.buffer, &s.subbuf_size, &s.n_subbufs, &s.gen, &s.seq, &s.position, &exact,
                  &s.offset) != 9 ||
      (exact != 0 && exact != 1))
    return -EINVAL;
  s.exact = exact == 1;
  if (format_record_state(s) != std::string(p, len)) return -EINVAL;
  *out = s;
  return 0;
}

}  // namespace relayfs::proto
