// One producer process of the soak test (soak_test.cc runs 16 of them):
//
//   soak_producer MOUNT PRODUCER SECONDS SLOTS SEED
//
// keeps SLOTS channels open at all times, each for a random lifetime of 1-6 s, then closes it and
// opens the next one; even slots are no-overwrite channels, odd slots overwrite channels. One
// writer thread per CPU this process may run on, pinned there, writes bursts of tagged records
// (tagged.h) of 40..2000 bytes, and now and then one larger than a sub-buffer, into every open
// channel. At each close it prints one line per buffer on stdout with what it attempted and what
// relay_write answered:
//
//   buf chan=N name=BASE buf=I overwrite=0|1 subbuf=S n=K attempts=A ok=W okbytes=B nospc=X
//       msgsize=Y other=Z close=0
//
// "openfail name=BASE errno=E" for a relay_open that failed (the slot tries again 100 ms later),
// and "done" when SECONDS are up and every channel is closed. Exits 1 (message on stderr) if a
// writer cannot be pinned.
#include <relayfs/relay.h>
#include <sched.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "../fs/tagged.h"

namespace {

using relayfs::test::TaggedHeader;
using Clock = std::chrono::steady_clock;

constexpr unsigned kBurst = 4;      // records per channel per round of a writer
constexpr auto kPause = std::chrono::microseconds(1500);  // between rounds: ~3k rounds/s/thread

// What the writers did to one buffer of the current channel.
struct BufCounts {
  std::atomic<uint64_t> attempts{0}, ok{0}, okbytes{0}, nospc{0}, msgsize{0}, other{0};
};

struct Slot {
  std::shared_mutex mu;  // writers hold it shared while writing; open/close hold it exclusive
  rchan* chan = nullptr;
  uint32_t number = 0;
  bool overwrite = false;
  size_t subbuf = 0, n = 0;
  std::string base;
  std::unique_ptr<BufCounts[]> counts;
  std::vector<uint64_t> next_seq;  // per writer thread; only that thread touches its entry
  Clock::time_point close_at;
};

unsigned g_producer = 0;
unsigned g_ncpu_conf = 1;
std::atomic<bool> g_stop{false};

void open_slot(Slot& s, unsigned index, uint32_t number, std::mt19937& rng, size_t nthreads) {
  static const size_t kSubbufs[] = {4096, 8192, 16384};
  s.number = number;
  s.overwrite = index % 2 == 1;
  s.subbuf = kSubbufs[rng() % 3];
  s.n = rng() % 2 ? 4 : 8;
  s.base = "c" + std::to_string(number) + "_";
  s.counts.reset(new BufCounts[g_ncpu_conf]);
  s.next_seq.assign(nthreads, 0);
  relay_options o{};
  o.flags = s.overwrite ? RELAY_OVERWRITE : 0;
  rchan_callbacks cb{};
  s.chan = relay_open_opts(s.base.c_str(), nullptr, s.subbuf, s.n, &cb, nullptr, &o);
  if (!s.chan) {
    // Reported for the test to count; the slot tries again with the next channel shortly.
    std::printf("openfail name=%s errno=%d\n", s.base.c_str(), errno);
    std::fflush(stdout);
    timespec now;
    ::clock_gettime(CLOCK_REALTIME, &now);
    std::fprintf(stderr, "soak_producer %u: %ld.%03ld: relay_open %s: %s\n", g_producer,
                 static_cast<long>(now.tv_sec % 86400), now.tv_nsec / 1000000, s.base.c_str(),
                 std::strerror(errno));
    s.close_at = Clock::now() + std::chrono::milliseconds(100);
    return;
  }
  s.close_at = Clock::now() + std::chrono::milliseconds(1000 + rng() % 5000);
}

void close_slot(Slot& s) {
  if (!s.chan) return;  // its relay_open failed
  const int rc = relay_close(s.chan);
  const int err = rc == 0 ? 0 : errno;
  s.chan = nullptr;
  for (unsigned i = 0; i < g_ncpu_conf; ++i) {
    const BufCounts& c = s.counts[i];
    std::printf(
        "buf chan=%u name=%s%u buf=%u overwrite=%d subbuf=%zu n=%zu attempts=%llu ok=%llu "
        "okbytes=%llu nospc=%llu msgsize=%llu other=%llu close=%d\n",
        s.number, s.base.c_str(), i, i, s.overwrite ? 1 : 0, s.subbuf, s.n,
        static_cast<unsigned long long>(c.attempts.load()),
        static_cast<unsigned long long>(c.ok.load()),
        static_cast<unsigned long long>(c.okbytes.load()),
        static_cast<unsigned long long>(c.nospc.load()),
        static_cast<unsigned long long>(c.msgsize.load()),
        static_cast<unsigned long long>(c.other.load()), err);
  }
  std::fflush(stdout);
}

void writer(unsigned thread, unsigned cpu, std::vector<std::unique_ptr<Slot>>* slots,
            std::atomic<int>* pinned) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0 || ::sched_getcpu() != static_cast<int>(cpu)) {
    pinned->store(-1);
    return;
  }
  pinned->fetch_add(1);
  std::mt19937 rng(g_producer * 7919u + thread);
  std::vector<char> rec(1 << 17);
  while (!g_stop.load(std::memory_order_relaxed)) {
    for (auto& sp : *slots) {
      Slot& s = *sp;
      std::shared_lock lk(s.mu, std::try_to_lock);
      if (!lk.owns_lock() || !s.chan) continue;
      for (unsigned k = 0; k < kBurst; ++k) {
        TaggedHeader h{};
        // 1 record in 1000 is larger than a sub-buffer: EMSGSIZE, counted in lost_too_big.
        h.len = rng() % 1000 == 0 ? static_cast<uint32_t>(s.subbuf + 1 + rng() % 100)
                                  : 40 + rng() % 1961;
        h.producer = g_producer;
        h.channel = s.number;
        h.buffer = cpu;  // pinned: relay_write picks this CPU's buffer
        h.thread = thread;
        h.seq = s.next_seq[thread];
        relayfs::test::tagged_make(h, rec.data());
        BufCounts& c = s.counts[cpu];
        c.attempts.fetch_add(1, std::memory_order_relaxed);
        if (relay_write(s.chan, rec.data(), h.len) == 0) {
          ++s.next_seq[thread];  // only committed records take a number: no-overwrite reads are gapless
          c.ok.fetch_add(1, std::memory_order_relaxed);
          c.okbytes.fetch_add(h.len, std::memory_order_relaxed);
        } else if (errno == ENOSPC) {
          c.nospc.fetch_add(1, std::memory_order_relaxed);
        } else if (errno == EMSGSIZE) {
          c.msgsize.fetch_add(1, std::memory_order_relaxed);
        } else {
          c.other.fetch_add(1, std::memory_order_relaxed);
        }
      }
    }
    std::this_thread::sleep_for(kPause);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: soak_producer MOUNT PRODUCER SECONDS SLOTS SEED\n");
    return 2;
  }
  ::setenv("RELAYFS_MOUNT", argv[1], 1);
  g_producer = static_cast<unsigned>(std::atoi(argv[2]));
  const double seconds = std::atof(argv[3]);
  const unsigned nslots = static_cast<unsigned>(std::atoi(argv[4]));
  std::mt19937 rng(static_cast<unsigned>(std::atoi(argv[5])) * 1000003u + g_producer);
  g_ncpu_conf = static_cast<unsigned>(std::max(1, get_nprocs_conf()));

  // One writer per CPU we may run on.
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  if (::sched_getaffinity(0, sizeof allowed, &allowed) != 0) return 1;
  std::vector<unsigned> cpus;
  for (unsigned c = 0; c < g_ncpu_conf; ++c)
    if (CPU_ISSET(c, &allowed)) cpus.push_back(c);

  std::vector<std::unique_ptr<Slot>> slots;
  uint32_t opened = 0;
  for (unsigned i = 0; i < nslots; ++i) {
    slots.push_back(std::make_unique<Slot>());
    open_slot(*slots.back(), i, g_producer * 100000 + opened++, rng, cpus.size());
  }
  std::atomic<int> pinned{0};
  std::vector<std::thread> writers;
  for (unsigned t = 0; t < cpus.size(); ++t)
    writers.emplace_back(writer, t, cpus[t], &slots, &pinned);

  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end && pinned.load() >= 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    for (unsigned i = 0; i < nslots; ++i) {
      Slot& s = *slots[i];
      if (Clock::now() < s.close_at) continue;
      std::unique_lock lk(s.mu);  // no writer is inside relay_write on this channel now
      close_slot(s);
      open_slot(s, i, g_producer * 100000 + opened++, rng, cpus.size());
    }
  }
  g_stop = true;
  for (auto& t : writers) t.join();
  if (pinned.load() < 0) {
    std::fprintf(stderr, "soak_producer %u: cannot pin a writer thread\n", g_producer);
    return 1;
  }
  for (auto& s : slots) close_slot(*s);
  std::printf("done\n");
  return 0;
}
