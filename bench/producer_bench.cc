// Producer benchmark: the cost of one record written through the core, against one write(2) per
// record into a pipe drained by `cat`, measured in the same run.
//
// Configurations (a reader thread drains every buffer concurrently in all of them). The reader is
// woken the way the spec wakes poll(): when a sub-buffer is produced ("boundary"); a second row
// shows a reader that re-reads continuously ("spinning"), the worst case for the writer's caches.
//   1 thread,  per-CPU buffer   the writer pinned to CPU 0, the reader to CPU 1
//   2 threads, per-CPU buffers  one writer pinned to each CPU, each on its own buffer (relay's
//   design) 2 threads, shared buffer    both writers on one buffer (a global channel)
// Each buffer has the geometry of a typical relay channel, 8 sub-buffers of 1 MiB, pre-faulted;
// the reader keeps it drained, and records it could not take are reported as lost. (A buffer big
// enough to hold a whole run would mostly time DRAM write bandwidth: on the 2-vCPU development
// machine a 64-byte store stream into 64 MiB costs ~12 ns by itself.) Each figure is the median of
// several runs; machines are shared and noisy, so compare ratios within one run rather than
// absolute times across runs.
//
// Usage: producer_bench [--runs N] [--records N] [--sizes 16,64,...] [--subbuf-size B] [--n-subbufs
// N]
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/buffer.h"
#include "core/consumer.h"
#include "core/producer.h"

extern char** environ;

using namespace relayfs::core;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  int runs = 5;
  uint64_t records = 2'000'000;
  uint64_t pipe_records = 200'000;
  std::vector<uint32_t> sizes = {16, 64, 256, 1024};
};

void pin(int cpu) {
  const int ncpu = static_cast<int>(std::thread::hardware_concurrency());
  if (ncpu <= 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % ncpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Run {
  double ns_per_record;  // per write() call, accepted or dropped
  double written_per_s;  // records accepted per second, all writers together
  uint64_t lost;
};

// One timed run: `writers` threads write `per_writer` records of `size` bytes; `shared` puts them
// all on one buffer, otherwise each has its own. A reader thread drains everything meanwhile.
enum class Reader { kBoundary, kSpinning };

uint64_t o_subbuf_size = 1 << 20;
uint64_t o_n_subbufs = 8;

Run run_relay(uint32_t size, int writers, bool shared, uint64_t per_writer, Reader mode) {
  const int nbuf = shared ? 1 : writers;
  Geometry g;
  if (make_geometry(o_subbuf_size, o_n_subbufs, &g) != 0) std::abort();
  std::vector<Buffer> bufs(nbuf);
  std::vector<std::unique_ptr<Producer>> prods;
  std::vector<std::unique_ptr<Consumer>> cons;
  for (auto& b : bufs) {
    if (Buffer::create(g, "bench", &b) != 0) std::abort();
    std::memset(b.data(), 0, g.data_size());  // pre-fault
    prods.push_back(std::make_unique<Producer>(b));
    cons.push_back(std::make_unique<Consumer>(b));
  }
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::thread reader([&] {
    if (writers == 1) pin(1);
    std::vector<char> sink(1 << 20);
    uint64_t seen = 0;
    for (;;) {
      const bool last = stop.load(std::memory_order_acquire);
      size_t got = 0;
      for (auto& c : cons)
        got += static_cast<size_t>(std::max<ssize_t>(0, c->read(sink.data(), sink.size())));
      if (got != 0) continue;
      if (last) break;
      if (mode == Reader::kSpinning) continue;
      // Sleep until the next sub-buffer is produced, checking every 50 us: the reader leaves the
      // CPUs to the writers, and `produced`, written once per sub-buffer, is all it looks at.
      for (;;) {
        uint64_t produced = 0;
        for (auto& b : bufs) produced += b.header()->produced.load(std::memory_order_acquire);
        if (produced != seen || stop.load(std::memory_order_acquire)) {
          seen = produced;
          break;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  });
  std::vector<double> elapsed(writers);
  std::vector<std::thread> threads;
  std::atomic<bool> go{false};
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      pin(w);
      Producer& p = *prods[shared ? 0 : w];
      std::vector<char> rec(size, static_cast<char>('a' + w));
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      const auto t0 = Clock::now();
      for (uint64_t i = 0; i < per_writer; ++i) {
        std::memcpy(rec.data(), &i, sizeof i);
        p.write(rec.data(), size);
      }
      elapsed[w] = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    });
  }
  while (ready.load() != writers) {
  }
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  for (auto& p : prods) p->flush();
  stop.store(true, std::memory_order_release);
  reader.join();
  uint64_t lost = 0;
  for (auto& c : cons) {
    const BufferStats st = c->stats();
    lost += st.lost_full + st.lost_too_big + st.lost_wrap;
  }
  // Cost per record as the writers see it: wall time of the slowest writer over its records.
  const double slowest = *std::max_element(elapsed.begin(), elapsed.end());
  const double written = static_cast<double>(per_writer) * writers - static_cast<double>(lost);
  return {slowest / static_cast<double>(per_writer), written / (slowest * 1e-9), lost};
}

// Baseline: one write(2) per record into a pipe whose other end `cat` copies to /dev/null.
double run_pipe(uint32_t size, uint64_t records) {
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addclose(&fa, fds[1]);
  char cat[] = "cat";
  char* argv[] = {cat, nullptr};
  pid_t pid;
  if (posix_spawnp(&pid, "cat", &fa, nullptr, argv, environ) != 0) std::abort();
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[0]);
  std::vector<char> rec(size, 'p');
  const auto t0 = Clock::now();
  for (uint64_t i = 0; i < records; ++i) {
    std::memcpy(rec.data(), &i, sizeof i);
    if (::write(fds[1], rec.data(), size) != static_cast<ssize_t>(size)) std::abort();
  }
  const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
  ::close(fds[1]);
  int status;
  ::waitpid(pid, &status, 0);
  return ns / static_cast<double>(records);
}

std::vector<uint32_t> parse_sizes(const char* s) {
  std::vector<uint32_t> v;
  for (const char* p = s; *p;) {
    v.push_back(static_cast<uint32_t>(std::strtoul(p, const_cast<char**>(&p), 10)));
    if (*p == ',') ++p;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--runs" && i + 1 < argc)
      o.runs = std::max(1, std::atoi(argv[++i]));
    else if (a == "--records" && i + 1 < argc)
      o.records = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--sizes" && i + 1 < argc)
      o.sizes = parse_sizes(argv[++i]);
    else if (a == "--subbuf-size" && i + 1 < argc)
      o_subbuf_size = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--n-subbufs" && i + 1 < argc)
      o_n_subbufs = std::strtoull(argv[++i], nullptr, 10);
    else {
      std::fprintf(stderr,
                   "usage: %s [--runs N] [--records N] [--sizes 16,64,...] [--subbuf-size B] "
                   "[--n-subbufs N]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf("relayfs producer benchmark: median of %d runs, %llu records per writer per run\n",
              o.runs, static_cast<unsigned long long>(o.records));
  std::printf(
      "ns/write: cost of one write() call as the writer sees it (accepted or dropped).\n"
      "written: share of records accepted (the rest were dropped and counted as lost).\n"
      "scaling: records written per second against 1 thread.\n");
  std::printf("CPUs: %u. Buffers of %llu x %llu bytes; a reader thread drains them throughout.\n\n",
              std::thread::hardware_concurrency(), static_cast<unsigned long long>(o_n_subbufs),
              static_cast<unsigned long long>(o_subbuf_size));
  std::printf("%-6s %-30s %10s %9s %12s %12s %10s\n", "record", "configuration", "ns/write",
              "written", "pipe ns/rec", "pipe/relayfs", "scaling");
  for (uint32_t size : o.sizes) {
    std::vector<double> pipe_ns;
    for (int r = 0; r < o.runs; ++r) pipe_ns.push_back(run_pipe(size, o.pipe_records));
    const double pipe = median(pipe_ns);
    struct Config {
      const char* name;
      int writers;
      bool shared;
      Reader reader;
    } configs[] = {{"1 thread, per-CPU buffer", 1, false, Reader::kBoundary},
                   {"2 threads, per-CPU buffers", 2, false, Reader::kBoundary},
                   {"2 threads, one shared buffer", 2, true, Reader::kBoundary},
                   {"1 thread, spinning reader", 1, false, Reader::kSpinning}};
    double one_thread = 0;
    for (const Config& c : configs) {
      std::vector<double> ns, rate;
      uint64_t lost = 0;
      for (int r = 0; r < o.runs; ++r) {
        const Run run = run_relay(size, c.writers, c.shared, o.records, c.reader);
        ns.push_back(run.ns_per_record);
        rate.push_back(run.written_per_s);
        lost += run.lost;
      }
      const double m = median(ns);
      const double written_rate = median(rate);
      if (c.writers == 1 && c.reader == Reader::kBoundary) one_thread = written_rate;
      const double attempted = static_cast<double>(o.records) * c.writers * o.runs;
      std::printf("%4u B %-30s %10.1f %8.1f%% %12.1f %11.0fx", size, c.name, m,
                  100.0 * (attempted - static_cast<double>(lost)) / attempted, pipe, pipe / m);
      if (c.writers > 1 && c.reader == Reader::kBoundary)
        std::printf(" %9.2fx", written_rate / one_thread);
      std::printf("\n");
    }
  }
  return 0;
}
