// The consumer against a hostile producer: every field of the shared control area is set to
// boundary and random values, alone and while reads run, and every consumer entry point must
// answer with data, an empty read or -EIO. The buffer is mapped between guard pages, so an access
// outside it faults; run under AddressSanitizer (meson -Db_sanitize=address,undefined) this also
// checks the consumer's own memory. A loop that never ends shows up as the test timing out.
#include <doctest/doctest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"

using namespace relayfs;
using test::Mode;
using test::Rig;
using test::SpecHook;

namespace {

constexpr uint32_t kS = 64;
constexpr uint32_t kN = 4;

// A field of the control area and a way to overwrite it.
struct Field {
  std::string name;
  std::function<void(core::Buffer&, uint64_t)> set;
};

std::vector<Field> all_fields() {
  std::vector<Field> f;
  auto h = [](core::Buffer& b) { return b.header(); };
  f.push_back({"wpos", [=](core::Buffer& b, uint64_t v) { h(b)->wpos.store(v); }});
  f.push_back({"produced", [=](core::Buffer& b, uint64_t v) { h(b)->produced.store(v); }});
  f.push_back(
      {"bytes_produced", [=](core::Buffer& b, uint64_t v) { h(b)->bytes_produced.store(v); }});
  f.push_back({"prev_padding",
               [=](core::Buffer& b, uint64_t v) { h(b)->prev_padding.store(uint32_t(v)); }});
  f.push_back(
      {"prev_slot", [=](core::Buffer& b, uint64_t v) { h(b)->prev_slot.store(uint32_t(v)); }});
  f.push_back(
      {"reset_gen", [=](core::Buffer& b, uint64_t v) { h(b)->reset_gen.store(uint32_t(v)); }});
  f.push_back({"closed", [=](core::Buffer& b, uint64_t v) { h(b)->closed.store(uint32_t(v)); }});
  f.push_back(
      {"close_off", [=](core::Buffer& b, uint64_t v) { h(b)->close_off.store(uint32_t(v)); }});
  f.push_back({"lost_full", [=](core::Buffer& b, uint64_t v) { h(b)->lost_full.store(v); }});
  f.push_back({"lost_too_big", [=](core::Buffer& b, uint64_t v) { h(b)->lost_too_big.store(v); }});
  f.push_back({"lost_wrap", [=](core::Buffer& b, uint64_t v) { h(b)->lost_wrap.store(v); }});
  f.push_back({"consumed", [=](core::Buffer& b, uint64_t v) { h(b)->consumed.store(v); }});
  f.push_back(
      {"bytes_consumed", [=](core::Buffer& b, uint64_t v) { h(b)->bytes_consumed.store(v); }});
  f.push_back({"waiters", [=](core::Buffer& b, uint64_t v) { h(b)->waiters.store(uint32_t(v)); }});
  f.push_back({"fenced_commits",
               [=](core::Buffer& b, uint64_t v) { h(b)->fenced_commits.store(uint32_t(v)); }});
  f.push_back({"magic", [=](core::Buffer& b, uint64_t v) { h(b)->magic = uint32_t(v); }});
  f.push_back(
      {"subbuf_size", [=](core::Buffer& b, uint64_t v) { h(b)->subbuf_size = uint32_t(v); }});
  f.push_back({"n_subbufs", [=](core::Buffer& b, uint64_t v) { h(b)->n_subbufs = uint32_t(v); }});
  f.push_back({"data_offset", [=](core::Buffer& b, uint64_t v) { h(b)->data_offset = v; }});
  for (uint32_t i = 0; i < kN; ++i) {
    const std::string s = std::to_string(i);
    f.push_back(
        {"commit[" + s + "]", [=](core::Buffer& b, uint64_t v) { b.meta()[i].commit.store(v); }});
    f.push_back({"commit_cpu[" + s + "]",
                 [=](core::Buffer& b, uint64_t v) { b.meta()[i].commit_cpu.store(v); }});
    f.push_back(
        {"ready[" + s + "]", [=](core::Buffer& b, uint64_t v) { b.meta()[i].ready.store(v); }});
    f.push_back({"padding[" + s + "]",
                 [=](core::Buffer& b, uint64_t v) { b.meta()[i].padding.store(uint32_t(v)); }});
  }
  return f;
}

std::vector<uint64_t> boundary_values() {
  std::vector<uint64_t> v = {0,
                             1,
                             2,
                             kS - 1,
                             kS,
                             kS + 1,
                             kN - 1,
                             kN,
                             kN + 1,
                             2 * kS,
                             kS * kN,
                             kS * kN + 1,
                             0x7fff,
                             0xffff,
                             0x10000,
                             0x7fffffff,
                             0x80000000,
                             core::kOffClosed,
                             core::kOffBusy,
                             core::kOffStopped,
                             uint64_t{1} << 32,
                             uint64_t{1} << 48,
                             uint64_t{1} << 63,
                             ~uint64_t{0} - 1,
                             ~uint64_t{0},
                             core::make_word(0, 0, kS),
                             core::make_word(kN - 1, 3, kS + 1),
                             core::make_word(kN, 1, 1),
                             core::make_word(0xffff, 0xffff, 0),
                             core::make_word(2, 2, core::kOffClosed),
                             core::make_word(1, 1, core::kOffRemoteFirst),
                             core::make_word(3, 0xffff, core::kOffRemoteLast),
                             core::consumed_tag(0, 100),
                             core::consumed_tag(0, ~uint64_t{0})};
  std::mt19937_64 rng(42);
  for (int i = 0; i < 12; ++i) v.push_back(rng());
  for (int i = 0; i < 6; ++i) v.push_back(rng() % (4 * kS));
  return v;
}

// Puts the buffer in one of several honest states before the corruption.
void prepare(Rig& rig, int state) {
  const std::string rec(20, 'r');
  switch (state) {
    case 0:  // a partly written current sub-buffer
      rig.write(rec);
      break;
    case 1:  // closed sub-buffers and a current one
      for (int i = 0; i < 7; ++i) rig.write(rec);
      break;
    case 2:  // full and stopped
      for (int i = 0; i < 40; ++i) rig.write(rec);
      break;
    case 3: {  // a record in flight
      rig.write(rec);
      core::Reservation r;
      rig.prod->reserve(10, &r);
      rig.write(rec);
      break;
    }
    case 4:  // closed by the producer
      for (int i = 0; i < 5; ++i) rig.write(rec);
      rig.prod->close();
      break;
  }
}

// Calls every consumer entry point and checks that each answers within its contract.
void exercise(core::Consumer& c) {
  std::vector<char> out(3 * kS * kN);
  for (size_t count : {size_t{1}, size_t{7}, size_t{kS}, out.size()}) {
    const ssize_t n = c.read(out.data(), count);
    REQUIRE((n == -EIO || (n >= 0 && static_cast<size_t>(n) <= count)));
  }
  (void)c.data_available();
  // Arming reads fenced_commits, the producer's: at most one membarrier per arming, which must
  // succeed or fail cleanly, whatever the word says.
  for (bool whole : {false, true}) {
    const int armed = c.arm_doorbell(whole);
    REQUIRE((armed == 0 || armed < 0));
    (void)c.data_available();
  }
  (void)c.bytes_produced();
  const core::BufferStats st = c.stats();
  CHECK(st.subbuf_size == kS);
  CHECK(st.n_subbufs == kN);
  const int rc = c.subbufs_consumed(1);
  REQUIRE((rc == 0 || rc == -EIO));
  (void)c.drained();
  c.finalize();
  (void)c.drained();
  for (int i = 0; i < 3; ++i) {
    const ssize_t n = c.read(out.data(), out.size());
    REQUIRE((n == -EIO || (n >= 0 && static_cast<size_t>(n) <= out.size())));
  }
}

}  // namespace

TEST_CASE("every control field set to boundary and random values: the consumer stays in bounds") {
  const auto fields = all_fields();
  const auto values = boundary_values();
  int cases = 0;
  for (const Field& f : fields) {
    for (uint64_t v : values) {
      for (int state = 0; state < 5; ++state) {
        CAPTURE(f.name);
        CAPTURE(v);
        CAPTURE(state);
        Rig rig(kS, kN);
        prepare(rig, state);
        // Read some first, so the consumer holds a position inside the buffer.
        char tmp[30];
        (void)rig.cons->read(tmp, sizeof tmp);
        f.set(rig.buf, v);
        exercise(*rig.cons);
        ++cases;
      }
    }
  }
  MESSAGE(cases << " corrupted states exercised");
  CHECK(cases == static_cast<int>(fields.size() * values.size() * 5));
}

TEST_CASE("all fields corrupted at once, many times: the consumer stays in bounds") {
  const auto fields = all_fields();
  const auto values = boundary_values();
  std::mt19937_64 rng(7);
  for (int round = 0; round < 2000; ++round) {
    CAPTURE(round);
    Rig rig(kS, kN);
    prepare(rig, round % 5);
    for (const Field& f : fields)
      if (rng() % 2) f.set(rig.buf, rng() % 3 ? values[rng() % values.size()] : rng());
    exercise(*rig.cons);
  }
}

TEST_CASE("a producer rewriting the control area while reads run cannot trap the consumer") {
  const auto fields = all_fields();
  const auto values = boundary_values();
  Rig rig(kS, kN);
  prepare(rig, 1);
  std::atomic<bool> stop{false};
  std::thread vandal([&] {
    std::mt19937_64 rng(99);
    while (!stop.load(std::memory_order_relaxed)) {
      const Field& f = fields[rng() % fields.size()];
      f.set(rig.buf, rng() % 2 ? values[rng() % values.size()] : rng());
      if (rng() % 8 == 0) rig.buf.data()[rng() % (kS * kN)] = static_cast<char>(rng());
    }
  });
  std::vector<char> out(2 * kS * kN);
  uint64_t calls = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(700);
  while (std::chrono::steady_clock::now() < until) {
    const ssize_t n = rig.cons->read(out.data(), 1 + calls % out.size());
    REQUIRE((n == -EIO || (n >= 0 && static_cast<size_t>(n) <= out.size())));
    (void)rig.cons->data_available();
    (void)rig.cons->bytes_produced();
    if (calls % 16 == 0) (void)rig.cons->subbufs_consumed(1 + calls % 3);
    ++calls;
  }
  stop = true;
  vandal.join();
  MESSAGE(calls << " consumer calls under concurrent corruption");
  CHECK(calls > 100);
}

TEST_CASE("the position word, commit count and proven prefix agreeing on an impossible offset") {
  // Single-field corruption cannot make these three agree; a hostile producer can.
  for (uint64_t x : {uint64_t{kS} + 1, uint64_t{2} * kS, uint64_t{kS} * kN + 5,
                     uint64_t{0x7fffffff}, uint64_t{core::kOffClosed} - 1}) {
    for (uint64_t seq : {uint64_t{0}, uint64_t{1}, uint64_t{5}}) {
      CAPTURE(x);
      CAPTURE(seq);
      Rig rig(kS, kN);
      const uint32_t slot = static_cast<uint32_t>(seq % kN);
      const uint64_t base = (seq / kN) * kS;
      rig.buf.header()->produced.store(seq);
      rig.buf.header()->wpos.store(core::make_word(slot, seq, static_cast<uint32_t>(x)));
      rig.buf.meta()[slot].commit.store(base + x);
      rig.buf.meta()[slot].ready.store(base + x);
      exercise(*rig.cons);
      // The same count split over the two counters (layout.h, committed()), as a bound producer
      // keeps it, and a sum that wraps around to it.
      rig.buf.meta()[slot].commit.store(x / 2);
      rig.buf.meta()[slot].commit_cpu.store(base + x - x / 2);
      exercise(*rig.cons);
      rig.buf.meta()[slot].commit.store(~uint64_t{0});
      rig.buf.meta()[slot].commit_cpu.store(base + x + 1);
      exercise(*rig.cons);
      // Closed by the producer at that offset, too.
      rig.buf.header()->wpos.store(core::make_word(slot, seq, core::kOffClosed));
      rig.buf.header()->close_off.store(static_cast<uint32_t>(x));
      rig.buf.header()->closed.store(1);
      exercise(*rig.cons);
    }
  }
}

namespace {

// The control area's atomics as an honest producer left them, to put back between attacks.
struct Snapshot {
  uint64_t wpos, produced, bytes_produced, consumed;
  uint32_t prev_padding, prev_slot, reset_gen, closed, close_off;
  uint64_t commit[kN], commit_cpu[kN], ready[kN];
  uint32_t padding[kN];

  explicit Snapshot(core::Buffer& b) {
    const core::ShmHeader* h = b.header();
    wpos = h->wpos.load();
    produced = h->produced.load();
    bytes_produced = h->bytes_produced.load();
    consumed = h->consumed.load();
    prev_padding = h->prev_padding.load();
    prev_slot = h->prev_slot.load();
    reset_gen = h->reset_gen.load();
    closed = h->closed.load();
    close_off = h->close_off.load();
    for (uint32_t i = 0; i < kN; ++i) {
      commit[i] = b.meta()[i].commit.load();
      commit_cpu[i] = b.meta()[i].commit_cpu.load();
      ready[i] = b.meta()[i].ready.load();
      padding[i] = b.meta()[i].padding.load();
    }
  }
  void restore(core::Buffer& b) const {
    core::ShmHeader* h = b.header();
    h->wpos.store(wpos);
    h->produced.store(produced);
    h->bytes_produced.store(bytes_produced);
    h->consumed.store(consumed);
    h->prev_padding.store(prev_padding);
    h->prev_slot.store(prev_slot);
    h->reset_gen.store(reset_gen);
    h->closed.store(closed);
    h->close_off.store(close_off);
    for (uint32_t i = 0; i < kN; ++i) {
      b.meta()[i].commit.store(commit[i]);
      b.meta()[i].commit_cpu.store(commit_cpu[i]);
      b.meta()[i].ready.store(ready[i]);
      b.meta()[i].padding.store(padding[i]);
    }
  }
};

// What a read may hand out from this test's buffer: record bytes, or the zeros of bytes never
// written (a hostile control area may point the consumer anywhere inside the data area, never
// outside it).
bool from_data_area(const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (p[i] != 'r' && p[i] != 0) return false;
  return true;
}

}  // namespace

// The test above corrupts fields at random moments, but with a buffer that is corrupt most of the
// time reads rarely get as far as copying. Here a vandal thread puts the honest control area
// back, lets a read start on it, and corrupts it while the read runs: large sub-buffers make
// every copy long, and a counter the vandal moves shows which reads overlapped an attack. Both
// kinds of read are attacked: read() while it copies, and a zero-copy plan_read() between the
// plan and the delivery (when the daemon's reply copies out of the planned spans).
TEST_CASE(
    "a producer corrupting the control area while a read is in progress: reads stay in bounds") {
  constexpr uint32_t kBig = 256 * 1024;
  Rig rig(kBig, kN);
  const std::string rec(1000, 'r');
  int records = 0;
  while (rig.write(rec) == 0) ++records;  // no-overwrite: until the buffer is full
  REQUIRE(records > 4 * 200);
  const Snapshot honest(rig.buf);
  char* const data = rig.buf.data();
  const size_t data_size = uint64_t{kBig} * kN;

  const auto fields = all_fields();
  auto values = boundary_values();
  for (uint64_t v : {uint64_t{kBig} - 1, uint64_t{kBig}, uint64_t{kBig} + 1, uint64_t{kBig} * kN,
                     core::make_word(1, 1, kBig), core::make_word(3, 3, kBig - 7),
                     core::make_word(0, 4, 1000), uint64_t{kBig} * 2 + 5})
    values.push_back(v);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> attacks{0};
  std::thread vandal([&] {
    std::mt19937_64 rng(1234);
    while (!stop.load(std::memory_order_relaxed)) {
      honest.restore(rig.buf);
      // Give a read the time to plan on the honest state and begin its copy.
      for (unsigned spin = rng() % 20000; spin > 0; --spin)
        std::atomic_signal_fence(std::memory_order_seq_cst);
      for (int k = 1 + static_cast<int>(rng() % 3); k > 0; --k) {
        const Field& f = fields[rng() % fields.size()];
        f.set(rig.buf, rng() % 4 ? values[rng() % values.size()] : rng());
      }
      attacks.fetch_add(1, std::memory_order_release);
      for (unsigned spin = rng() % 20000; spin > 0; --spin)
        std::atomic_signal_fence(std::memory_order_seq_cst);
    }
  });

  std::vector<char> out(3 * kBig);
  uint64_t reads = 0, overlapped = 0, plans = 0, plans_overlapped = 0, bytes = 0;
  std::mt19937_64 rng(5678);
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
  while (std::chrono::steady_clock::now() < until) {
    // A fresh consumer starts at the first sub-buffer, so the honest state always has data.
    core::Consumer c(rig.buf);
    for (int i = 0; i < 6; ++i) {
      const size_t count = 1 + rng() % out.size();
      const uint64_t before = attacks.load(std::memory_order_acquire);
      if (i % 2 == 0) {
        const ssize_t n = c.read(out.data(), count, rng() % 4 == 0);
        REQUIRE((n == -EIO || (n >= 0 && static_cast<size_t>(n) <= count)));
        if (n > 0) {
          REQUIRE(from_data_area(out.data(), static_cast<size_t>(n)));
          bytes += static_cast<size_t>(n);
        }
        ++reads;
        overlapped += attacks.load(std::memory_order_acquire) != before;
      } else {
        iovec iov[8];
        int n_iov = -1;
        const ssize_t n = c.plan_read(iov, 1 + static_cast<int>(rng() % 8), count, &n_iov);
        REQUIRE((n == -EIO || (n >= 0 && static_cast<size_t>(n) <= count)));
        size_t total = 0;
        for (int k = 0; k < n_iov; ++k) {
          const char* b = static_cast<const char*>(iov[k].iov_base);
          REQUIRE(b >= data);
          REQUIRE(b + iov[k].iov_len <= data + data_size);
          // The delivery: the reply copies out of the mapping while the vandal goes on.
          std::memcpy(out.data() + total, b, iov[k].iov_len);
          REQUIRE(from_data_area(out.data() + total, iov[k].iov_len));
          total += iov[k].iov_len;
        }
        REQUIRE(total == static_cast<size_t>(n > 0 ? n : 0));
        if (n > 0) {
          if (rng() % 2)
            c.finish_read();
          else
            c.abort_read();
        }
        ++plans;
        plans_overlapped += attacks.load(std::memory_order_acquire) != before;
      }
      (void)c.data_available();
      (void)c.subbuf_ready();
      (void)c.at_record_boundary();
      const int rc = c.consume_upto(static_cast<uint32_t>(rng() % 3), rng() % (2 * kN));
      REQUIRE((rc == 0 || rc == -ESTALE || rc == -EIO));
      const core::BufferStats st = c.stats();
      CHECK(st.subbuf_size == kBig);
      CHECK(st.n_subbufs == kN);
      c.arm_doorbell(rng() % 2);
    }
  }
  stop = true;
  vandal.join();
  MESSAGE(reads << " reads (" << overlapped << " overlapped an attack), " << plans
                << " zero-copy reads (" << plans_overlapped << " overlapped an attack), "
                << attacks.load() << " attacks, " << bytes << " bytes read");
  CHECK(overlapped > 0);
  CHECK(plans_overlapped > 0);
}
