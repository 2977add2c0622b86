// Shared helpers for the core tests: a buffer with its producer and consumer, and the spec's
// example subbuf_start callbacks.
#pragma once

#include <doctest/doctest.h>
#include <sys/mman.h>

#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/consumer.h"
#include "core/producer.h"

namespace relayfs::test {

enum class Mode { kNoOverwrite, kOverwrite };

// The spec's two example callbacks, generalised to a header of `header` bytes: with header >= 4
// the previous sub-buffer's padding is stored in its first 4 bytes (exactly the spec's example);
// with header >= 12 a switch counter is also stored at bytes 4..11 of the new sub-buffer.
struct SpecHook {
  Mode mode = Mode::kNoOverwrite;
  uint32_t header = 0;
  uint64_t switches = 0;
  uint64_t calls = 0;
  uint64_t calls_with_null_prev = 0;

  static bool start(void* ctx, core::Producer& p, void* subbuf, void* prev, uint32_t prev_padding) {
    auto* h = static_cast<SpecHook*>(ctx);
    ++h->calls;
    if (!prev) ++h->calls_with_null_prev;
    if (h->header >= 4 && prev) std::memcpy(prev, &prev_padding, 4);
    if (h->mode == Mode::kNoOverwrite && p.buf_full()) return false;
    if (h->header >= 12) {
      ++h->switches;
      std::memcpy(static_cast<char*>(subbuf) + 4, &h->switches, 8);
    }
    if (h->header) p.subbuf_start_reserve(h->header);
    return true;
  }

  core::ProducerHooks hooks() {
    core::ProducerHooks hk;
    hk.subbuf_start = &SpecHook::start;
    hk.ctx = this;
    return hk;
  }
};

// A buffer, created here, with a producer and a consumer on it.
// Every byte lost and counted, in bytes (relay(7) "Losses").
inline uint64_t lost_bytes(const core::BufferStats& st) {
  return st.lost_uncommitted + st.lost_overrun_bytes + st.lost_reset_bytes +
         st.lost_readahead_bytes + st.lost_expired_bytes;
}

// The books balance: every byte produced is consumed, still unread, or counted lost.
inline bool balanced(const core::BufferStats& st) {
  return st.bytes_produced == st.bytes_consumed + st.bytes_unread + lost_bytes(st);
}

struct Rig {
  core::Buffer buf;
  std::unique_ptr<core::Producer> prod;
  std::unique_ptr<core::Consumer> cons;

  Rig(uint32_t subbuf_size, uint32_t n_subbufs, const core::ProducerHooks& hooks = {}) {
    core::Geometry g;
    REQUIRE(core::make_geometry(subbuf_size, n_subbufs, &g) == 0);
    REQUIRE(core::Buffer::create(g, "relayfs-test", &buf) == 0);
    prod = std::make_unique<core::Producer>(buf, hooks);
    cons = std::make_unique<core::Consumer>(buf);
  }

  // Everything readable now, in reads of `chunk` bytes.
  std::string drain(size_t chunk = 1 << 16) {
    std::string out;
    std::vector<char> tmp(chunk);
    for (;;) {
      const ssize_t n = cons->read(tmp.data(), tmp.size());
      REQUIRE(n >= 0);
      if (n == 0) return out;
      out.append(tmp.data(), static_cast<size_t>(n));
    }
  }

  int write(const std::string& s) { return prod->write(s.data(), s.size()); }
};

// A T in anonymous shared memory, which a forked child shares with its parent. T's members are
// what both sides use (atomics, counters); the owner destroys and unmaps it.
template <class T>
class SharedAnon {
 public:
  SharedAnon() {
    void* m = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(m != MAP_FAILED);
    p_ = new (m) T();
  }
  SharedAnon(const SharedAnon&) = delete;
  SharedAnon& operator=(const SharedAnon&) = delete;
  ~SharedAnon() {
    p_->~T();
    ::munmap(p_, sizeof(T));
  }
  T* get() const { return p_; }
  T* operator->() const { return p_; }

 private:
  T* p_ = nullptr;
};

}  // namespace relayfs::test
