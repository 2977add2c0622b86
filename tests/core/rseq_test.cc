// The rseq compare-and-store (core/rseq.h) and a producer bound to a CPU with it.
#include <doctest/doctest.h>
#include <sched.h>

#include <cstdint>
#include <string>
#include <thread>

#include "core/rseq.h"
#include "harness.h"

using namespace relayfs;
using core::rseq::Cas;

namespace {

unsigned ncpu() { return std::max(1u, std::thread::hardware_concurrency()); }

// Runs f on a thread pinned to `cpu`; returns false if it could not be pinned.
template <class F>
bool on_cpu(unsigned cpu, F f) {
  bool pinned = false;
  std::thread t([&] {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (::sched_setaffinity(0, sizeof set, &set) != 0) return;
    pinned = static_cast<unsigned>(::sched_getcpu()) == cpu;
    if (pinned) f();
  });
  t.join();
  return pinned;
}

}  // namespace

#ifdef RELAYFS_HAVE_RSEQ

TEST_CASE("rseq is available: glibc registered it and the kernel takes the membarrier") {
  CHECK(core::rseq::available());
}

TEST_CASE("cas_on_cpu stores only on the named CPU and only over the expected value") {
  REQUIRE(core::rseq::available());
  uint64_t word = 7;
  REQUIRE(on_cpu(0, [&] {
    CHECK(core::rseq::current_cpu() == 0);
    CHECK(core::rseq::cas_on_cpu(&word, 6, 9, 0) == Cas::kChanged);
    CHECK(word == 7);
    CHECK(core::rseq::cas_on_cpu(&word, 7, 9, 0) == Cas::kStored);
    CHECK(word == 9);
    if (ncpu() > 1) {
      CHECK(core::rseq::cas_on_cpu(&word, 9, 11, 1) == Cas::kOtherCpu);
      CHECK(word == 9);
    }
  }));
  CHECK(core::rseq::remote_fence(0) == 0);
}

TEST_CASE("cas_on_cpu counts exactly under preemption: two threads on one CPU") {
  REQUIRE(core::rseq::available());
  // Both threads increment one word on CPU 0 with compare-and-store; preemption between the
  // compare and the store must restart the section, or an increment would be lost.
  uint64_t word = 0;
  constexpr uint64_t kEach = 2'000'000;
  auto inc = [&] {
    for (uint64_t i = 0; i < kEach; ++i) {
      for (;;) {
        const uint64_t v = __atomic_load_n(&word, __ATOMIC_RELAXED);
        if (core::rseq::cas_on_cpu(&word, v, v + 1, 0) == Cas::kStored) break;
      }
    }
  };
  std::thread a([&] { REQUIRE(on_cpu(0, inc)); });
  std::thread b([&] { REQUIRE(on_cpu(0, inc)); });
  a.join();
  b.join();
  CHECK(word == 2 * kEach);
}

#endif

TEST_CASE("a producer bound to a CPU takes writes there and refuses them elsewhere") {
  test::Rig rig(4096, 4);
  const bool bound = rig.prod->bind_cpu(0);
  CHECK(bound == core::rseq::available());
  if (!bound) return;  // CAS build (TSan): nothing CPU-specific to check
  REQUIRE(on_cpu(0, [&] { CHECK(rig.write("on cpu 0\n") == 0); }));
  if (ncpu() > 1) {
    REQUIRE(on_cpu(1, [&] {
      CHECK(rig.write("on cpu 1\n") == core::kOtherCpu);
      // Switches work from any CPU: flush and close take the remote path.
      CHECK(rig.prod->flush() == 0);
    }));
  }
  REQUIRE(on_cpu(0, [&] { CHECK(rig.write("again\n") == 0); }));
  if (ncpu() > 1) REQUIRE(on_cpu(1, [&] { rig.prod->close(); }));
  REQUIRE(on_cpu(0, [&] { CHECK(rig.write("late\n") == -EPIPE); }));
  CHECK(rig.drain() == "on cpu 0\nagain\n");
}
