// The rseq compare-and-store (core/rseq.h) and a producer bound to a CPU with it.
#include <doctest/doctest.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
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

#include "../child.h"
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
  test::SharedAnon<HandlerCounts> shared;
  HandlerCounts* counts = shared.get();
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
}

// ---- The rseq commit (Producer::commit on a bound buffer, rseq::add_on_cpu) ----

namespace {

bool pin_self(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

// A record of the tests below: 8 bytes of sequence number, then `len - 8` bytes that follow from
// it, so a torn or foreign record is recognised.
void fill(char* rec, uint32_t len, uint64_t seq) {
  std::memcpy(rec, &seq, 8);
  for (uint32_t i = 8; i < len; ++i) rec[i] = static_cast<char>('a' + (seq + i) % 26);
}
bool intact(const char* rec, uint32_t len, uint64_t* seq) {
  std::memcpy(seq, rec, 8);
  for (uint32_t i = 8; i < len; ++i)
    if (rec[i] != static_cast<char>('a' + (*seq + i) % 26)) return false;
  return true;
}

// Reads a stream of fixed-size records: each intact, each sequence number once.
struct FixedChecker {
  uint32_t len;
  std::string pending;
  std::vector<uint8_t> seen;
  uint64_t records = 0, bad = 0, twice = 0;
  void feed(const char* p, size_t n) {
    pending.append(p, n);
    size_t at = 0;
    for (; pending.size() - at >= len; at += len) {
      uint64_t seq;
      if (!intact(pending.data() + at, len, &seq) || seq >= seen.size()) {
        ++bad;
        continue;
      }
      twice += seen[seq]++ != 0;
      ++records;
    }
    pending.erase(0, at);
  }
};

}  // namespace

#ifdef RELAYFS_HAVE_RSEQ

TEST_CASE("add_on_cpu adds exactly under preemption, and only on the named CPU") {
  REQUIRE(core::rseq::available());
  uint64_t word = 0;
  constexpr uint64_t kEach = 2'000'000;
  auto inc = [&] {
    for (uint64_t i = 0; i < kEach; ++i) {
      while (!core::rseq::add_on_cpu(&word, 1, 0)) {
      }
    }
  };
  std::thread a([&] { REQUIRE(on_cpu(0, inc)); });
  std::thread b([&] { REQUIRE(on_cpu(0, inc)); });
  a.join();
  b.join();
  CHECK(word == 2 * kEach);
  if (ncpu() > 1) {
    REQUIRE(on_cpu(1, [&] { CHECK_FALSE(core::rseq::add_on_cpu(&word, 5, 0)); }));
    CHECK(word == 2 * kEach);
  }
}

#endif

// Writers on the buffer's CPU and off it commit into the same sub-buffers: threads moved between
// CPUs by another thread in a loop (sched_setaffinity), so some are moved between reservation and
// commit, and a thread on another CPU commits reservations made on the buffer's CPU
// (relay_reserve/relay_commit across threads). Every record must be read once and intact, no
// switch refused as a wrap (a lost commit leaves a slot short of its lap forever), and `deliver`
// must run exactly once per sub-buffer (the consumer, not the committer, decides completeness).
TEST_CASE("bound buffer: commits on the CPU, after a migration and from another CPU") {
  if (ncpu() < 2 || !core::rseq::available()) {
    MESSAGE("needs rseq and two CPUs");
    return;
  }
  struct Delivered {
    std::atomic<uint64_t> calls{0};
  } delivered;
  core::ProducerHooks hooks;
  hooks.ctx = &delivered;
  hooks.deliver = [](void* ctx, core::Producer&, uint32_t, void*) {
    // relaxed: a count, read after the writers are joined.
    static_cast<Delivered*>(ctx)->calls.fetch_add(1, std::memory_order_relaxed);
  };
  test::Rig rig(4096, 8, hooks);
  REQUIRE(rig.prod->bind_cpu(0));
  CHECK(rig.prod->fenced_commits());
  // Writers wait for room rather than drop: every record is committed by one of the paths.
  rig.prod->set_blocking(true, 10'000'000'000);
  constexpr uint32_t kLen = 48;
  constexpr unsigned kWriters = 2;
  constexpr uint64_t kEach = 100'000;
  std::atomic<core::Reservation*> mailbox{nullptr};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> written{0}, refused{0}, handed{0}, other{0};
  std::vector<std::atomic<pid_t>> tids(kWriters);
  std::atomic<unsigned> started{0}, finished{0};
  std::vector<std::thread> writers;
  for (unsigned t = 0; t < kWriters; ++t) {
    writers.emplace_back([&, t] {
      tids[t].store(static_cast<pid_t>(::gettid()));
      started.fetch_add(1);
      char rec[kLen];
      for (uint64_t i = 0; i < kEach; ++i) {
        const uint64_t seq = t * kEach + i;
        core::Reservation r;
        int rc;
        while ((rc = rig.prod->reserve(kLen, &r)) == core::kOtherCpu) std::this_thread::yield();
        if (rc == -ENOSPC) {
          refused.fetch_add(1);
          continue;
        }
        if (rc != 0) {
          other.fetch_add(1);
          continue;
        }
        fill(rec, kLen, seq);
        std::memcpy(r.ptr, rec, kLen);
        written.fetch_add(1);
        if (i % 4 == 0) {
          // Handed to the committer on CPU 1; we wait until it committed (it clears the box).
          core::Reservation* expected = nullptr;
          while (!mailbox.compare_exchange_weak(expected, &r)) expected = nullptr;
          while (mailbox.load() == &r) std::this_thread::yield();
          handed.fetch_add(1);
        } else {
          rig.prod->commit(r);
        }
      }
      finished.fetch_add(1);
    });
  }
  std::thread committer([&] {
    if (!pin_self(1)) other.fetch_add(1);
    while (!stop.load()) {
      if (core::Reservation* r = mailbox.load()) {
        rig.prod->commit(*r);
        mailbox.store(nullptr);
      } else {
        std::this_thread::yield();  // the reader needs a CPU too
      }
    }
  });
  while (started.load() != kWriters) std::this_thread::yield();
  std::thread mover([&] {
    for (unsigned round = 0; !stop.load(); ++round) {
      for (unsigned t = 0; t < kWriters; ++t) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((t + round) % 2, &set);
        ::sched_setaffinity(tids[t].load(), sizeof set, &set);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  });
  FixedChecker chk{kLen, {}, std::vector<uint8_t>(kWriters * kEach)};
  std::vector<char> tmp(1 << 15);
  // A lost commit leaves a sub-buffer short for ever, and the blocked writers behind it: the
  // reader gives up after 10 s without a byte, and the writers are released (close, abandon).
  auto progress = std::chrono::steady_clock::now();
  bool stalled = false;
  for (bool last = false;;) {
    const ssize_t n = rig.cons->read(tmp.data(), tmp.size());
    REQUIRE(n >= 0);
    chk.feed(tmp.data(), static_cast<size_t>(n));
    if (n != 0) {
      progress = std::chrono::steady_clock::now();
      continue;
    }
    if (last) break;
    if (!stalled && std::chrono::steady_clock::now() - progress > std::chrono::seconds(10)) {
      stalled = true;
      rig.prod->close();
      rig.prod->abandon();
    }
    if (finished.load() == kWriters) {
      for (auto& w : writers) w.join();
      stop.store(true);
      committer.join();
      mover.join();
      rig.prod->close();
      last = true;
    } else {
      std::this_thread::yield();
    }
  }
  const core::BufferStats st = rig.cons->stats();
  MESSAGE("written " << written.load() << ", committed from CPU 1 " << handed.load() << ", read "
                     << chk.records << ", refused " << refused.load() << ", sub-buffers "
                     << st.subbufs_produced << ", delivered " << delivered.calls.load());
  CHECK_FALSE(stalled);
  CHECK(other.load() == 0);
  CHECK(chk.bad == 0);
  CHECK(chk.twice == 0);
  CHECK(chk.pending.empty());
  CHECK(chk.records == written.load());
  CHECK(st.lost_wrap == 0);
  CHECK(st.lost_uncommitted == 0);
  CHECK(refused.load() == st.lost_full);
  // Every closed sub-buffer was complete by the close (all reservations committed): each one
  // delivered, once.
  CHECK(delivered.calls.load() == st.subbufs_produced);
}

namespace {

core::Producer* g_timer_prod = nullptr;
std::atomic<uint64_t> g_timer_calls{0}, g_timer_written{0}, g_timer_refused{0}, g_timer_other{0};
std::atomic<uint64_t> g_timer_seq{0};
constexpr uint32_t kTimerLen = 40;
constexpr uint64_t kHandlerSeq = uint64_t{1} << 40;  // the handler's records are numbered from here

void timer_write(int) {
  const int saved = errno;
  // relaxed: counters read after the writer stopped; the sequence only has to be unique.
  const uint64_t seq = g_timer_seq.fetch_add(1, std::memory_order_relaxed);
  char rec[kTimerLen];
  fill(rec, kTimerLen, kHandlerSeq + seq);
  const int rc = g_timer_prod->write(rec, kTimerLen);
  g_timer_calls.fetch_add(1, std::memory_order_relaxed);
  if (rc == 0) g_timer_written.fetch_add(1, std::memory_order_relaxed);
  else if (rc == -ENOSPC) g_timer_refused.fetch_add(1, std::memory_order_relaxed);
  else g_timer_other.fetch_add(1, std::memory_order_relaxed);
  errno = saved;
}

}  // namespace

// A timer signal at a high rate interrupts the writer, often inside its reservation or commit
// section, and its handler writes to the same buffer on the same CPU: the interrupted section
// must be restarted (its add redone from a fresh load), or the handler's commit is overwritten
// and the slot never completes. Every record of both must be read, intact, once.
// deliver's "never missed" across a refused switch. A wrap refuses the switch into a slot whose
// last lap is short; the lap is then completed by racing commits that each missed it (an rseq add
// and an atomic add that read each other's old values; here the outcome is made by hand: the
// missing bytes added to `commit` with no check). The retried switch reuses the slot, and must
// deliver the lap first: nothing later looks at it again.
TEST_CASE("bound buffer: a lap completed after its slot's switch was refused is still delivered") {
  if (!core::rseq::available()) {
    MESSAGE("needs rseq");
    return;
  }
  // Overwrite mode (the callback always switches) and a record of the slots delivered.
  struct Record {
    std::vector<uint32_t> slots;
    static bool start(void*, core::Producer&, void*, void*, uint32_t) { return true; }
    static void deliver(void* ctx, core::Producer&, uint32_t slot, void*) {
      static_cast<Record*>(ctx)->slots.push_back(slot);
    }
  } rec;
  core::ProducerHooks hooks;
  hooks.ctx = &rec;
  hooks.subbuf_start = &Record::start;
  hooks.deliver = &Record::deliver;
  hooks.overwrite = true;
  REQUIRE(on_cpu(0, [&] {
    test::Rig rig(16, 2, hooks);
    REQUIRE(rig.prod->bind_cpu(0));
    core::Reservation a;
    REQUIRE(rig.prod->reserve(6, &a) == 0);         // sub-buffer 0 (slot 0), left in flight
    REQUIRE(rig.write(std::string(10, 'b')) == 0);  // fills it
    REQUIRE(rig.write(std::string(16, 'c')) == 0);  // sub-buffer 1 (slot 1), full
    CHECK(rec.slots == std::vector<uint32_t>{1});
    // The switch into slot 0 again is refused: its lap is 6 bytes short. Dropped, and counted.
    CHECK(rig.write(std::string(4, 'd')) != 0);
    const auto st = rig.cons->stats();
    CHECK(st.lost_full + st.lost_wrap == 1);
    // The racing commits' outcome: the lap complete, and nobody delivered it.
    core::SubbufMeta& m = rig.buf.meta()[0];
    m.commit.fetch_add(6, std::memory_order_seq_cst);
    REQUIRE(core::committed(m) == 16);
    CHECK(rec.slots == std::vector<uint32_t>{1});
    // The retried switch reuses slot 0, and delivers its lap first.
    REQUIRE(rig.write(std::string(4, 'e')) == 0);
    CHECK(rec.slots == std::vector<uint32_t>{1, 0});
  }));
}

TEST_CASE("bound buffer: a signal handler writes during the writer's commits") {
  if (!core::rseq::available()) {
    MESSAGE("needs rseq");
    return;
  }
  test::Rig rig(4096, 64);
  REQUIRE(rig.prod->bind_cpu(0));
  g_timer_prod = rig.prod.get();
  struct sigaction sa {};
  sa.sa_handler = timer_write;
  sa.sa_flags = SA_RESTART;
  REQUIRE(::sigaction(SIGRTMIN, &sa, nullptr) == 0);
  std::atomic<bool> done{false};
  std::atomic<uint64_t> written{0}, refused{0}, other{0};
  constexpr uint64_t kRecords = 300'000;
  std::thread writer([&] {
    if (!pin_self(0)) other.fetch_add(1);
    // The timer signals this thread only, and is gone before the thread is.
    sigevent sev{};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGRTMIN;
    sev._sigev_un._tid = static_cast<pid_t>(::gettid());
    timer_t timer;
    if (::timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0) {
      other.fetch_add(1);
      done.store(true);
      return;
    }
    itimerspec its{};
    its.it_value.tv_nsec = 20'000;
    its.it_interval.tv_nsec = 20'000;  // many per sub-buffer, and the writer still moves
    ::timer_settime(timer, 0, &its, nullptr);
    char rec[kTimerLen];
    for (uint64_t seq = 0; seq < kRecords; ++seq) {
      fill(rec, kTimerLen, seq);
      const int rc = rig.prod->write(rec, kTimerLen);
      if (rc == 0) written.fetch_add(1, std::memory_order_relaxed);
      else if (rc == -ENOSPC) refused.fetch_add(1, std::memory_order_relaxed);
      else other.fetch_add(1, std::memory_order_relaxed);
    }
    ::timer_delete(timer);
    done.store(true);
  });
  // Records of the writer and of the handler, told apart by their numbers.
  FixedChecker chk{kTimerLen, {}, std::vector<uint8_t>(kRecords)};
  std::vector<uint8_t> handler_seen(1 << 24);
  uint64_t handler_read = 0, handler_bad = 0;
  std::vector<char> tmp(1 << 15);
  std::string pending;
  for (bool last = false;;) {
    const ssize_t n = rig.cons->read(tmp.data(), tmp.size());
    REQUIRE(n >= 0);
    pending.append(tmp.data(), static_cast<size_t>(n));
    size_t at = 0;
    for (; pending.size() - at >= kTimerLen; at += kTimerLen) {
      uint64_t seq;
      std::memcpy(&seq, pending.data() + at, 8);
      if (seq >= kHandlerSeq) {
        if (!intact(pending.data() + at, kTimerLen, &seq) || seq - kHandlerSeq >= handler_seen.size() ||
            handler_seen[seq - kHandlerSeq]++ != 0)
          ++handler_bad;
        ++handler_read;
      } else {
        chk.feed(pending.data() + at, kTimerLen);
      }
    }
    pending.erase(0, at);
    if (n != 0) continue;
    if (last) break;
    if (done.load()) {
      writer.join();
      rig.prod->flush();
      last = true;
    } else {
      std::this_thread::yield();
    }
  }
  if (writer.joinable()) writer.join();
  const core::BufferStats st = rig.cons->stats();
  MESSAGE("writer wrote " << written.load() << ", handler ran " << g_timer_calls.load()
                          << " times and wrote " << g_timer_written.load() << "; read "
                          << chk.records << " + " << handler_read << ", refused "
                          << refused.load() + g_timer_refused.load());
  CHECK(other.load() == 0);
  CHECK(g_timer_other.load() == 0);
  // The handler did write, often (a loaded machine leaves the reader behind and the buffer full:
  // writes are then refused, counted below).
  CHECK(g_timer_calls.load() > 1000);
  CHECK(g_timer_written.load() > 100);
  CHECK(chk.bad == 0);
  CHECK(chk.twice == 0);
  CHECK(handler_bad == 0);
  CHECK(pending.empty());
  CHECK(chk.records == written.load());
  CHECK(handler_read == g_timer_written.load());
  CHECK(st.lost_wrap == 0);
  CHECK(st.lost_full == refused.load() + g_timer_refused.load());
}

// A reader arms the doorbell while commits run, round after round: the writer commits the next
// record the moment the reader has taken the last one, which is when the reader arms and
// re-checks. Either the re-check sees the record or the writer rings; a round where neither
// happened (the reader waits out its timeout with a record there) is a lost wake-up. On a bound
// buffer the commit has no locked instruction: the arming's membarrier is what makes this hold.
namespace {

// Makes cpu's run queue learn this process's membarrier registration: a child process runs
// there and exits, so that the next thread of ours to run on cpu comes from another mm. The
// kernel refreshes a CPU's membarrier state only on such a switch, and skips a CPU whose state is
// stale in MEMBARRIER_CMD_GLOBAL_EXPEDITED (src/fs/recheck.cc, the daemon's backstop for it);
// this test is about our ordering, given a membarrier that reaches the writer's CPU.
void refresh_membarrier_state(unsigned cpu) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    ::_exit(::sched_setaffinity(0, sizeof one, &one) == 0 ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

}  // namespace

TEST_CASE("a reader arming the doorbell while commits run is never left asleep") {
  bool bind = false, forked = false;
  SUBCASE("unbound: locked commit") { bind = false; }
  SUBCASE("bound: rseq commit, membarrier on arming") { bind = true; }
  // A producer's child writes into the parent's buffers with the parent's registrations: the
  // kernel copies them with the mm at fork (only exec clears them). Were the child left out, the
  // arming's membarrier would skip its CPU, as if there were none.
  SUBCASE("bound, the writer a forked child") {
    bind = forked = true;
  }
  if (ncpu() < 2) {
    MESSAGE("needs two CPUs");
    return;
  }
  // What the writer and the reader share: in shared memory, for a forked writer.
  struct Race {
    std::atomic<uint64_t> rings{0};  // the producer's wake-up calls
    std::atomic<uint64_t> taken{0};  // records the reader has taken
    std::atomic<uint64_t> written{0};
    std::atomic<bool> stop{false};
  };
  test::SharedAnon<Race> race;
  core::ProducerHooks hooks;
  hooks.ctx = race.get();
  hooks.wakeup = [](void* ctx, core::Producer&) {
    // release: pairs with the reader's acquire; the reader then re-reads the buffer itself.
    static_cast<Race*>(ctx)->rings.fetch_add(1, std::memory_order_release);
  };
  test::Rig rig(1 << 16, 4, hooks);
  if (bind && !rig.prod->bind_cpu(0)) {
    MESSAGE("no rseq: the bound case runs as the unbound one");
  }
  if (bind) refresh_membarrier_state(0);
  auto write_loop = [&] {
    char rec[16] = "doorbell record";
    for (uint64_t n = 0; !race->stop.load(std::memory_order_relaxed);) {
      // The moment the reader took record n, commit record n + 1: the reader is arming now.
      if (race->taken.load(std::memory_order_acquire) < n) continue;
      if (rig.prod->write(rec, sizeof rec) == 0) {
        ++n;
        race->written.store(n, std::memory_order_release);
      }
    }
  };
  std::thread writer;
  test::ChildGuard child;
  if (forked) {
    child.pid = ::fork();
    REQUIRE(child.pid >= 0);
    if (child.pid == 0) {
      if (!pin_self(0)) ::_exit(2);
      // The private rseq registration came along too: the kernel refuses this fence (EPERM) to
      // a process that is not registered for it. (Asked directly: after a fork, remote_fence
      // runs the thread on the CPU instead.)
      if (core::rseq::available() &&
          ::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU,
                    0) != 0)
        ::_exit(3);
      write_loop();
      ::_exit(0);
    }
  } else {
    writer = std::thread([&] {
      pin_self(0);
      write_loop();
    });
  }
  pin_self(1);
  uint64_t rounds = 0, slept = 0, lost = 0, got = 0, unproven = 0, starved = 0;
  std::string lost_at;  // when each lost round happened, and what the buffer held then
  std::vector<char> tmp(1 << 16);
  const auto start = std::chrono::steady_clock::now();
  const auto end = start + std::chrono::seconds(3);
  while (std::chrono::steady_clock::now() < end) {
    const ssize_t n = rig.cons->read(tmp.data(), tmp.size());
    REQUIRE(n >= 0);
    if (n > 0) {
      got += static_cast<uint64_t>(n) / 16;
      race->taken.store(got, std::memory_order_release);
      continue;
    }
    ++rounds;
    const uint64_t rung = race->rings.load(std::memory_order_acquire);
    // A failed membarrier leaves the arming unproven: the design then asks for a sleep with a
    // timeout (doorbell.h), so such a round proves nothing either way.
    if (rig.cons->arm_doorbell(false) != 0) {
      ++unproven;
      continue;
    }
    if (rig.cons->data_available()) continue;
    // Asleep: until the producer rings, or 20 ms.
    ++slept;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
    while (race->rings.load(std::memory_order_acquire) == rung &&
           std::chrono::steady_clock::now() < until) {
    }
    if (race->rings.load(std::memory_order_acquire) != rung || !rig.cons->data_available())
      continue;
    // A record is there and nobody rang: lost, if the writer has returned from its write (its
    // load of `waiters` is done). Still inside it, it may have been descheduled between its commit
    // and that load (a loaded machine: 20 ms is a long time, but not forever); then it rings
    // when it runs again.
    const auto grace = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (race->written.load(std::memory_order_acquire) <= got &&
           std::chrono::steady_clock::now() < grace) {
      std::this_thread::yield();
    }
    if (race->written.load(std::memory_order_acquire) <= got) {
      ++starved;  // the writer never got back to return from its write: nothing to conclude
      continue;
    }
    if (race->rings.load(std::memory_order_acquire) == rung) {
      ++lost;
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::steady_clock::now() - start);
      lost_at += " [at " + std::to_string(ms.count()) + " ms, record " + std::to_string(got) +
                 ", written " + std::to_string(race->written.load()) + ", waiters " +
                 std::to_string(rig.buf.header()->waiters.load()) + ", position word " +
                 std::to_string(rig.buf.header()->wpos.load()) + "]";
    }
  }
  race->stop.store(true);
  if (forked) {
    int status = 0;
    REQUIRE(::waitpid(child.pid, &status, 0) == child.pid);
    child.pid = -1;
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);  // 2: not pinned; 3: the child's fence refused
  } else {
    writer.join();
  }
  MESSAGE(std::string(forked ? "bound, forked writer"
                      : bind ? "bound"
                             : "unbound")
          << ": rounds " << rounds << ", slept " << slept << ", records " << got
          << ", lost wake-ups " << lost << lost_at << ", unproven armings " << unproven
          << ", writer starved " << starved);
  // The race was run often. Bound, the membarrier usually gives the writer time to commit
  // before the re-check, so fewer rounds end asleep (hundreds in 3 s on a loaded 2-CPU machine).
  CHECK(slept - starved > 50);
  CHECK(lost == 0);
}

#ifdef RELAYFS_HAVE_RSEQ

namespace {

// A reservation section held up inside: on `cpu`, loads *word, spins `spins` times (an
// interrupt, or a virtual CPU the hypervisor descheduled, which do not preempt the thread and so
// do not restart the section), then stores the loaded value + 1. Returns 1 if it stored, 0 if it
// was restarted (preempted, moved or signalled) or not on `cpu`.
int stalled_section(uint64_t* word, uint32_t cpu, uint64_t spins) {
  relay_fast_rseq_abi* rs = relay_fast_rseq_area();
  __asm__ goto(RELAY_FAST_RSEQ_BEGIN
               "cmpl %[cpu], %[cpu_id]\n\t"
               "jnz %l[other_cpu]\n\t"
               "movq %[word], %%rcx\n\t"
               "movq %[spins], %%rdx\n\t"
               "5:\n\t"
               "decq %%rdx\n\t"
               "jnz 5b\n\t"
               "addq $1, %%rcx\n\t"
               "movq %%rcx, %[word]\n\t" RELAY_FAST_RSEQ_END
               :
               : [rseq_cs] "m"(rs->rseq_cs), [cpu_id] "m"(rs->cpu_id), [cpu] "r"(cpu),
                 [word] "m"(*word), [spins] "r"(spins)
               : "memory", "cc", "rax", "rcx", "rdx"
               : other_cpu);
  return 1;
other_cpu:
  return 0;
}

}  // namespace

// claim_word's remote claim (a CAS to a value of its own, remote_fence, then a check that the
// value is still there) must hold against the sections of every process that writes the buffer:
// a fork child writes its parent's buffers with the same sections. The membarrier restarts only
// the caller's own process's sections; after a fork the fence runs the claimer on the CPU.
TEST_CASE("after a fork, a remote claim holds against a stalled section of the other process") {
  if (ncpu() < 2 || !core::rseq::available()) {
    MESSAGE("needs rseq and two CPUs");
    return;
  }
  constexpr int kTrials = 40;
  constexpr uint64_t kMine = 0x80000000;
  struct Shared {
    std::atomic<uint64_t> word{0};
    std::atomic<int> trial{0}, done{0}, ready{0};
    std::atomic<int> stored{0}, held{0}, overwritten{0};
    std::atomic<bool> quit{false};
  };
  test::SharedAnon<Shared> sh;
  static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t));
  test::ChildGuard child;
  // The child is the writer in its section on CPU 0, the parent's thread on CPU 1 the claimer.
  // (available() above registered the fork handler; this fork is what the fence must notice.)
  child.pid = ::fork();
  REQUIRE(child.pid >= 0);
  if (child.pid == 0) {
    if (!pin_self(0)) ::_exit(2);
    for (int t = 1; t <= kTrials; ++t) {
      sh->word.store(0, std::memory_order_seq_cst);
      while (core::rseq::current_cpu() != 0) ::sched_yield();
      sh->trial.store(t, std::memory_order_seq_cst);
      // About 10 ms at 3 GHz, longer than a scheduler tick (4 ms at HZ=250), so that the claimer
      // moving to CPU 0 preempts the section in most trials and its claim holds; the claimer
      // makes its claim 100 us into it.
      if (stalled_section(reinterpret_cast<uint64_t*>(&sh->word), 0, 30'000'000))
        sh->stored.fetch_add(1, std::memory_order_relaxed);
      sh->done.store(t, std::memory_order_seq_cst);
      while (sh->ready.load(std::memory_order_seq_cst) < t)
        if (sh->quit.load(std::memory_order_relaxed)) ::_exit(4);
    }
    ::_exit(0);
  }
  const bool pinned = on_cpu(1, [&] {
    for (int t = 1; t <= kTrials; ++t) {
      while (sh->trial.load(std::memory_order_seq_cst) < t) {
      }
      const auto start = std::chrono::steady_clock::now();
      while (std::chrono::steady_clock::now() - start < std::chrono::microseconds(100)) {
      }
      uint64_t expect = 0;
      const bool cas = sh->word.compare_exchange_strong(expect, kMine, std::memory_order_seq_cst);
      core::rseq::remote_fence(0);
      const bool held = cas && sh->word.load(std::memory_order_seq_cst) == kMine;
      while (sh->done.load(std::memory_order_seq_cst) < t) {
      }
      if (held) {
        sh->held.fetch_add(1, std::memory_order_relaxed);
        // Held, so no section may store over it any more.
        if (sh->word.load(std::memory_order_seq_cst) != kMine)
          sh->overwritten.fetch_add(1, std::memory_order_relaxed);
      }
      sh->ready.store(t, std::memory_order_seq_cst);
    }
  });
  sh->quit.store(true, std::memory_order_relaxed);
  REQUIRE(pinned);
  int st = 0;
  REQUIRE(::waitpid(child.pid, &st, 0) == child.pid);
  child.pid = -1;
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  MESSAGE("trials " << kTrials << ": sections stored " << sh->stored.load() << ", claims held "
                    << sh->held.load() << ", held claims overwritten " << sh->overwritten.load());
  CHECK(sh->held.load() > 0);
  CHECK(sh->overwritten.load() == 0);
}

#endif
