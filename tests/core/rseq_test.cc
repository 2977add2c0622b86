// The rseq compare-and-store (core/rseq.h) and a producer bound to a CPU with it.
#include <doctest/doctest.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <new>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

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

// Switches claimed from another CPU (flush, or a writer woken elsewhere) against switches taken
// on the buffer's own CPU: never two holders at once. The subbuf_start hook runs with the switch
// held and lingers there, so a remote claim often finds the switch taken; each hook counts how
// many hooks run at that moment. (A remote claim used to compare against the word reloaded after
// its failed rseq attempt, so it could "claim" a switch held by a writer on the CPU.)
TEST_CASE("a remote switch never shares the switch with one on the buffer's CPU") {
  if (ncpu() < 2) {
    MESSAGE("one CPU: no remote claim to race");
    return;
  }
  struct Probe {
    std::atomic<int> inside{0};
    std::atomic<int> overlaps{0};
    std::atomic<uint64_t> switches{0};
  } probe;
  core::ProducerHooks hooks;
  hooks.ctx = &probe;
  hooks.subbuf_start = [](void* ctx, core::Producer& p, void*, void*, uint32_t) {
    auto* pr = static_cast<Probe*>(ctx);
    // relaxed: the counter is the observation itself; the switch's own ordering is not tested.
    if (pr->inside.fetch_add(1, std::memory_order_relaxed) != 0)
      pr->overlaps.fetch_add(1, std::memory_order_relaxed);
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
    while (std::chrono::steady_clock::now() < until) {
    }
    pr->inside.fetch_sub(1, std::memory_order_relaxed);
    pr->switches.fetch_add(1, std::memory_order_relaxed);
    return !p.buf_full();
  };
  test::Rig rig(512, 4, hooks);
  if (!rig.prod->bind_cpu(0)) return;  // CAS build: no remote path
  std::atomic<bool> done{false};
  std::atomic<uint64_t> written{0}, refused{0}, flushes{0};
  auto pin = [](unsigned cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return ::sched_setaffinity(0, sizeof set, &set) == 0;
  };
  std::atomic<bool> pinned_ok{true};
  std::thread writer([&] {
    if (!pin(0)) pinned_ok.store(false);
    char rec[64];
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    for (uint64_t seq = 0; std::chrono::steady_clock::now() < end; ++seq) {
      std::memset(rec, 'a' + static_cast<int>(seq % 26), sizeof rec);
      std::memcpy(rec, &seq, sizeof seq);
      const int rc = rig.prod->write(rec, sizeof rec);
      if (rc == 0) written.fetch_add(1, std::memory_order_relaxed);
      else if (rc == -ENOSPC) refused.fetch_add(1, std::memory_order_relaxed);
      else pinned_ok.store(false);  // kOtherCpu: the pin did not hold
    }
    done.store(true, std::memory_order_release);
  });
  std::thread flusher([&] {
    if (!pin(1)) pinned_ok.store(false);
    while (!done.load(std::memory_order_acquire))
      if (rig.prod->flush() == 0) flushes.fetch_add(1, std::memory_order_relaxed);
  });
  // The reader frees sub-buffers and checks the stream: whole 64-byte records, in order.
  uint64_t read = 0, last = 0, bad = 0, errors = 0;
  std::string pending;
  std::vector<char> tmp(1 << 14);
  for (bool last_pass = false;;) {
    const ssize_t n = rig.cons->read(tmp.data(), tmp.size());
    if (n < 0) {
      ++errors;
      break;
    }
    pending.append(tmp.data(), static_cast<size_t>(n));
    size_t at = 0;
    for (; pending.size() - at >= 64; at += 64) {
      uint64_t seq;
      std::memcpy(&seq, pending.data() + at, sizeof seq);
      if ((read != 0 && seq <= last) || pending[at + 63] != 'a' + static_cast<int>(seq % 26)) ++bad;
      last = seq;
      ++read;
    }
    pending.erase(0, at);
    if (n != 0) continue;
    if (last_pass) break;
    if (done.load(std::memory_order_acquire)) {
      writer.join();
      flusher.join();
      rig.prod->flush();
      last_pass = true;
    }
  }
  if (writer.joinable()) writer.join();
  if (flusher.joinable()) flusher.join();
  REQUIRE(pinned_ok.load());
  const core::BufferStats st = rig.cons->stats();
  MESSAGE("switches " << probe.switches.load() << ", flushes from CPU 1 " << flushes.load()
                      << ", records written " << written.load() << ", refused "
                      << refused.load() << ", read " << read);
  CHECK(probe.overlaps.load() == 0);
  CHECK(errors == 0);
  CHECK(st.corrupt == 0);
  CHECK(bad == 0);
  CHECK(pending.empty());
  CHECK(read == written.load());
  CHECK(st.lost_full == refused.load());
  CHECK(flushes.load() > 0);
}

namespace {

// What the signal handler of the test below did, in memory the parent process reads.
struct HandlerCounts {
  std::atomic<uint64_t> calls{0}, written{0}, dropped{0}, other_cpu{0}, other{0};
  std::atomic<uint64_t> flushes{0};
};
core::Producer* g_signal_prod = nullptr;
HandlerCounts* g_counts = nullptr;

void write_from_handler(int) {
  const int saved = errno;
  const char rec[16] = "from a handler";
  const int rc = g_signal_prod->write(rec, sizeof rec);
  g_counts->calls.fetch_add(1, std::memory_order_relaxed);
  if (rc == 0) g_counts->written.fetch_add(1, std::memory_order_relaxed);
  else if (rc == -ENOSPC) g_counts->dropped.fetch_add(1, std::memory_order_relaxed);
  else if (rc == core::kOtherCpu) g_counts->other_cpu.fetch_add(1, std::memory_order_relaxed);
  else g_counts->other.fetch_add(1, std::memory_order_relaxed);
  errno = saved;
}

}  // namespace

// A thread flushes a per-CPU buffer from another CPU, so each flush claims the word remotely and
// sleeps in membarrier with the word busy; signals keep arriving, and their handler writes to the
// same buffer. A pending signal is delivered as membarrier returns, inside the claim: the handler
// must see that its own thread holds the switch and drop its record (counted), not wait for the
// busy word forever. Runs in a child process, so that a hang fails the test instead of the run.
TEST_CASE("a signal handler that writes while its thread claims the switch from afar does not hang") {
  if (ncpu() < 2 || !core::rseq::available()) {
    MESSAGE("needs rseq and two CPUs");
    return;
  }
  void* mem = ::mmap(nullptr, sizeof(HandlerCounts), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(mem != MAP_FAILED);
  auto* counts = new (mem) HandlerCounts;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // A failed REQUIRE in here must end the child, not run the rest of the tests in it.
    try {
      test::Rig rig(4096, 4);
      if (!rig.prod->bind_cpu(0)) ::_exit(3);
      g_signal_prod = rig.prod.get();
      g_counts = counts;
      struct sigaction sa {};
      sa.sa_handler = write_from_handler;
      if (::sigaction(SIGUSR1, &sa, nullptr) != 0) ::_exit(4);
      std::atomic<bool> stop{false};
      std::atomic<pthread_t> flusher_id{};
      std::atomic<bool> started{false};
      std::thread flusher([&] {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(1, &set);
        if (::sched_setaffinity(0, sizeof set, &set) != 0) ::_exit(5);
        flusher_id.store(::pthread_self());
        started.store(true, std::memory_order_release);
        while (!stop.load(std::memory_order_relaxed)) {
          if (rig.prod->flush() == 0) counts->flushes.fetch_add(1, std::memory_order_relaxed);
          rig.drain();  // keeps the buffer from filling, so flushes switch rather than stop
        }
      });
      while (!started.load(std::memory_order_acquire)) std::this_thread::yield();
      const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      while (std::chrono::steady_clock::now() < end) {
        ::pthread_kill(flusher_id.load(), SIGUSR1);
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
      stop.store(true, std::memory_order_relaxed);
      flusher.join();
    } catch (...) {
      ::_exit(6);
    }
    ::_exit(0);
  }
  // The parent: a hung child is killed after 30 s (its run takes about one).
  int status = -1;
  bool exited = false;
  for (int i = 0; i < 3000 && !exited; ++i) {
    if (::waitpid(child, &status, WNOHANG) == child) exited = true;
    else std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!exited) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
  }
  MESSAGE("signals handled " << counts->calls.load() << ": written " << counts->written.load()
                             << ", dropped inside a claim " << counts->dropped.load()
                             << ", refused off the CPU " << counts->other_cpu.load()
                             << "; flushes " << counts->flushes.load());
  CHECK(exited);  // false: the handler waited for its own thread's claim
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(counts->other.load() == 0);
  CHECK(counts->dropped.load() > 0);  // the handler did run inside claims
  ::munmap(mem, sizeof(HandlerCounts));
}
