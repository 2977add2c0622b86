// End-to-end benchmark: one producer writes 64-byte records as fast as it can for a few seconds
// while `cat FILE > /dev/null` drains the relay file through a real mount. Reports the bytes per
// second cat received and the records lost (counted by relayfs and seen by the producer), once
// with the default no-overwrite channel and once with RELAY_BLOCKING (which must lose nothing),
// and the relayfs daemon's CPU time (utime + stime of /proc/PID/stat) per GB delivered.
// Baselines in the same run:
//  - the FUSE ceiling: cat of the zero-work FUSE file of fuse_ceiling (every read answered at
//    once from a static buffer; direct_io, st_blksize 1 MiB, so cat reads in 1 MiB requests as
//    it does on a relay file). relayfs rows give their throughput as a % of it, run by run;
//  - the same producer loop with one write(2) per record into a pipe that `cat > /dev/null`
//    drains.
// Figures are medians over --runs runs; the rows of one run are taken back to back.
//
// Usage: e2e_bench DAEMON [--ceiling FUSE_CEILING] [--seconds S] [--runs N] [--record BYTES]
//                         [--ceiling-bytes BYTES]
// FUSE_CEILING defaults to fuse_ceiling beside this program.
#include <fcntl.h>
#include <relayfs/relay.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "mount.h"
#include "proc.h"
#include "util.h"

using Clock = std::chrono::steady_clock;

using relayfs::bench::cleanup;
using relayfs::bench::cpu_seconds;
using relayfs::bench::median;
using relayfs::bench::Mount;
using relayfs::bench::on_signal;
using relayfs::bench::pin_self;
using relayfs::bench::spawn_cat;
using relayfs::bench::start_daemon;
using relayfs::bench::status_kib;

namespace {

double secs(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

struct Result {
  double bytes_per_s;
  uint64_t written, lost;
  double daemon_cpu_s = 0;  // the FUSE daemon's CPU time during the run
  double bytes = 0;         // bytes delivered to cat
};

// Ceiling: cat of the zero-work FUSE file, nothing else running.
Result run_ceiling(const Mount& m, uint64_t bytes) {
  const double cpu0 = cpu_seconds(m.pid);
  const auto t0 = Clock::now();
  const pid_t cat = spawn_cat(m.dir + "/zero", -1);
  int st;
  waitpid(cat, &st, 0);
  const double elapsed = secs(Clock::now() - t0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "cat of the ceiling file failed\n");
    cleanup();
    exit(1);
  }
  Result r{static_cast<double>(bytes) / elapsed, 0, 0};
  r.daemon_cpu_s = cpu_seconds(m.pid) - cpu0;
  r.bytes = static_cast<double>(bytes);
  return r;
}

// relayfs: producer pinned to CPU 0 writing its per-CPU buffer; cat (on CPU 1) reads FILE0.
// blocking: the channel is opened with RELAY_BLOCKING (no time limit), so nothing may be lost.
Result run_relay(const Mount& m, double seconds, size_t rec, bool blocking) {
  const std::string& dir = m.dir;
  const double cpu0 = cpu_seconds(m.pid);
  relay_options opts{blocking ? RELAY_BLOCKING : 0u, -1, nullptr};
  rchan* c = relay_open_opts(blocking ? "e2eb" : "e2e", dir.c_str(), 1 << 20, 8, nullptr,
                             nullptr, &opts);
  if (!c) {
    perror("relay_open");
    exit(1);
  }
  pin_self(0);
  const pid_t cat = spawn_cat(dir + (blocking ? "/e2eb0" : "/e2e0"), -1);
  std::vector<char> r(rec, 'x');
  uint64_t written = 0, lost = 0;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration<double>(seconds);
  for (uint64_t i = 0;; ++i) {
    if ((i & 1023) == 0 && Clock::now() >= until) break;
    std::memcpy(r.data(), &i, sizeof i);
    if (relay_write(c, r.data(), rec) == 0) {
      ++written;
    } else {
      ++lost;
      if (blocking)  // nothing may fail here: say how it did
        fprintf(stderr, "e2e_bench: blocking relay_write failed: %s\n", strerror(errno));
    }
  }
  // Closing finalizes the channel: cat reads what is left, gets end of file and exits.
  relay_flush(c);
  relay_close(c);
  int st;
  waitpid(cat, &st, 0);
  const double elapsed = secs(Clock::now() - t0);
  Result res{static_cast<double>(written * rec) / elapsed, written, lost};
  res.daemon_cpu_s = cpu_seconds(m.pid) - cpu0;
  res.bytes = static_cast<double>(written * rec);
  return res;
}

// Baseline: one write(2) per record into a pipe drained by cat.
Result run_pipe(double seconds, size_t rec) {
  int p[2];
  if (pipe(p) != 0) exit(1);
  pin_self(0);
  const pid_t cat = spawn_cat("", p[0], p[1]);
  close(p[0]);
  std::vector<char> r(rec, 'x');
  uint64_t written = 0;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration<double>(seconds);
  for (uint64_t i = 0;; ++i) {
    if ((i & 1023) == 0 && Clock::now() >= until) break;
    std::memcpy(r.data(), &i, sizeof i);
    if (write(p[1], r.data(), rec) == static_cast<ssize_t>(rec)) ++written;
  }
  close(p[1]);
  int st;
  waitpid(cat, &st, 0);
  const double elapsed = secs(Clock::now() - t0);
  return {static_cast<double>(written * rec) / elapsed, written, 0};
}

// Median, min and max of f over the runs.
template <typename F>
std::string stat3(const std::vector<Result>& v, F f, const char* fmt) {
  std::vector<double> x;
  for (auto& r : v) x.push_back(f(r));
  char b[128];
  snprintf(b, sizeof b, fmt, median(x), *std::min_element(x.begin(), x.end()),
           *std::max_element(x.begin(), x.end()));
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr,
            "usage: %s DAEMON [--ceiling FUSE_CEILING] [--seconds S] [--runs N] [--record BYTES] "
            "[--ceiling-bytes BYTES]\n",
            argv[0]);
    return 2;
  }
  const std::string daemon = argv[1];
  std::string ceiling_prog;
  {
    std::string self = argv[0];
    const size_t slash = self.rfind('/');
    ceiling_prog = (slash == std::string::npos ? std::string(".") : self.substr(0, slash)) +
                   "/fuse_ceiling";
  }
  double seconds = 3;
  int runs = 5;
  size_t rec = 64;
  uint64_t ceiling_bytes = 8ull << 30;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--seconds")
      seconds = atof(argv[i + 1]);
    else if (a == "--runs")
      runs = std::max(1, atoi(argv[i + 1]));
    else if (a == "--record")
      rec = static_cast<size_t>(atol(argv[i + 1]));
    else if (a == "--ceiling")
      ceiling_prog = argv[i + 1];
    else if (a == "--ceiling-bytes")
      ceiling_bytes = std::strtoull(argv[i + 1], nullptr, 10);
  }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    fprintf(stderr, "SKIP: /dev/fuse is missing\n");
    return 77;
  }
  if (access(ceiling_prog.c_str(), X_OK) != 0) {
    fprintf(stderr, "%s: not found (give --ceiling PATH)\n", ceiling_prog.c_str());
    return 1;
  }
  atexit(cleanup);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);
  // Blocking reads: cat waits for data instead of taking an empty read for end of file.
  const Mount rfs = start_daemon({daemon, "none", "@DIR", "-f", "-o", "blocking"}, "fuse.relayfs");
  const Mount ceil =
      start_daemon({ceiling_prog, "@DIR", std::to_string(ceiling_bytes)}, "fuse.ceiling");

  printf("end to end: one producer, %zu-byte records, flat out for %.1f s; cat FILE > /dev/null\n",
         rec, seconds);
  printf(
      "mount -o blocking; relay geometry 8 x 1 MiB; producer on CPU 0, cat on CPU 1 (daemons "
      "float); cat reads 1 MiB requests (st_blksize) from every FUSE file\n");
  printf("ceiling: cat of a %.2f GiB zero-work FUSE file (fuse_ceiling, direct_io, 16 workers)\n",
         static_cast<double>(ceiling_bytes) / (1 << 30));
  printf("median [min .. max] of %d runs; %% of ceiling is taken run by run\n\n", runs);
  std::vector<Result> cel, rel, blk, pip;
  for (int i = 0; i < runs; ++i) {
    cel.push_back(run_ceiling(ceil, ceiling_bytes));
    rel.push_back(run_relay(rfs, seconds, rec, false));
    blk.push_back(run_relay(rfs, seconds, rec, true));
    pip.push_back(run_pipe(seconds, rec));
  }
  // relayfs daemon memory after the runs (its worker threads have read 1 MiB requests).
  const long rss = status_kib(rfs.pid, "VmRSS"), anon = status_kib(rfs.pid, "RssAnon"),
             file = status_kib(rfs.pid, "RssFile"), shm = status_kib(rfs.pid, "RssShmem");
  const long threads = status_kib(rfs.pid, "Threads");

  auto mbps = [](const Result& r) { return r.bytes_per_s / 1e6; };
  auto lost = [](const Result& r) { return static_cast<double>(r.lost); };
  auto lostpct = [](const Result& r) {
    return r.written + r.lost ? 100.0 * static_cast<double>(r.lost) / (r.written + r.lost) : 0.0;
  };
  auto cpu_gb = [](const Result& r) { return r.bytes > 0 ? r.daemon_cpu_s / (r.bytes / 1e9) : 0; };
  auto pct = [&](const std::vector<Result>& v) {
    std::vector<Result> x = v;
    for (size_t i = 0; i < x.size(); ++i) x[i].bytes_per_s = 100.0 * v[i].bytes_per_s / cel[i].bytes_per_s;
    return x;
  };
  auto ratio = [](const Result& r) { return r.bytes_per_s; };

  printf("%-36s %-24s %-20s %-34s %-22s\n", "", "MB/s to cat", "% of ceiling", "records lost",
         "daemon CPU s / GB");
  printf("%-36s %-24s %-20s %-34s %-22s\n", "ceiling: zero-work FUSE file, cat",
         stat3(cel, mbps, "%.0f [%.0f .. %.0f]").c_str(), "100", "-",
         stat3(cel, cpu_gb, "%.3f [%.3f .. %.3f]").c_str());
  printf("%-36s %-24s %-20s %-34s %-22s\n", "relayfs: relay_write, cat FILE",
         stat3(rel, mbps, "%.0f [%.0f .. %.0f]").c_str(),
         stat3(pct(rel), ratio, "%.1f [%.1f .. %.1f]").c_str(),
         (stat3(rel, lost, "%.0f [%.0f .. %.0f]") + stat3(rel, lostpct, " (%.1f%%)")).c_str(),
         stat3(rel, cpu_gb, "%.3f [%.3f .. %.3f]").c_str());
  printf("%-36s %-24s %-20s %-34s %-22s\n", "relayfs: RELAY_BLOCKING, cat FILE",
         stat3(blk, mbps, "%.0f [%.0f .. %.0f]").c_str(),
         stat3(pct(blk), ratio, "%.1f [%.1f .. %.1f]").c_str(),
         stat3(blk, lost, "%.0f [%.0f .. %.0f]").c_str(),
         stat3(blk, cpu_gb, "%.3f [%.3f .. %.3f]").c_str());
  printf("%-36s %-24s %-20s %-34s %-22s\n", "baseline: write(2) into a pipe",
         stat3(pip, mbps, "%.0f [%.0f .. %.0f]").c_str(),
         stat3(pct(pip), ratio, "%.1f [%.1f .. %.1f]").c_str(), "0 (blocks)", "-");

  std::vector<double> rp, bp;
  for (int i = 0; i < runs; ++i) {
    rp.push_back(rel[i].bytes_per_s / pip[i].bytes_per_s);
    bp.push_back(blk[i].bytes_per_s / pip[i].bytes_per_s);
  }
  uint64_t blk_lost = 0;
  for (auto& r : blk) blk_lost += r.lost;
  printf("\nrelayfs / pipe, bytes delivered per second (median of per-run ratios): %.2fx, "
         "blocking %.2fx\n",
         median(rp), median(bp));
  const double rel_pct = median([&] {
    std::vector<double> x;
    for (auto& r : pct(rel)) x.push_back(r.bytes_per_s);
    return x;
  }());
  const double blk_pct = median([&] {
    std::vector<double> x;
    for (auto& r : pct(blk)) x.push_back(r.bytes_per_s);
    return x;
  }());
  printf("targets: flat out >= 80%% of ceiling: %s (%.1f%%); blocking >= 70%% of ceiling: %s "
         "(%.1f%%); blocking loses nothing: %s (%llu lost over all runs)\n",
         rel_pct >= 80 ? "met" : "MISSED", rel_pct, blk_pct >= 70 ? "met" : "MISSED", blk_pct,
         blk_lost == 0 ? "met" : "MISSED", static_cast<unsigned long long>(blk_lost));
  if (rec == 64)  // issue 17 asks this of 64-byte records only
    printf("target (issue 17): 64-byte records through cat >= 70%% of the ceiling: %s (%.1f%%)\n",
           rel_pct >= 70 ? "met" : "MISSED", rel_pct);
  printf("relayfs daemon after the runs: VmRSS %ld KiB (RssAnon %ld, RssFile %ld, RssShmem %ld), "
         "%ld threads\n",
         rss, anon, file, shm, threads);
  cleanup();
  return blk_lost == 0 ? 0 : 1;
}
