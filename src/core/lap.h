// Has the writer begun reusing the slot of a sub-buffer? (lap.cc)
#pragma once

#include <cstdint>

#include "core/layout.h"

namespace relayfs::core {

enum class Reuse { kNo, kYes, kMaybe };

// For sub-buffer seq of a buffer of n sub-buffers whose writer has produced `produced`: kNo if
// its bytes are still the ones written in its lap, kYes if the writer has begun overwriting them,
// kMaybe if a switch into its slot is being decided right now and did not settle in a few
// microseconds.
Reuse slot_reused(const ShmHeader& h, uint32_t n, uint64_t seq, uint64_t produced) noexcept;

}  // namespace relayfs::core
