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
  Mapping(void* addr, size_t len) noexcept : addr_(addr), len_(len) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping(Mapping&& o) noexcept : addr_(std::exchange(o.addr_, nullptr)), len_(std::exchange(o.len_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept {
    if (this != &o) {
      reset();
      addr_ = std::exchange(o.addr_, nullptr);
      len_ = std::exchange(o.len_, 0);
    }
    return *this;
  }
  ~Mapping() { reset(); }

  // Maps len bytes of fd at offset 0. Returns 0 or -errno.
  static int map(int fd, size_t len, int prot, Mapping* out) noexcept;

  void* get() const noexcept { return addr_; }
  char* bytes() const noexcept { return static_cast<char*>(addr_); }
  size_t size() const noexcept { return len_; }
  bool valid() const noexcept { return addr_ != nullptr; }

  void reset() noexcept {
    if (addr_) ::munmap(addr_, len_);
    addr_ = nullptr;
    len_ = 0;
  }

 private:
  void* addr_ = nullptr;
  size_t len_ = 0;
};

}  // namespace relayfs::core
