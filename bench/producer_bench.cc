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
#include <sys/mman.h>
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

// rseq: per-CPU buffers bound to their writer's CPU (Producer::bind_cpu), as the library binds
// them; otherwise every reservation is a CAS.
Run run_relay(uint32_t size, int writers, bool shared, uint64_t per_writer, Reader mode,
              bool rseq = true) {
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
  const unsigned ncpu = std::max(1u, std::thread::hardware_concurrency());
  if (rseq && !shared)
    for (int w = 0; w < nbuf; ++w) prods[w]->bind_cpu(static_cast<unsigned>(w) % ncpu);
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

// Spawns `cat` reading the pipe's read end and copying to /dev/null; cpu >= 0 pins it there.
pid_t spawn_cat(int rfd, int wfd, int cpu) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, rfd, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addclose(&fa, wfd);
  char cat[] = "cat";
  char* argv[] = {cat, nullptr};
  pid_t pid;
  if (posix_spawnp(&pid, "cat", &fa, nullptr, argv, environ) != 0) std::abort();
  posix_spawn_file_actions_destroy(&fa);
  const int ncpu = static_cast<int>(std::thread::hardware_concurrency());
  if (cpu >= 0 && ncpu > 1) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu % ncpu, &set);
    sched_setaffinity(pid, sizeof set, &set);
  }
  return pid;
}

// Runs `writers` pinned threads, each calling body(w, i) for i in [0, per_writer) once all are
// ready; returns the wall time of the slowest writer, in ns.
template <class Body>
double run_writers(int writers, uint64_t per_writer, Body body) {
  std::vector<double> elapsed(writers);
  std::vector<std::thread> threads;
  std::atomic<bool> go{false};
  std::atomic<int> ready{0};
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      pin(w);
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) {
      }
      const auto t0 = Clock::now();
      for (uint64_t i = 0; i < per_writer; ++i) body(w, i);
      elapsed[w] = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    });
  }
  while (ready.load() != writers) {
  }
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
  return *std::max_element(elapsed.begin(), elapsed.end());
}

// Baseline 1: one write(2) per record into a pipe whose other end a real `cat` process copies to
// /dev/null. With 2 writers both write the one pipe (writes <= PIPE_BUF are atomic). The pipe
// blocks instead of dropping, so every record is accepted; a full pipe makes the writer wait for
// cat, which is part of what write(2) costs. In the 1-thread case cat is pinned to CPU 1.
Run run_pipe(uint32_t size, int writers, uint64_t per_writer) {
  int fds[2];
  if (::pipe(fds) != 0) std::abort();
  const pid_t pid = spawn_cat(fds[0], fds[1], writers == 1 ? 1 : -1);
  ::close(fds[0]);
  std::vector<std::vector<char>> recs;
  for (int w = 0; w < writers; ++w) recs.emplace_back(size, static_cast<char>('p' + w));
  const double slowest = run_writers(writers, per_writer, [&](int w, uint64_t i) {
    std::memcpy(recs[w].data(), &i, sizeof i);
    if (::write(fds[1], recs[w].data(), size) != static_cast<ssize_t>(size)) std::abort();
  });
  ::close(fds[1]);
  int status;
  ::waitpid(pid, &status, 0);
  const double written = static_cast<double>(per_writer) * writers;
  return {slowest / static_cast<double>(per_writer), written / (slowest * 1e-9), 0};
}

// Baseline 2: the classic locked ring in shared memory. One MAP_SHARED region holds a pthread
// mutex (PTHREAD_PROCESS_SHARED), the head/tail byte counters and a byte ring as big as the
// relay buffer (n_subbufs * subbuf_size), pre-faulted. A writer locks, copies its record in
// (wrapping at the end of the ring) or, if there is no room, counts it as dropped like relayfs
// does, and unlocks. Records are raw bytes without framing, as in relay. The reader thread takes
// the same lock to read head, copies [tail, head) out without it (writers never touch that span)
// and takes the lock again to advance tail; it checks every 50 us, as the relayfs reader does, and
// drains everything it finds, so it holds the lock only for two short sections per batch. All
// writers share this one ring: a mutex ring is one ring per channel, not one per CPU.
struct MutexRing {
  pthread_mutex_t mu;
  uint64_t head;  // bytes written, under mu
  uint64_t tail;  // bytes consumed, under mu
  uint64_t cap;
  uint64_t dropped;  // records refused for lack of room, under mu
};
constexpr size_t kRingDataOffset = 4096;  // the ring's bytes start on the next page

Run run_mutex_ring(uint32_t size, int writers, uint64_t per_writer) {
  const uint64_t cap = o_subbuf_size * o_n_subbufs;
  const size_t map_len = kRingDataOffset + cap;
  void* mem = ::mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) std::abort();
  std::memset(mem, 0, map_len);  // pre-fault
  auto* ring = static_cast<MutexRing*>(mem);
  char* const data = static_cast<char*>(mem) + kRingDataOffset;
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  if (pthread_mutex_init(&ring->mu, &ma) != 0) std::abort();
  pthread_mutexattr_destroy(&ma);
  ring->cap = cap;

  std::atomic<bool> stop{false};
  std::thread reader([&] {
    if (writers == 1) pin(1);
    std::vector<char> sink(1 << 20);
    for (;;) {
      const bool last = stop.load(std::memory_order_acquire);
      pthread_mutex_lock(&ring->mu);
      const uint64_t head = ring->head;
      const uint64_t tail = ring->tail;
      pthread_mutex_unlock(&ring->mu);
      if (head == tail) {
        if (last) break;
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        continue;
      }
      uint64_t t = tail;
      while (t != head) {
        const uint64_t pos = t % cap;
        const uint64_t n = std::min({head - t, cap - pos, static_cast<uint64_t>(sink.size())});
        std::memcpy(sink.data(), data + pos, n);
        t += n;
      }
      pthread_mutex_lock(&ring->mu);
      ring->tail = head;
      pthread_mutex_unlock(&ring->mu);
    }
  });
  std::vector<std::vector<char>> recs;
  for (int w = 0; w < writers; ++w) recs.emplace_back(size, static_cast<char>('m' + w));
  const double slowest = run_writers(writers, per_writer, [&](int w, uint64_t i) {
    char* rec = recs[w].data();
    std::memcpy(rec, &i, sizeof i);
    pthread_mutex_lock(&ring->mu);
    if (ring->cap - (ring->head - ring->tail) < size) {
      ++ring->dropped;
    } else {
      const uint64_t pos = ring->head % ring->cap;
      const uint64_t first = std::min<uint64_t>(size, ring->cap - pos);
      std::memcpy(data + pos, rec, first);
      if (first < size) std::memcpy(data, rec + first, size - first);
      ring->head += size;
    }
    pthread_mutex_unlock(&ring->mu);
  });
  stop.store(true, std::memory_order_release);
  reader.join();
  const uint64_t lost = ring->dropped;
  pthread_mutex_destroy(&ring->mu);
  ::munmap(mem, map_len);
  const double written = static_cast<double>(per_writer) * writers - static_cast<double>(lost);
  return {slowest / static_cast<double>(per_writer), written / (slowest * 1e-9), lost};
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
    else if (a == "--pipe-records" && i + 1 < argc)
      o.pipe_records = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--sizes" && i + 1 < argc)
      o.sizes = parse_sizes(argv[++i]);
    else if (a == "--subbuf-size" && i + 1 < argc)
      o_subbuf_size = std::strtoull(argv[++i], nullptr, 10);
    else if (a == "--n-subbufs" && i + 1 < argc)
      o_n_subbufs = std::strtoull(argv[++i], nullptr, 10);
    else {
      std::fprintf(stderr,
                   "usage: %s [--runs N] [--records N] [--pipe-records N] [--sizes 16,64,...] "
                   "[--subbuf-size B] "
                   "[--n-subbufs N]\n",
                   argv[0]);
      return 2;
    }
  }
  std::printf("relayfs producer benchmark: median of %d runs, %llu records per writer per run "
              "(pipe: %llu)\n",
              o.runs, static_cast<unsigned long long>(o.records),
              static_cast<unsigned long long>(o.pipe_records));
  std::printf(
      "ns/rec: cost of one record as each writer sees it (slowest writer's wall time / its "
      "records,\n"
      "  accepted or dropped). ok: share of records accepted (relayfs and the mutex ring drop "
      "and count\n"
      "  when full; the pipe blocks and takes all). Baselines run in the same run, interleaved "
      "with relayfs:\n"
      "  mutex = locked byte ring in MAP_SHARED memory (PTHREAD_PROCESS_SHARED mutex), one "
      "ring for all writers;\n"
      "  pipe = one write(2) per record into a pipe drained by a `cat > /dev/null` process.\n"
      "  2-thread rows compare with the 2-thread baselines. x mutex, x pipe: baseline ns / "
      "relayfs ns, median of\n"
      "  the per-run ratios. scal: records accepted per second / the same at 1 thread "
      "(relayfs: its per-CPU row).\n");
  std::printf("CPUs: %u. Writers pinned one per CPU; the 1-thread reader (and cat) pinned to CPU "
              "1. Buffers of %llu x %llu bytes.\n\n",
              std::thread::hardware_concurrency(), static_cast<unsigned long long>(o_n_subbufs),
              static_cast<unsigned long long>(o_subbuf_size));
  std::printf("%-6s %-28s | %7s %6s %5s | %7s %6s %5s | %7s %5s | %7s %6s\n", "record",
              "relayfs configuration", "ns/rec", "ok", "scal", "mutex", "ok", "scal", "pipe",
              "scal", "x mutex", "x pipe");
  struct Stat {
    std::vector<double> ns, rate;
    uint64_t lost = 0;
    uint64_t attempted = 0;
    void add(const Run& r, uint64_t att) {
      ns.push_back(r.ns_per_record);
      rate.push_back(r.written_per_s);
      lost += r.lost;
      attempted += att;
    }
    double ok() const {
      return 100.0 * static_cast<double>(attempted - lost) / static_cast<double>(attempted);
    }
  };
  struct Config {
    const char* name;
    int writers;
    bool shared;
    Reader reader;
    bool rseq;
  };
  // The first two rows are the library's configuration (per-CPU buffers, rseq reservations);
  // the "CAS" rows are the same without rseq, to show what that lever buys.
  const Config configs[] = {{"1 thread, per-CPU buffer", 1, false, Reader::kBoundary, true},
                            {"2 threads, per-CPU buffers", 2, false, Reader::kBoundary, true},
                            {"1 thread, per-CPU, CAS", 1, false, Reader::kBoundary, false},
                            {"2 threads, per-CPU, CAS", 2, false, Reader::kBoundary, false},
                            {"2 threads, one shared buffer", 2, true, Reader::kBoundary, false},
                            {"1 thread, spinning reader", 1, false, Reader::kSpinning, true}};
  constexpr int kConfigs = sizeof configs / sizeof configs[0];
  double t64_ns = 0, t64_scal = 0, t64_pipe = 0, t64_mutex = 0;
  for (uint32_t size : o.sizes) {
    // Warm-up, not measured: page cache of cat, allocator, CPU frequency, the code itself.
    for (int w = 1; w <= 2; ++w) {
      run_relay(size, w, false, o.records / 10, Reader::kBoundary);
      run_mutex_ring(size, w, o.records / 10);
      run_pipe(size, w, o.pipe_records / 10);
    }
    Stat pipe[2], mutex[2], relay[kConfigs];
    for (int r = 0; r < o.runs; ++r) {
      for (int w = 1; w <= 2; ++w) {
        pipe[w - 1].add(run_pipe(size, w, o.pipe_records), o.pipe_records * w);
        mutex[w - 1].add(run_mutex_ring(size, w, o.records), o.records * w);
      }
      for (int c = 0; c < kConfigs; ++c)
        relay[c].add(run_relay(size, configs[c].writers, configs[c].shared, o.records,
                               configs[c].reader, configs[c].rseq),
                     o.records * configs[c].writers);
    }
    for (int c = 0; c < kConfigs; ++c) {
      const Config& cf = configs[c];
      const int wi = cf.writers - 1;
      std::vector<double> x_mutex, x_pipe, scal, mscal, pscal;
      for (int r = 0; r < o.runs; ++r) {
        x_mutex.push_back(mutex[wi].ns[r] / relay[c].ns[r]);
        x_pipe.push_back(pipe[wi].ns[r] / relay[c].ns[r]);
        // Scaling against the 1-thread row of the same kind (rseq or CAS).
        scal.push_back(relay[c].rate[r] / relay[cf.rseq ? 0 : 2].rate[r]);
        mscal.push_back(mutex[wi].rate[r] / mutex[0].rate[r]);
        pscal.push_back(pipe[wi].rate[r] / pipe[0].rate[r]);
      }
      char s_scal[16] = "", s_mscal[16] = "", s_pscal[16] = "";
      if (cf.writers > 1) {
        std::snprintf(s_scal, sizeof s_scal, "%.2fx", median(scal));
        std::snprintf(s_mscal, sizeof s_mscal, "%.2fx", median(mscal));
        std::snprintf(s_pscal, sizeof s_pscal, "%.2fx", median(pscal));
      }
      std::printf("%4u B %-28s | %7.1f %5.1f%% %5s | %7.1f %5.1f%% %5s | %7.1f %5s | %6.1fx %5.0fx\n",
                  size, cf.name, median(relay[c].ns), relay[c].ok(), s_scal, median(mutex[wi].ns),
                  mutex[wi].ok(), s_mscal, median(pipe[wi].ns), s_pscal, median(x_mutex),
                  median(x_pipe));
      if (size == 64 && c == 0) {
        t64_ns = median(relay[c].ns);
        t64_pipe = median(x_pipe);
        t64_mutex = median(x_mutex);
      }
      if (size == 64 && c == 1) t64_scal = median(scal);
    }
  }
  if (t64_ns != 0) {
    std::printf("\nTargets (64-byte records, issue 5):\n");
    std::printf("  1 thread   <= 15 ns/record       : %6.1f ns   %s\n", t64_ns,
                t64_ns <= 15 ? "met" : "MISSED");
    std::printf("  2 threads  >= 1.8x throughput    : %6.2fx     %s\n", t64_scal,
                t64_scal >= 1.8 ? "met" : "MISSED");
    std::printf("  vs pipe    >= 50x cheaper        : %6.0fx     %s\n", t64_pipe,
                t64_pipe >= 50 ? "met" : "MISSED");
    std::printf("  vs mutex ring (no target)        : %6.1fx\n", t64_mutex);
  }
  return 0;
}
