// End-to-end benchmark: one producer writes 64-byte records as fast as it can for a few seconds
// while `cat FILE > /dev/null` drains the relay file through a real mount. Reports the bytes per
// second cat received and the records lost (counted by relayfs and seen by the producer).
// Baseline in the same run: the same producer loop with one write(2) per record into a pipe that
// `cat > /dev/null` drains.
//
// Usage: e2e_bench DAEMON [--seconds S] [--runs N] [--record BYTES]
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
#include <string>
#include <thread>
#include <vector>

using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

void pin_self(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

bool mounted(const std::string& dir) {
  std::ifstream in("/proc/mounts");
  std::string line;
  while (std::getline(in, line))
    if (line.find(" " + dir + " fuse.relayfs ") != std::string::npos) return true;
  return false;
}

// Runs cat FILE (or cat reading in_fd) with stdout on /dev/null; close_fd is closed in the
// child (the pipe's write end, or cat would never see end of file).
pid_t spawn_cat(const std::string& file, int in_fd, int close_fd = -1) {
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (close_fd >= 0) close(close_fd);
    if (in_fd >= 0) dup2(in_fd, 0);
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 1);
    pin_self(1);
    if (file.empty())
      execlp("cat", "cat", static_cast<char*>(nullptr));
    else
      execlp("cat", "cat", file.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

struct Result {
  double bytes_per_s;
  uint64_t written, lost;
};

// relayfs: producer pinned to CPU 0 writing its per-CPU buffer; cat (on CPU 1) reads FILE0.
Result run_relay(const std::string& dir, double seconds, size_t rec) {
  rchan* c = relay_open("e2e", dir.c_str(), 1 << 20, 8, nullptr, nullptr);
  if (!c) {
    perror("relay_open");
    exit(1);
  }
  pin_self(0);
  const pid_t cat = spawn_cat(dir + "/e2e0", -1);
  std::vector<char> r(rec, 'x');
  uint64_t written = 0, lost = 0;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration<double>(seconds);
  for (uint64_t i = 0;; ++i) {
    if ((i & 1023) == 0 && Clock::now() >= until) break;
    std::memcpy(r.data(), &i, sizeof i);
    if (relay_write(c, r.data(), rec) == 0)
      ++written;
    else
      ++lost;
  }
  // Closing finalizes the channel: cat reads what is left, gets end of file and exits.
  relay_flush(c);
  relay_close(c);
  int st;
  waitpid(cat, &st, 0);
  const double elapsed = secs(Clock::now() - t0);
  return {static_cast<double>(written * rec) / elapsed, written, lost};
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

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s DAEMON [--seconds S] [--runs N] [--record BYTES]\n", argv[0]);
    return 2;
  }
  const std::string daemon = argv[1];
  double seconds = 3;
  int runs = 3;
  size_t rec = 64;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--seconds")
      seconds = atof(argv[i + 1]);
    else if (a == "--runs")
      runs = std::max(1, atoi(argv[i + 1]));
    else if (a == "--record")
      rec = static_cast<size_t>(atol(argv[i + 1]));
  }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    fprintf(stderr, "SKIP: /dev/fuse is missing\n");
    return 77;
  }
  char tmpl[] = "/tmp/relayfs-e2e-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const pid_t d = fork();
  if (d == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    // Blocking reads: cat waits for data instead of taking an empty read for end of file.
    execl(daemon.c_str(), daemon.c_str(), "none", dir.c_str(), "-f", "-o", "blocking",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 500 && !mounted(dir); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (!mounted(dir)) {
    fprintf(stderr, "relayfs did not mount\n");
    return 1;
  }

  printf("end to end: one producer, %zu-byte records, flat out for %.1f s; cat FILE > /dev/null\n",
         rec, seconds);
  printf(
      "mount -o blocking; relay geometry 8 x 1 MiB; producer on CPU 0, cat on CPU 1; median of %d "
      "runs\n\n",
      runs);
  std::vector<Result> rel, pip;
  for (int i = 0; i < runs; ++i) {
    rel.push_back(run_relay(dir, seconds, rec));
    pip.push_back(run_pipe(seconds, rec));
  }
  auto med = [](std::vector<Result> v) {
    std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.bytes_per_s < b.bytes_per_s; });
    return v[v.size() / 2];
  };
  const Result r = med(rel), p = med(pip);
  printf("%-34s %12s %14s %14s\n", "", "MB/s to cat", "records", "lost");
  printf("%-34s %12.1f %14llu %14llu  (%.1f%% lost)\n", "relayfs: relay_write, cat FILE",
         r.bytes_per_s / 1e6, static_cast<unsigned long long>(r.written),
         static_cast<unsigned long long>(r.lost), 100.0 * r.lost / (r.written + r.lost));
  printf("%-34s %12.1f %14llu %14s\n", "baseline: write(2) into a pipe", p.bytes_per_s / 1e6,
         static_cast<unsigned long long>(p.written), "0 (blocks)");
  printf("\nrelayfs / pipe, bytes delivered per second: %.2fx\n", r.bytes_per_s / p.bytes_per_s);

  system(("fusermount3 -u -z " + dir).c_str());
  kill(d, SIGTERM);
  waitpid(d, nullptr, 0);
  rmdir(dir.c_str());
  return 0;
}
