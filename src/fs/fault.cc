#include "fs/fault.h"

#include <cstring>

namespace relayfs::fs {

bool load_faults(const char* spec) noexcept {
  static constexpr struct {
    const char* name;
    Fault fault;
  } kNames[] = {
      {"notify_alloc", Fault::kNotifyAlloc},
      {"reply_fail", Fault::kReplyFail},
      {"index_hold", Fault::kIndexHold},
      {"index_stall", Fault::kIndexStall},
      {"park_delay", Fault::kParkDelay},
      {"die_after_reply", Fault::kDieAfterReply},
      {"record_crash", Fault::kRecordCrash},
      {"open_reply_delay", Fault::kOpenReplyDelay},
      {"slow_control_xattr", Fault::kSlowControlXattr},
  };
  uint32_t mask = 0;
  for (const char* p = spec; p && *p;) {
    const char* end = std::strchr(p, ',');
    const size_t len = end ? static_cast<size_t>(end - p) : std::strlen(p);
    bool known = false;
    for (const auto& n : kNames)
      if (std::strlen(n.name) == len && std::strncmp(n.name, p, len) == 0) {
        mask |= static_cast<uint32_t>(n.fault);
        known = true;
      }
    if (!known && len != 0) return false;
    p = end ? end + 1 : nullptr;
  }
  detail::g_faults.store(mask, std::memory_order_relaxed);
  return true;
}

}  // namespace relayfs::fs
