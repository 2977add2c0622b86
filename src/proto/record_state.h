// The state file of a recording (relayctl record): where the output of one buffer stands in the
// buffer's byte stream, so that a recording cut off by a daemon restart goes on exactly where it
// left off (relayctl record --resume). relayctl creates it beside the output (BASE0.state for
// BASE0) and passes it to the daemon, which rewrites it, whole, at offset 0, after each extent
// reached the output and before it consumes the extent (src/fs/record.cc). So whatever moment the
// daemon dies at, the state is true of the output: its first `offset` bytes are the recording,
// and the next byte to record is stream byte `position`. Bytes past `offset` are not part of it
// (a write the daemon did not live to account for); a resume cuts them off.
//
// One line of text, padded with spaces to kRecordStateSize bytes, with a checksum: a state that
// is torn, edited or not a state at all is refused, never half believed. Both sides read the
// other's values as untrusted: the daemon checks a resume against the buffer, relayctl parses
// strictly (parse_record_state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace relayfs::proto {

inline constexpr size_t kRecordStateSize = 256;

struct RecordState {
  uint64_t stream = 0;        // the buffer: its memfd's inode number, the same across daemons
  uint32_t buffer = 0;        // its index in the channel (the CPU), as the index names it
  uint32_t subbuf_size = 0;   // its geometry, for the reader of the file
  uint32_t n_subbufs = 0;
  uint32_t gen = 0;           // the reset generation, and the sub-buffer the reader is in:
  uint64_t seq = 0;           //   informational (position says where the recording is)
  uint64_t position = 0;      // the stream position (bytes_produced's units) the output ends at
  bool exact = false;         // false: position is a lower bound (overwrite mode, lapped)
  uint64_t offset = 0;        // bytes of the output that are the recording
};

// The state as its file holds it: exactly kRecordStateSize bytes, ending in a newline.
std::string format_record_state(const RecordState& s);

// Parses a state file's contents. Returns 0; -ENODATA if it is empty (nothing was recorded
// yet); -EINVAL if it is not exactly what format_record_state writes (torn, edited, foreign).
int parse_record_state(const char* p, size_t len, RecordState* out);

}  // namespace relayfs::proto
