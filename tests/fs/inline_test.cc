// The inline relay_write of relay.h (relay_write(3), "INLINE FAST PATH"), through a real mount:
// a program built against the header writes records on its CPU's buffer without calling the
// library, falls back to the exported relay_write for everything else, commits remotely when its
// thread moves between the reservation and the commit, and loses nothing, whatever migrations
// and signal handlers do meanwhile.
//
// This program is linked with -Wl,--wrap for relay_write and the two relay_fast_* functions (see
// tests/fs/meson.build), so each call the inline code makes into the library is counted here
// before it goes on to the library.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/membarrier.h>
#include <poll.h>
#include <pthread.h>
#include <relayfs/relay.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

std::atomic<long> g_exported{0};  // calls of the exported relay_write from the inline code
std::atomic<long> g_remote{0};    // relay_fast_commit_remote calls
std::atomic<long> g_events{0};    // relay_fast_commit_events calls

void reset_counts() {
  g_exported = 0;
  g_remote = 0;
  g_events = 0;
}

}  // namespace

extern "C" {
int __real_relay_write(rchan* chan, const void* data, size_t length);
void __real_relay_fast_commit_remote(rchan* chan, unsigned cpu, unsigned slot, unsigned off,
                                     unsigned len, unsigned long long base);
void __real_relay_fast_commit_events(rchan* chan, unsigned cpu, unsigned slot,
                                     unsigned long long v, unsigned ev);

int __wrap_relay_write(rchan* chan, const void* data, size_t length) {
  g_exported.fetch_add(1, std::memory_order_relaxed);
  return __real_relay_write(chan, data, length);
}
void __wrap_relay_fast_commit_remote(rchan* chan, unsigned cpu, unsigned slot, unsigned off,
                                     unsigned len, unsigned long long base) {
  g_remote.fetch_add(1, std::memory_order_relaxed);
  __real_relay_fast_commit_remote(chan, cpu, slot, off, len, base);
}
void __wrap_relay_fast_commit_events(rchan* chan, unsigned cpu, unsigned slot,
                                     unsigned long long v, unsigned ev) {
  g_events.fetch_add(1, std::memory_order_relaxed);
  __real_relay_fast_commit_events(chan, cpu, slot, v, ev);
}
}

namespace {

#ifdef RELAY_FAST_HAVE_RSEQ

// Whether this machine lets the library turn the fast path on: glibc registered rseq for the
// thread, the kernel has the membarrier commands the library registers for, and every possible
// CPU has its buffer (CPU numbers without holes). Then a channel without a descriptor is a bug,
// not a skip.
bool fast_expected() {
  if (relay_fast_cpu() >= 65536) return false;  // rseq not registered: cpu_id is negative
  const long cmds = ::syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  const long need = MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ |
                    MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED;
  if (cmds < 0 || (cmds & need) != need) return false;
  const std::string possible = read_file("/sys/devices/system/cpu/possible");
  return possible == "0\n" || possible == "0-" + std::to_string(ncpus() - 1) + "\n";
}

// A channel the fast path should serve: fails the test if the library left it without the
// descriptor where it could have, skips (false) where it could not.
bool fast_on(rchan* c) {
  if (c->fast != nullptr) return true;
  if (fast_expected()) FAIL_CHECK("the library did not enable the fast path where it could");
  MESSAGE("skipped: no fast path on this machine (rseq, membarrier or CPU numbering)");
  return false;
}

// Unpins the calling thread at the end of a test case.
struct Unpin {
  ~Unpin() {
    cpu_set_t all;
    CPU_ZERO(&all);
    for (unsigned i = 0; i < ncpus(); ++i) CPU_SET(i, &all);
    ::pthread_setaffinity_np(::pthread_self(), sizeof all, &all);
  }
};

// A record of the stress case: who wrote it, its number in the writer's sequence, and a body
// derived from both, so a torn or misplaced record shows.
constexpr size_t kBig = 16384;
struct Rec {
  uint32_t magic;
  uint32_t writer;  // thread index; + 100 for records its signal handler wrote
  uint64_t seq;
  char body[kBig - 16];
};
static_assert(sizeof(Rec) == kBig);
constexpr uint32_t kMagic = 0x52454331;

void fill(Rec* r, uint32_t writer, uint64_t seq) {
  r->magic = kMagic;
  r->writer = writer;
  r->seq = seq;
  std::memset(r->body, static_cast<int>((writer * 131 + seq) & 0xff), sizeof r->body);
}

bool intact(const Rec& r) {
  const char want = static_cast<char>((r.writer * 131 + r.seq) & 0xff);
  for (char c : r.body)
    if (c != want) return false;
  return r.magic == kMagic;
}

// The signal handler of the stress case: writes one record of its own into the buffer of the
// CPU it interrupted, possibly between its thread's reservation and commit.
rchan* g_chan = nullptr;
thread_local uint32_t t_writer = 0;
thread_local uint64_t t_sig_seq = 0;
std::atomic<long> g_sig_failed{0};

void on_signal(int) {
  const int saved = errno;
  Rec r;
  fill(&r, t_writer + 100, t_sig_seq++);
  if (relay_write(g_chan, &r, sizeof r) != 0) g_sig_failed.fetch_add(1);
  errno = saved;
}

#endif

}  // namespace

TEST_CASE("the inline relay_write writes a bound buffer without calling the library") {
#ifndef RELAY_FAST_HAVE_RSEQ
  MESSAGE("skipped: no inline fast path in this build (not x86-64 with glibc rseq, or TSan)");
#else
  Mount m;
  Unpin unpin;
  REQUIRE(pin_to(0));
  relay_options opts{};
  opts.flags = RELAY_OVERWRITE;  // never full: every write can succeed
  rchan* c = relay_open_opts("fast", m.dir.c_str(), 64 * 1024, 4, nullptr, nullptr, &opts);
  REQUIRE(c != nullptr);
  if (!fast_on(c)) {
    relay_close(c);
    return;
  }
  CHECK(c->fast->version == RELAY_FAST_VERSION);
  CHECK(relay_fast_abi == RELAY_FAST_VERSION);
  CHECK(c->fast->n_buffers == c->n_buffers);
  REQUIRE(c->fast->buf[0].on != 0);

  reset_counts();
  constexpr int kN = 100000;
  for (int i = 0; i < kN; ++i) {
    const std::string r = record(i);
    REQUIRE(relay_write(c, r.data(), r.size()) == 0);
  }
  // 11-byte records in 64 KiB sub-buffers: only the switches (one per 5957 records) take the
  // exported path. Without the inline path every one of the kN writes would.
  CHECK(g_exported.load() <= kN / 5957 + 2);
  CHECK(g_exported.load() >= kN / 5957);
  CHECK(g_remote.load() == 0);  // pinned: never moved between reservation and commit

  // Overwrite mode kept the last sub-buffers: a run of consecutive records that ends with the
  // last one written, as the exported path would have left them.
  const relay_stats st = stats_of(c, 0);
  CHECK(st.bytes_produced == static_cast<unsigned long long>(kN) * kRec);
  const std::string got = read_file(m.path("fast0"));
  REQUIRE(got.size() >= 3 * 5957 * kRec);
  REQUIRE(got.size() % kRec == 0);
  const int first = std::atoi(got.substr(4, 6).c_str());
  for (size_t off = 0; off < got.size(); off += kRec)
    if (got.compare(off, kRec, record(first + static_cast<int>(off / kRec))) != 0)
      FAIL("record at byte " << off << " is not record " << first + off / kRec);
  CHECK(first + static_cast<int>(got.size() / kRec) == kN);
  relay_close(c);
#endif
}

TEST_CASE("RELAYFS_INLINE=0, or a library of another RELAY_FAST_VERSION, sends every write to it") {
#ifndef RELAY_FAST_HAVE_RSEQ
  MESSAGE("skipped: no inline fast path in this build");
#else
  Mount m;
  Unpin unpin;
  REQUIRE(pin_to(0));
  constexpr int kN = 2000;
  {
    ::setenv("RELAYFS_INLINE", "0", 1);
    rchan* c = relay_open("off", m.dir.c_str(), 64 * 1024, 4, nullptr, nullptr);
    ::unsetenv("RELAYFS_INLINE");
    REQUIRE(c != nullptr);
    CHECK(c->fast == nullptr);
    reset_counts();
    for (int i = 0; i < kN; ++i) {
      const std::string r = record(i);
      REQUIRE(relay_write(c, r.data(), r.size()) == 0);
    }
    CHECK(g_exported.load() == kN);
    relay_close(c);
  }
  {
    rchan* c = relay_open("old", m.dir.c_str(), 64 * 1024, 4, nullptr, nullptr);
    REQUIRE(c != nullptr);
    if (!fast_on(c)) {
      relay_close(c);
      return;
    }
    // A program built against a header of another version: what it would find is a library
    // whose relay_fast_abi differs. The test changes the library's constant (it is in read-only
    // memory: made writable for the test, and put back).
    auto* abi = const_cast<unsigned*>(&relay_fast_abi);
    const uintptr_t page = reinterpret_cast<uintptr_t>(abi) & ~uintptr_t{4095};
    REQUIRE(::mprotect(reinterpret_cast<void*>(page), 4096, PROT_READ | PROT_WRITE) == 0);
    *abi = RELAY_FAST_VERSION + 1;
    reset_counts();
    std::string want;
    for (int i = 0; i < kN; ++i) {
      const std::string r = record(i);
      want += r;
      REQUIRE(relay_write(c, r.data(), r.size()) == 0);
    }
    CHECK(g_exported.load() == kN);
    *abi = RELAY_FAST_VERSION;
    ::mprotect(reinterpret_cast<void*>(page), 4096, PROT_READ);
    REQUIRE(relay_flush(c) == 0);
    CHECK(read_file(m.path("old0")) == want);
    relay_close(c);
  }
#endif
}

#ifdef RELAY_FAST_HAVE_RSEQ
namespace {

// One round of the migration case on a channel of its own, name: two writers moved between CPU 0
// and CPU 1 and signalled while they write, then every record read back and checked. Returns the
// remote commits the round made (relay_fast_commit_remote), or -1 if the library did not enable
// the fast path.
long migrate_round(Mount& m, const std::string& name) {
  // Room for everything, so that nothing is dropped and every record can be checked: two writers
  // of kPer records, and their signal handlers' records, 16 KiB each, spread over the CPUs'
  // buffers (32 MiB each).
  constexpr uint64_t kPer = 700;
  rchan* c = relay_open(name.c_str(), m.dir.c_str(), 1 << 20, 32, nullptr, nullptr);
  REQUIRE(c != nullptr);
  if (!fast_on(c)) {
    relay_close(c);
    return -1;
  }
  g_chan = c;
  g_sig_failed = 0;
  reset_counts();
  struct sigaction sa {};
  sa.sa_handler = &on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  REQUIRE(::sigaction(SIGUSR1, &sa, nullptr) == 0);

  std::atomic<int> running{2};
  std::atomic<bool> done[2] = {false, false};
  std::atomic<long> failed{0};
  std::vector<pthread_t> tids(2);
  std::vector<std::thread> writers;
  std::atomic<int> started{0};
  for (uint32_t w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      t_writer = w;
      tids[w] = ::pthread_self();
      started.fetch_add(1);
      Rec r;
      for (uint64_t i = 0; i < kPer; ++i) {
        fill(&r, w, i);
        if (relay_write(c, &r, sizeof r) != 0) failed.fetch_add(1);
        // 10 us of work between records, so the run lasts long enough for many migrations;
        // the copy of a 16 KiB record is still a fair share of the time: the window between
        // reservation and commit where a move makes the commit remote.
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(10);
        while (std::chrono::steady_clock::now() < until) {
        }
      }
      // Block the signal before the thread goes: a handler must not run after running hits 0.
      sigset_t s;
      sigemptyset(&s);
      sigaddset(&s, SIGUSR1);
      ::pthread_sigmask(SIG_BLOCK, &s, nullptr);
      done[w] = true;
      running.fetch_sub(1);
    });
  }
  while (started.load() < 2) std::this_thread::yield();
  // The migrator moves each writer between CPU 0 and CPU 1 and signals it, as fast as it can:
  // some moves land in the copy of a record, between the reservation and the commit.
  // At most kSignals signals per writer, so that the handlers' records fit in the buffers however
  // slowly the writers go.
  constexpr unsigned kSignals = 150;
  std::atomic<bool> moved{false};
  std::thread migrator([&] {
    unsigned k = 0;
    while (running.load() > 0) {
      for (uint32_t w = 0; w < 2; ++w) {
        if (done[w]) continue;  // its thread may be gone: no call may name it
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((k + w) & 1, &set);
        if (::pthread_setaffinity_np(tids[w], sizeof set, &set) == 0) moved = true;
        if ((k & 3) == 0 && k / 4 < kSignals) ::pthread_kill(tids[w], SIGUSR1);
      }
      ++k;
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  });
  for (auto& t : writers) t.join();
  migrator.join();
  REQUIRE(moved.load());  // CPUs 0 and 1 are ours to move threads between (the case checks it)
  ::signal(SIGUSR1, SIG_DFL);
  CHECK(failed.load() == 0);
  CHECK(g_sig_failed.load() == 0);
  MESSAGE("remote commits: " << g_remote.load() << ", exported writes: " << g_exported.load()
                             << ", commit events: " << g_events.load());

  const unsigned n = c->n_buffers;
  unsigned long long produced = 0, lost = 0;
  for (unsigned i = 0; i < n; ++i) {
    const relay_stats st = stats_of(c, i);
    produced += st.bytes_produced;
    lost += st.lost_full + st.lost_wrap + st.lost_too_big + st.lost_uncommitted;
  }
  CHECK(lost == 0);
  REQUIRE(relay_close(c) == 0);

  // Every record, read back through the files, exactly once and intact.
  std::map<uint32_t, std::vector<uint64_t>> seen;
  size_t bytes = 0;
  for (unsigned i = 0; i < n; ++i) {
    const std::string data = read_file(m.path(name + std::to_string(i)));
    REQUIRE(data.size() % kBig == 0);
    bytes += data.size();
    for (size_t off = 0; off < data.size(); off += kBig) {
      Rec r;
      std::memcpy(&r, data.data() + off, kBig);
      REQUIRE(intact(r));
      seen[r.writer].push_back(r.seq);
    }
  }
  CHECK(bytes == produced);
  for (uint32_t w = 0; w < 2; ++w) {
    auto& v = seen[w];
    std::sort(v.begin(), v.end());
    CHECK(v.size() == kPer);
    for (uint64_t i = 0; i < v.size(); ++i)
      if (v[i] != i) FAIL("writer " << w << ": record " << i << " missing or doubled");
    auto& s = seen[w + 100];
    std::sort(s.begin(), s.end());
    for (uint64_t i = 0; i < s.size(); ++i)
      if (s[i] != i) FAIL("signal handler of writer " << w << ": record " << i << " missing");
  }
  g_chan = nullptr;
  return g_remote.load();
}

}  // namespace
#endif

TEST_CASE("records written inline while threads migrate and signal handlers write are read once") {
#ifndef RELAY_FAST_HAVE_RSEQ
  MESSAGE("skipped: no inline fast path in this build");
#else
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  REQUIRE(::sched_getaffinity(0, sizeof allowed, &allowed) == 0);
  if (ncpus() < 2 || !CPU_ISSET(0, &allowed) || !CPU_ISSET(1, &allowed)) {
    MESSAGE("skipped: CPUs 0 and 1 are not both ours, no migration to make");
    return;
  }
  Mount m;
  // A move must land between a reservation and its commit for the remote commit to run, which a
  // round of 0.3 s does a few times on a quiet machine; rounds go on until one has (or 10 ran).
  long remote = 0;
  for (int round = 0; round < 10 && remote == 0; ++round) {
    remote = migrate_round(m, "mig" + std::to_string(round) + "-");
    if (remote < 0) {
      MESSAGE("skipped: the library did not enable the fast path");
      return;
    }
  }
  // The migrations did reach the window between reservation and commit: the remote commit ran.
  CHECK(remote > 0);
#endif
}

TEST_CASE("a reader polling a per-CPU file is woken by an inline write, with nothing else to wake it") {
#ifndef RELAY_FAST_HAVE_RSEQ
  MESSAGE("skipped: no inline fast path in this build");
#else
  Mount m({"-o", "recheck_ms=0"});  // no backstop: the ring alone must wake it
  rchan* c = relay_open("wk", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  if (!fast_on(c)) {
    relay_close(c);
    return;
  }
  const int fd = ::open(m.path("wk0").c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(fd >= 0);
  reset_counts();
  // One record, written inline on CPU 0 while the reader sleeps in poll(): the commit finds the
  // doorbell armed and leaves the ring to relay_fast_commit_events. It fits the current
  // sub-buffer, so no switch (and no exported call) rings for it.
  std::thread writer([&] {
    Unpin unpin;
    if (!pin_to(0)) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const std::string r = record(1);
    relay_write(c, r.data(), r.size());
  });
  pollfd p{fd, POLLIN, 0};
  const auto t0 = std::chrono::steady_clock::now();
  const int n = ::poll(&p, 1, 5000);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  writer.join();
  MESSAGE("poll() returned " << n << " after " << waited << " s");
  CHECK(n == 1);
  // Woken by the ring, not found by poll()'s last look when its own timeout ran out (which also
  // returns 1: the kernel polls the file once more then). The write comes after 300 ms.
  CHECK(waited < 4.5);
  CHECK(g_exported.load() == 0);
  CHECK(g_events.load() >= 1);
  char buf[64];
  CHECK(::read(fd, buf, sizeof buf) == static_cast<ssize_t>(kRec));
  ::close(fd);
  relay_close(c);
#endif
}

// The daemon's backstop (src/fs/recheck.cc): a reader waiting for a record is woken within a
// tick even when the commit that brought the record never rang, which is what a ring lost to the
// kernel's membarrier looks like (the writer's load of the doorbell missed the reader's bit).
// Here the writer clears the bit itself (its own mapping) before it writes. Without the backstop
// the reader would sleep until poll()'s timeout, or until the writer's later ring.
TEST_CASE("a reader whose ring never comes is woken by the daemon's backstop") {
#ifndef RELAY_FAST_HAVE_RSEQ
  MESSAGE("skipped: no inline fast path in this build");
#else
  bool use_poll = true;
  bool backstop = true;
  SUBCASE("poll()") {
    use_poll = true;
  }
  SUBCASE("a blocking read") {
    use_poll = false;
  }
  SUBCASE("poll(), -o recheck_ms=0: only the ring wakes it") {
    backstop = false;
  }
  std::vector<std::string> opts;
  if (!use_poll) opts = {"-o", "blocking"};
  if (!backstop) opts = {"-o", "recheck_ms=0"};
  Mount m(opts);
  rchan* c = relay_open("bk", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  if (!fast_on(c)) {
    relay_close(c);
    return;
  }
  // The producer's own writable mapping of the doorbell, which the descriptor points to.
  auto* waiters = const_cast<uint32_t*>(c->fast->buf[0].waiters);
  const int fd = ::open(m.path("bk0").c_str(), O_RDONLY | (use_poll ? O_NONBLOCK : 0));
  REQUIRE(fd >= 0);
  std::atomic<bool> pinned{true};
  std::atomic<bool> cleared{false};
  std::atomic<bool> done{false};
  std::thread writer([&] {
    Unpin unpin;
    if (!pin_to(0)) {
      pinned = false;  // the reader must not wait for good: an ordinary write rings
      const std::string r = record(1);
      relay_write(c, r.data(), r.size());
      return;
    }
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (__atomic_load_n(waiters, __ATOMIC_SEQ_CST) == 0 &&
           std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    // The reader armed; give it time to re-check and go to sleep, so that the record can only
    // reach it by a ring or by the backstop.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    __atomic_store_n(waiters, 0u, __ATOMIC_SEQ_CST);
    cleared = true;
    const std::string r = record(1);
    relay_write(c, r.data(), r.size());
    // 3 s later, a reader still asleep is woken the ordinary way (a test that fails must not
    // hang): the bit set again, the next record's commit rings.
    for (int i = 0; i < 30 && !done.load(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!done.load()) {
      __atomic_store_n(waiters, 1u, __ATOMIC_SEQ_CST);
      const std::string r2 = record(2);
      relay_write(c, r2.data(), r2.size());
    }
  });
  char buf[64];
  const auto t0 = std::chrono::steady_clock::now();
  ssize_t got = -1;
  if (use_poll) {
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, 10000);
    CHECK(n == 1);
  } else {
    got = ::read(fd, buf, sizeof buf);
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  done = true;
  writer.join();
  REQUIRE(pinned.load());
  REQUIRE(cleared.load());
  MESSAGE((use_poll ? "poll()" : "read()") << " returned after " << waited << " s");
  // The record comes about 100 ms after the arming and the tick is 250 ms; without the
  // backstop the reader sleeps until the ring 3 s later.
  if (backstop) {
    CHECK(waited < 2.0);
  } else {
    CHECK(waited >= 2.0);
  }
  if (use_poll) got = ::read(fd, buf, sizeof buf);
  CHECK(got >= static_cast<ssize_t>(kRec));
  ::close(fd);
  relay_close(c);
#endif
}

TEST_CASE("a full no-overwrite buffer drops and counts inline, and takes records again once read") {
#ifndef RELAY_FAST_HAVE_RSEQ
  MESSAGE("skipped: no inline fast path in this build");
#else
  Mount m;
  Unpin unpin;
  REQUIRE(pin_to(0));
  rchan* c = relay_open("full", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  if (!fast_on(c)) {
    relay_close(c);
    return;
  }
  CHECK(c->fast->buf[0].drop_full != 0);
  // Fill it: 4 sub-buffers of 372 records; the write that finds no room left is refused by the
  // library (the switch), which leaves the buffer stopped.
  int written = 0;
  while (written < 100000) {
    const std::string r = record(written);
    if (relay_write(c, r.data(), r.size()) != 0) break;
    ++written;
  }
  REQUIRE(errno == ENOSPC);
  CHECK(written == 4 * (4096 / static_cast<int>(kRec)));
  const unsigned long long lost0 = stats_of(c, 0).lost_full;
  CHECK(lost0 == 1);
  reset_counts();
  constexpr int kDrops = 1000;
  for (int i = 0; i < kDrops; ++i) {
    errno = 0;
    const std::string r = record(written + i);
    CHECK(relay_write(c, r.data(), r.size()) == -1);
    CHECK(errno == ENOSPC);
  }
  CHECK(g_exported.load() == 0);  // each drop decided and counted inline
  CHECK(stats_of(c, 0).lost_full == lost0 + kDrops);
  // What does not fit a sub-buffer at all is still the library's (lost_too_big, EMSGSIZE).
  const std::string huge(8192, 'x');
  CHECK(relay_write(c, huge.data(), huge.size()) == -1);
  CHECK(errno == EMSGSIZE);
  CHECK(g_exported.load() == 1);
  // A reader frees the buffer: the next write switches (through the library) and lands.
  CHECK(read_file(m.path("full0")).size() == static_cast<size_t>(written) * kRec);
  const std::string r = record(0);
  CHECK(relay_write(c, r.data(), r.size()) == 0);
  relay_close(c);
#endif
}
