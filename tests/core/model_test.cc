// The core against a reference model of the kernel relay semantics, written here from the spec
// (relay.txt) and the kernel read algorithm, not from the implementation. Randomised
// single-threaded sequences of writes, reserves, commits, flushes, resets, consumes and reads of
// random sizes run against both; every read must match byte for byte, and so must every return
// code and counter.
//
// The model is the kernel's: one memory array, produced/consumed sub-buffer counts, the writer's
// offset with S + 1 meaning "stopped", padding per sub-buffer. relayfs adds commit tracking for
// reserve/commit, with these documented rules (producer.h), which the model states directly:
//  - a closed sub-buffer with no record in flight is readable to its padding;
//  - otherwise a sub-buffer is readable up to its "proven" prefix, which grows when
//      the sub-buffer begins (its header),
//      a record is committed where the proven prefix ends (in-order commit: up to its end),
//      a record of the current sub-buffer is committed and none is left in flight there, or a
//      reader finds none in flight there (up to the writer's offset);
//  - a switch into a slot whose last lap still has a record in flight is refused (lost_wrap, or
//    lost_full if the buffer is also full and the hook has never switched into a full buffer,
//    i.e. in no-overwrite mode) without calling the hook.
#include <doctest/doctest.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "core/rseq.h"
#include "harness.h"

using namespace relayfs;
using test::Mode;
using test::SpecHook;

namespace {

class KernelModel {
 public:
  KernelModel(uint32_t S, uint32_t n, Mode mode, uint32_t header)
      : S_(S), n_(n), mode_(mode), header_(header), mem_(uint64_t{S} * n, 0), padding_(n, 0) {
    reset();
  }

  uint64_t lost_full = 0, lost_too_big = 0, lost_wrap = 0, hook_calls = 0, overruns = 0;

  int write(const std::vector<uint8_t>& d) {
    int h = -1;
    const int rc = reserve(static_cast<uint32_t>(d.size()), &h);
    if (rc == 0) commit(h, d);
    return rc;
  }

  // Reserves; on success returns 0 and a handle to commit later.
  int reserve(uint32_t len, int* handle) {
    int rc = place(len);
    if (rc == 0) {
      *handle = next_handle_++;
      open_[*handle] = Open{produced_, offset_ - len, len};
    }
    return rc;
  }

  void commit(int handle, const std::vector<uint8_t>& d) {
    const Open o = open_.at(handle);
    std::memcpy(&mem_[(o.seq % n_) * S_ + o.start], d.data(), d.size());
    open_.erase(handle);
    uint64_t& proven = proven_[o.seq];
    const bool current = o.seq == produced_ && !stopped_;
    if (current && first_open(o.seq) == kNone)
      proven = offset_;
    else if (proven == o.start)
      proven = o.start + o.len;
  }

  void flush() {  // relay_flush: relay_switch_subbuf(buf, 0)
    switch_subbuf(0);
  }

  void reset() {
    produced_ = consumed_ = 0;
    bytes_consumed_ = 0;
    std::fill(padding_.begin(), padding_.end(), 0);
    prev_padding_ = 0;
    prev_slot_ = 0;
    stopped_ = false;
    cur_slot_ = 0;
    offset_ = 0;
    hook_header_ = 0;
    proven_.clear();
    hook(0, nullptr, 0);  // called at open; its answer is ignored
    offset_ = std::min(hook_header_, S_);
    proven_[0] = offset_;
  }

  void subbufs_consumed(uint64_t k) {
    const uint64_t step = std::min(k, produced_ - consumed_);
    if (step == 0) return;
    consumed_ += step;
    bytes_consumed_ = 0;
  }

  std::vector<uint8_t> read(size_t count) {
    std::vector<uint8_t> out;
    while (count > 0) {
      // Normalise the read position (the kernel's read_avail and consume).
      uint64_t end = 0;
      uint64_t limit = 0;
      bool closed = false;
      for (;;) {
        // Lapped: the writer has begun reusing the slot of the sub-buffer we would read. With
        // produced - consumed == n that is so only if the writer is not stopped (a stopped
        // writer has not begun the next sub-buffer). Resume at the oldest intact sub-buffer.
        const uint64_t ahead = produced_ - consumed_;
        if (ahead > n_ || (ahead == n_ && !stopped_)) {
          overruns += produced_ - n_ + 1 - consumed_;
          consumed_ = produced_ - n_ + 1;
          bytes_consumed_ = 0;
        }
        if (consumed_ < produced_) {
          end = S_ - padding_[consumed_ % n_];
          if (bytes_consumed_ >= end) {
            ++consumed_;
            bytes_consumed_ = 0;
            continue;
          }
          closed = true;
          limit =
              first_open(consumed_) == kNone ? end : std::min<uint64_t>(end, proven_[consumed_]);
        } else if (!stopped_) {
          if (first_open(produced_) == kNone) proven_[produced_] = offset_;  // the reader's proof
          limit = proven_[produced_];
        }
        break;
      }
      if (limit <= bytes_consumed_) break;
      const uint64_t take = std::min<uint64_t>(count, limit - bytes_consumed_);
      const uint8_t* from = &mem_[(consumed_ % n_) * S_ + bytes_consumed_];
      out.insert(out.end(), from, from + take);
      bytes_consumed_ += take;
      count -= take;
      if (closed && bytes_consumed_ >= end) {
        ++consumed_;
        bytes_consumed_ = 0;
      }
    }
    return out;
  }

  uint64_t produced() const { return produced_; }
  uint64_t consumed() const { return consumed_; }
  bool has_open() const { return !open_.empty(); }
  size_t n_open() const { return open_.size(); }
  std::vector<int> open_handles() const {
    std::vector<int> v;
    for (auto& [h, o] : open_) v.push_back(h);
    return v;
  }
  uint32_t open_len(int h) const { return open_.at(h).len; }

 private:
  struct Open {
    uint64_t seq;
    uint64_t start;
    uint32_t len;
  };

  bool buf_full() const { return produced_ - consumed_ >= n_; }

  // The spec's example callback (see SpecHook), on the model's memory.
  bool hook(uint64_t slot, const uint64_t* prev_slot, uint32_t prev_padding) {
    ++hook_calls;
    hook_header_ = 0;
    if (header_ >= 4 && prev_slot) std::memcpy(&mem_[*prev_slot * S_], &prev_padding, 4);
    if (mode_ == Mode::kNoOverwrite && buf_full()) return false;
    if (header_ >= 12) {
      ++switches_;
      std::memcpy(&mem_[slot * S_ + 4], &switches_, 8);
    }
    hook_header_ = header_;
    return true;
  }

  static constexpr uint64_t kNone = ~uint64_t{0};

  uint64_t first_open(uint64_t seq) const {
    uint64_t m = kNone;
    for (auto& [h, o] : open_)
      if (o.seq == seq) m = std::min(m, o.start);
    return m;
  }

  bool slot_has_open(uint64_t slot) const {
    for (auto& [h, o] : open_)
      if (o.seq % n_ == slot) return true;
    return false;
  }

  // relay_write / relay_reserve: place len bytes at the writer's offset, switching if needed.
  int place(uint32_t len) {
    if (len == 0) return -EINVAL;
    if (len > S_) {
      ++lost_too_big;
      return -EMSGSIZE;
    }
    if (stopped_ || offset_ + len > S_) {
      int rc = switch_subbuf(len);
      if (rc) return rc;
    }
    offset_ += len;
    return 0;
  }

  // relay_switch_subbuf.
  int switch_subbuf(uint32_t len) {
    if (!stopped_) {
      const uint32_t pad = static_cast<uint32_t>(S_ - offset_);
      padding_[produced_ % n_] = pad;
      prev_padding_ = pad;
      prev_slot_ = produced_ % n_;
      ++produced_;
    }
    const uint64_t slot = produced_ % n_;
    bool ok;
    bool wrapped = false;
    if (slot_has_open(slot)) {
      ok = false;
      wrapped = overwrite_seen_ || !buf_full();
    } else {
      const bool full = buf_full();
      ok = hook(slot, produced_ == 0 ? nullptr : &prev_slot_, prev_padding_);
      if (ok && full) overwrite_seen_ = true;
    }
    if (!ok) {
      stopped_ = true;
      if (len) ++(wrapped ? lost_wrap : lost_full);
      return len ? -ENOSPC : 0;
    }
    stopped_ = false;
    cur_slot_ = slot;
    padding_[slot] = 0;
    offset_ = std::min(hook_header_, S_);
    proven_[produced_] = offset_;
    if (len && offset_ + len > S_) {
      ++lost_too_big;
      return -EMSGSIZE;
    }
    return 0;
  }

  bool overwrite_seen_ = false;  // the hook switched into a full buffer: overwrite mode
  const uint32_t S_, n_;
  const Mode mode_;
  const uint32_t header_;
  std::vector<uint8_t> mem_;
  std::vector<uint32_t> padding_;
  uint64_t produced_ = 0, consumed_ = 0, bytes_consumed_ = 0;
  uint64_t offset_ = 0, cur_slot_ = 0, prev_slot_ = 0;
  uint32_t prev_padding_ = 0;
  uint32_t hook_header_ = 0;
  bool stopped_ = false;
  uint64_t switches_ = 0;
  std::map<int, Open> open_;
  std::map<uint64_t, uint64_t> proven_;  // sub-buffer sequence -> proven-committed prefix
  int next_handle_ = 0;
};

std::vector<uint8_t> record(std::mt19937_64& rng, uint32_t len) {
  std::vector<uint8_t> v(len);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

struct Scenario {
  uint32_t S, n, header;
  Mode mode;
  // The producer bound to CPU 0 (rseq reservation and commit) and this thread on it; half the
  // commits are then made from CPU 1 (the atomic counter), as after a migration.
  bool bound = false;
};

bool pin_to(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof set, &set) == 0 &&
         static_cast<unsigned>(::sched_getcpu()) == cpu;
}

// Runs one randomised sequence and compares model and core after every step.
void run_sequence(uint64_t seed, const Scenario& sc, int steps) {
  std::mt19937_64 rng(seed);
  SpecHook hook{sc.mode, sc.header};
  test::Rig rig(sc.S, sc.n, hook.hooks());
  KernelModel model(sc.S, sc.n, sc.mode, sc.header);
  std::map<int, core::Reservation> open;  // model handle -> core reservation
  const bool remote = sc.bound && std::thread::hardware_concurrency() > 1;
  if (sc.bound) {
    REQUIRE(pin_to(0));
    REQUIRE(rig.prod->bind_cpu(0));
  }

  auto len_of = [&] {
    // Mostly records that fit a few times per sub-buffer; some that fill it or cannot fit.
    switch (rng() % 10) {
      case 0:
        return static_cast<uint32_t>(sc.S - rng() % 3);
      case 1:
        return static_cast<uint32_t>(sc.S + 1 + rng() % 4);
      case 2:
        return static_cast<uint32_t>(0);
      default:
        return static_cast<uint32_t>(1 + rng() % std::max<uint32_t>(1, sc.S / 3));
    }
  };

  // RELAYFS_MODEL_TRACE=1 prints every step, to replay a failing seed by hand.
  static const bool trace = std::getenv("RELAYFS_MODEL_TRACE") != nullptr;
  for (int step = 0; step < steps; ++step) {
    CAPTURE(seed);
    CAPTURE(step);
    const unsigned op = rng() % 100;
    if (trace)
      std::fprintf(stderr, "step %d op %u produced %llu consumed %llu open %zu\n", step, op,
                   (unsigned long long)model.produced(), (unsigned long long)model.consumed(),
                   model.n_open());
    if (op < 40) {
      const auto d = record(rng, len_of());
      const int want = model.write(d);
      if (trace) std::fprintf(stderr, "  write %zu -> %d\n", d.size(), want);
      REQUIRE(rig.prod->write(d.data(), d.size()) == want);
    } else if (op < 52 && model.n_open() < 2) {
      // At most two records in flight: enough for every ordering of commits, and within what
      // the core proves exactly (see Producer::commit).
      const uint32_t len = len_of();
      int h = -1;
      const int want = model.reserve(len, &h);
      core::Reservation r;
      if (trace) std::fprintf(stderr, "  reserve %u -> %d handle %d\n", len, want, h);
      REQUIRE(rig.prod->reserve(len, &r) == want);
      if (want == 0) {
        REQUIRE(r.len == len);
        open[h] = r;
      }
    } else if (op < 64 && model.has_open()) {
      const auto handles = model.open_handles();
      const int h = handles[rng() % handles.size()];
      const auto d = record(rng, model.open_len(h));
      model.commit(h, d);
      if (trace) std::fprintf(stderr, "  commit handle %d\n", h);
      std::memcpy(open.at(h).ptr, d.data(), d.size());
      const bool elsewhere = remote && rng() % 2 == 0;
      if (elsewhere) REQUIRE(pin_to(1));
      rig.prod->commit(open.at(h));
      if (elsewhere) REQUIRE(pin_to(0));
      open.erase(h);
    } else if (op < 68) {
      model.flush();
      REQUIRE(rig.prod->flush() == 0);
    } else if (op < 70 && !model.has_open()) {
      model.reset();
      rig.prod->reset();
    } else if (op < 72) {
      const uint64_t k = 1 + rng() % 3;
      model.subbufs_consumed(k);
      REQUIRE(rig.cons->subbufs_consumed(k) == 0);
    } else {
      const size_t count = 1 + rng() % (2 * sc.S * sc.n + 8);
      const auto want = model.read(count);
      if (trace) std::fprintf(stderr, "  read %zu -> %zu\n", count, want.size());
      std::vector<uint8_t> got(count);
      const ssize_t n = rig.cons->read(got.data(), count);
      REQUIRE(n >= 0);
      got.resize(static_cast<size_t>(n));
      REQUIRE(got.size() == want.size());
      REQUIRE(got == want);
      REQUIRE(rig.cons->stats().subbufs_consumed == model.consumed());
    }
    const core::BufferStats st = rig.cons->stats();
    REQUIRE(st.subbufs_produced == model.produced());
    REQUIRE(st.lost_full == model.lost_full);
    REQUIRE(st.lost_too_big == model.lost_too_big);
    REQUIRE(st.lost_wrap == model.lost_wrap);
    REQUIRE(hook.calls == model.hook_calls);
    REQUIRE(st.corrupt == 0);
    CAPTURE(st.bytes_produced);
    CAPTURE(st.bytes_consumed);
    CAPTURE(st.bytes_unread);
    CAPTURE(test::lost_bytes(st));
    REQUIRE(test::balanced(st));
  }
  // Drain both to the end: every byte still held must match.
  for (auto& [h, r] : open) {
    const auto d = record(rng, r.len);
    model.commit(h, d);
    std::memcpy(r.ptr, d.data(), d.size());
    rig.prod->commit(r);
  }
  model.flush();
  rig.prod->flush();
  const auto want = model.read(~size_t{0} >> 1);
  const std::string got = rig.drain(7);
  REQUIRE(got.size() == want.size());
  REQUIRE(std::equal(want.begin(), want.end(), reinterpret_cast<const uint8_t*>(got.data())));
  // Drained: nothing unread, and every byte produced was read or counted lost.
  const core::BufferStats st = rig.cons->stats();
  CHECK(st.bytes_unread == 0);
  CHECK(test::balanced(st));
}

void run_many(const Scenario& base, int sequences, int steps) {
  std::mt19937_64 pick(base.header * 1000003u + static_cast<unsigned>(base.mode) * 7919u + 17);
  for (int i = 0; i < sequences; ++i) {
    Scenario sc = base;
    sc.S = 16 + static_cast<uint32_t>(pick() % 240);
    sc.n = 1 + static_cast<uint32_t>(pick() % 6);
    CAPTURE(sc.S);
    CAPTURE(sc.n);
    run_sequence(pick(), sc, steps);
  }
}

}  // namespace

TEST_CASE("randomised sequences match the kernel model byte for byte") {
  Scenario sc{0, 0, 0, Mode::kNoOverwrite};
  SUBCASE("no-overwrite, no header") {
    sc = {0, 0, 0, Mode::kNoOverwrite};
  }
  SUBCASE("no-overwrite, the spec's 4-byte padding header") {
    sc = {0, 0, 4, Mode::kNoOverwrite};
  }
  SUBCASE("no-overwrite, 12-byte header") {
    sc = {0, 0, 12, Mode::kNoOverwrite};
  }
  SUBCASE("overwrite, no header") {
    sc = {0, 0, 0, Mode::kOverwrite};
  }
  SUBCASE("overwrite, the spec's 4-byte padding header") {
    sc = {0, 0, 4, Mode::kOverwrite};
  }
  SUBCASE("overwrite, 12-byte header") {
    sc = {0, 0, 12, Mode::kOverwrite};
  }
  run_many(sc, 150, 600);
}

#ifdef RELAYFS_HAVE_RSEQ
TEST_CASE("bound to a CPU: rseq commits, and commits from another CPU, match the kernel model") {
  REQUIRE(core::rseq::available());
  cpu_set_t saved;
  REQUIRE(::sched_getaffinity(0, sizeof saved, &saved) == 0);
  Scenario sc{0, 0, 0, Mode::kNoOverwrite, true};
  SUBCASE("no-overwrite, the spec's 4-byte padding header") {
    sc = {0, 0, 4, Mode::kNoOverwrite, true};
  }
  SUBCASE("overwrite, no header") {
    sc = {0, 0, 0, Mode::kOverwrite, true};
  }
  run_many(sc, 60, 600);
  ::sched_setaffinity(0, sizeof saved, &saved);
}
#endif

TEST_CASE("the model itself follows the spec on a hand-checked sequence") {
  // Guards the oracle: sub-buffers of 8 bytes, 2 of them, no-overwrite, no header.
  KernelModel m(8, 2, Mode::kNoOverwrite, 0);
  auto bytes = [](const char* s) { return std::vector<uint8_t>(s, s + std::strlen(s)); };
  CHECK(m.write(bytes("abcde")) == 0);
  CHECK(m.write(bytes("fgh")) == 0);      // exactly fills sub-buffer 0
  CHECK(m.write(bytes("ijklm")) == 0);    // switch: padding 0
  CHECK(m.write(bytes("nop")) == 0);      // fills sub-buffer 1
  CHECK(m.write(bytes("q")) == -ENOSPC);  // both produced? no: one produced, switch makes two: full
  CHECK(m.lost_full == 1);
  const auto r = m.read(100);
  CHECK(std::string(r.begin(), r.end()) == "abcdefghijklmnop");
  CHECK(m.write(bytes("qr")) == 0);  // consumed: the refused switch is retried and succeeds
  const auto r2 = m.read(100);
  CHECK(std::string(r2.begin(), r2.end()) == "qr");
}
