// Framed, self-checking records for the shipping tests (ship_test.cc): producer threads that
// write numbered records of varied lengths, each with a checksum, and remember every record the
// channel refused; and a checker that walks a buffer's bytes record by record and proves every
// record whole, in order per thread within the buffer, and once over all buffers.
#pragma once

#include <doctest/doctest.h>
#include <relayfs/relay.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace relayfs::test {

inline constexpr uint32_t kFrameMagic = 0x52464c59;  // "YLFR"
inline constexpr size_t kFrameHead = 24;             // magic, length, thread, 0, counter
inline constexpr size_t kFrameTail = 8;              // checksum

inline uint64_t frame_sum(const char* p, size_t n) {  // FNV-1a
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 1099511628211ull;
  return h;
}

// Record `counter` of `thread`: 32 to 32 + spread bytes, its length varying with the counter.
inline std::string frame(uint32_t thread, uint64_t counter, size_t spread = 200) {
  const uint32_t len = static_cast<uint32_t>(kFrameHead + kFrameTail +
                                             (spread ? (counter * 7919 + thread * 31) % spread : 0));
  std::string r(len, '\0');
  const uint32_t head[4] = {kFrameMagic, len, thread, 0};
  std::memcpy(r.data(), head, sizeof head);
  std::memcpy(r.data() + 16, &counter, 8);
  for (size_t i = kFrameHead; i < len - kFrameTail; ++i)
    r[i] = static_cast<char>('a' + (counter + i) % 26);
  const uint64_t sum = frame_sum(r.data(), len - kFrameTail);
  std::memcpy(r.data() + len - kFrameTail, &sum, 8);
  return r;
}

// Threads writing frames into a channel, each up to per_thread records or until stop();
// dropped[t] holds the counters relay_write refused, count[t] how many thread t tried.
// pace > 0: about that many records per millisecond per thread, so that they go on while a
// test does things to the reader.
class FramedProducers {
 public:
  FramedProducers(rchan* c, int threads, uint64_t per_thread, uint32_t first_thread = 0,
                  unsigned pace = 0, size_t spread = 200)
      : dropped(threads), count(threads), first_(first_thread) {
    for (int t = 0; t < threads; ++t)
      threads_.emplace_back([this, c, t, per_thread, pace, spread] {
        for (uint64_t i = 0; i < per_thread && !stop_.load(std::memory_order_relaxed); ++i) {
          const std::string r = frame(first_ + t, i, spread);
          if (relay_write(c, r.data(), r.size()) != 0) dropped[t].insert(i);
          count[t] = i + 1;
          if (pace && i % pace == pace - 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
      });
  }
  ~FramedProducers() { join(); }
  void stop() { stop_.store(true, std::memory_order_relaxed); }
  void join() {
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  // Every record that relay_write took: (thread, counter). After join().
  std::set<std::pair<uint32_t, uint64_t>> accepted() const {
    std::set<std::pair<uint32_t, uint64_t>> out;
    for (size_t t = 0; t < dropped.size(); ++t)
      for (uint64_t i = 0; i < count[t]; ++i)
        if (!dropped[t].count(i)) out.emplace(first_ + static_cast<uint32_t>(t), i);
    return out;
  }
  uint64_t drops() const {
    uint64_t n = 0;
    for (const auto& d : dropped) n += d.size();
    return n;
  }
  uint64_t tried() const {
    uint64_t n = 0;
    for (auto c : count) n += c;
    return n;
  }
  std::vector<std::set<uint64_t>> dropped;
  std::vector<uint64_t> count;

 private:
  uint32_t first_;
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

// What a set of buffers' bytes held.
struct FrameCheck {
  std::map<std::pair<uint32_t, uint64_t>, int> seen;  // (thread, counter) -> times
  std::vector<std::string> errors;                    // torn or out-of-order records
  uint64_t records = 0;

  // One buffer's bytes, as read(2) gives them: whole frames one after another, and each thread's
  // counters increasing within it.
  void buffer(const std::string& bytes, const std::string& name) {
    std::map<uint32_t, uint64_t> last;
    size_t at = 0;
    while (at < bytes.size()) {
      uint32_t head[4];
      if (bytes.size() - at < kFrameHead + kFrameTail) {
        errors.push_back(name + ": a torn record at byte " + std::to_string(at));
        return;
      }
      std::memcpy(head, bytes.data() + at, sizeof head);
      const uint32_t len = head[1];
      if (head[0] != kFrameMagic || len < kFrameHead + kFrameTail || len > bytes.size() - at) {
        errors.push_back(name + ": no record at byte " + std::to_string(at));
        return;
      }
      uint64_t counter, sum;
      std::memcpy(&counter, bytes.data() + at + 16, 8);
      std::memcpy(&sum, bytes.data() + at + len - kFrameTail, 8);
      if (sum != frame_sum(bytes.data() + at, len - kFrameTail)) {
        errors.push_back(name + ": a damaged record at byte " + std::to_string(at));
        return;
      }
      auto it = last.find(head[2]);
      if (it != last.end() && counter <= it->second)
        errors.push_back(name + ": thread " + std::to_string(head[2]) + " record " +
                         std::to_string(counter) + " after " + std::to_string(it->second));
      last[head[2]] = counter;
      ++seen[{head[2], counter}];
      ++records;
      at += len;
    }
  }

  // Every accepted record exactly once, and nothing else.
  void expect(const std::set<std::pair<uint32_t, uint64_t>>& accepted) const {
    for (const auto& e : errors) FAIL_CHECK(e);
    uint64_t missing = 0, twice = 0, strange = 0;
    for (const auto& a : accepted) {
      auto it = seen.find(a);
      if (it == seen.end())
        ++missing;
      else if (it->second > 1)
        ++twice;
    }
    for (const auto& [k, n] : seen)
      if (!accepted.count(k)) ++strange;
    CHECK(missing == 0);
    CHECK(twice == 0);
    CHECK(strange == 0);
    CHECK(records == accepted.size());
  }
};

}  // namespace relayfs::test
