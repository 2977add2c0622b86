// Mapping: the one owner of an mmap()ed region.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <utility>

namespace relayfs::core {

// Move-only owner of a memory mapping; unmaps on destruction.
class Mapping {
 public:
  Mapping() = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping(Mapping&& o) noexcept
      : addr_(std::exchange(o.addr_, nullptr)),
        len_(std::exchange(o.len_, 0)),
        outer_(std::exchange(o.outer_, nullptr)),
        outer_len_(std::exchange(o.outer_len_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept {
    if (this != &o) {
      reset();
      addr_ = std::exchange(o.addr_, nullptr);
      len_ = std::exchange(o.len_, 0);
      outer_ = std::exchange(o.outer_, nullptr);
      outer_len_ = std::exchange(o.outer_len_, 0);
    }
    return *this;
  }
  ~Mapping() { reset(); }

  // Maps len bytes of fd (shared) at offset 0, between two inaccessible guard pages: an access
  // just outside the object faults at once instead of reading a neighbour's memory.
  // Returns 0 or -errno.
  static int map(int fd, size_t len, int prot, Mapping* out) noexcept;

  void* get() const noexcept { return addr_; }
  char* bytes() const noexcept { return static_cast<char*>(addr_); }
  size_t size() const noexcept { return len_; }
  bool valid() const noexcept { return addr_ != nullptr; }

  void reset() noexcept {
    if (outer_) ::munmap(outer_, outer_len_);
    addr_ = outer_ = nullptr;
    len_ = outer_len_ = 0;
  }

 private:
  void* addr_ = nullptr;  // the object
  size_t len_ = 0;
  void* outer_ = nullptr;  // the object and its guard pages: what we unmap
  size_t outer_len_ = 0;
};

}  // namespace relayfs::core
