// What any reader can prove of the sub-buffer being written: the longest prefix whose records
// are all committed. The one definition of "committed" that bytes_produced rests on, for the
// daemon's consumer (st_size, user.relayfs.bytes_produced) and for the library's
// relay_buf_stats alike: a reserved record counts once it is committed, never before.
//
// Everything is read from the shared control area and only compared: never an address.
#pragma once

#include <cstdint>

#include "core/layout.h"

namespace relayfs::core {

// The committed prefix of sub-buffer seq (in slot, whose lap starts at commit value base), as the
// shared area shows it now: the writers' own bound (`ready`) and, when current is set (seq is the
// sub-buffer being written), the reader's proof that nothing is in flight (the commit count
// equals the reserved offset). Between 0 and size.
uint32_t committed_prefix(const ShmHeader& h, const SubbufMeta& m, uint32_t size, uint64_t seq,
                          uint32_t slot, uint64_t base, bool current) noexcept;

// Bytes committed into the buffer so far: the closed sub-buffers' bytes (padding excluded) plus
// the committed prefix of the one being written, or at least known_prefix of it if that one is
// sub-buffer known_seq (what a reader proved of it before). The closed bytes and the current
// sub-buffer are read as one state: a switch stores the new closed total before it moves
// `produced`, holding the busy word, so a pair read across it would count the closed sub-buffer
// twice; such a read is taken again. While a switch stays busy (its writer was killed holding
// it), the closed total alone is returned: a count that may be short, never long.
uint64_t committed_bytes(const ShmHeader& h, const SubbufMeta* meta, uint32_t size, uint32_t n,
                         uint64_t known_seq = ~uint64_t{0}, uint32_t known_prefix = 0) noexcept;

}  // namespace relayfs::core
