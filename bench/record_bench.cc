// relayctl record against `cat FILE > file`: how fast each drains a channel to disk while one
// producer writes flat out. Both read the same kind of channel (global, RELAY_BLOCKING without a
// time limit, so neither loses a record and the producer runs exactly as fast as the reader
// lets it), on the same -o blocking mount, and write into the same filesystem (--out, default a
// temporary directory under /tmp). A run is the two rows back to back; figures are medians over
// --runs runs, and the ratio record / cat is the median of the per-run ratios. Every output file
// is checked for the size the producer wrote, then removed.
//
// Usage: record_bench DAEMON RELAYCTL [--runs N] [--seconds S] [--record BYTES] [--out DIR]
//                                     [--subbuf BYTES] [--n-subbufs N] [--no-direct 1]
// With the default 4 KiB records in 1 MiB sub-buffers there is no padding, so relayctl record
// writes with O_DIRECT where the filesystem has it; --no-direct 1 passes --no-direct to it.
#include <fcntl.h>
#include <relayfs/relay.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "proc.h"

namespace {

using Clock = std::chrono::steady_clock;

std::string g_mnt, g_out;
pid_t g_daemon = -1;

// Unmounts, stops the daemon and removes the outputs, on every way out.
void teardown() {
  if (g_daemon > 0) {
    std::system(("fusermount3 -u -z '" + g_mnt + "' 2>/dev/null").c_str());
    ::kill(g_daemon, SIGTERM);
    ::waitpid(g_daemon, nullptr, 0);
    g_daemon = -1;
    ::rmdir(g_mnt.c_str());
  }
  if (!g_out.empty()) std::system(("rm -rf '" + g_out + "'").c_str());
  g_out.clear();
}

void on_signal(int) {
  teardown();
  _exit(1);
}

void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)), &set);
  sched_setaffinity(0, sizeof set, &set);
}

int global_files(const char*, const char*, mode_t*, rchan_buf*, int* is_global) {
  *is_global = 1;
  return 0;
}

// A reader on CPU 1: argv run directly, stdout to out_file when given.
pid_t spawn(const std::vector<std::string>& args, const std::string& out_file) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    pin(1);
    if (!out_file.empty()) {
      const int fd = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(fd, 1);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

struct Config {
  std::string relayctl;
  double seconds = 2;
  size_t rec = 4096, subbuf = 1 << 20, n_subbufs = 8;
  bool no_direct = false;
};

// One row: the producer writes flat out for cfg.seconds while `reader` drains channel `name`;
// returns bytes per second from the first write to the reader's exit (0 on a failure).
double run_row(const Config& cfg, const std::string& name, bool record) {
  rchan_callbacks cb{};
  cb.create_buf_file = global_files;
  const relay_options opts{RELAY_BLOCKING, -1, nullptr};
  rchan* c = relay_open_opts(name.c_str(), g_mnt.c_str(), cfg.subbuf, cfg.n_subbufs, &cb, nullptr,
                             &opts);
  if (!c) {
    std::perror("relay_open_opts");
    return 0;
  }
  const std::string out = g_out + "/" + name;
  std::vector<std::string> rec_args = {cfg.relayctl, "record", "-q", g_mnt + "/" + name, out};
  if (cfg.no_direct) rec_args.insert(rec_args.begin() + 2, "--no-direct");
  const pid_t reader = record ? spawn(rec_args, "") : spawn({"cat", g_mnt + "/" + name + "0"}, out);
  pin(0);
  std::vector<char> r(cfg.rec, 'x');
  uint64_t written = 0;
  const auto t0 = Clock::now();
  const auto until = t0 + std::chrono::duration<double>(cfg.seconds);
  for (uint64_t i = 0;; ++i) {
    if ((i & 255) == 0 && Clock::now() >= until) break;
    std::memcpy(r.data(), &i, sizeof i);
    if (relay_write(c, r.data(), cfg.rec) == 0) written += cfg.rec;
  }
  relay_flush(c);
  relay_close(c);  // the reader drains what is left and stops at end of channel
  int st = 0;
  ::waitpid(reader, &st, 0);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  struct stat sb {};
  const std::string file = record ? out + "/" + name + "0" : out;
  const bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && ::stat(file.c_str(), &sb) == 0 &&
                  static_cast<uint64_t>(sb.st_size) == written;
  if (!ok)
    std::fprintf(stderr, "%s: reader status %d, %lld of %llu bytes on disk\n", name.c_str(), st,
                 static_cast<long long>(sb.st_size), static_cast<unsigned long long>(written));
  std::system(("rm -rf '" + out + "'").c_str());
  return ok ? static_cast<double>(written) / s : 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

std::string figures(const std::vector<double>& v, double scale, const char* fmt) {
  char b[128];
  std::snprintf(b, sizeof b, fmt, median(v) / scale, *std::min_element(v.begin(), v.end()) / scale,
                *std::max_element(v.begin(), v.end()) / scale);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: %s DAEMON RELAYCTL [--runs N] [--seconds S] [--record BYTES] [--out DIR]"
                 " [--subbuf BYTES] [--n-subbufs N] [--no-direct 1]\n",
                 argv[0]);
    return 2;
  }
  Config cfg;
  cfg.relayctl = argv[2];
  int runs = 5;
  std::string out_parent = "/tmp";
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--runs") runs = std::max(1, std::atoi(argv[i + 1]));
    else if (a == "--seconds") cfg.seconds = std::atof(argv[i + 1]);
    else if (a == "--record") cfg.rec = std::strtoul(argv[i + 1], nullptr, 10);
    else if (a == "--out") out_parent = argv[i + 1];
    else if (a == "--subbuf") cfg.subbuf = std::strtoul(argv[i + 1], nullptr, 10);
    else if (a == "--n-subbufs") cfg.n_subbufs = std::strtoul(argv[i + 1], nullptr, 10);
    else if (a == "--no-direct") cfg.no_direct = std::atoi(argv[i + 1]) != 0;
  }
  if (::access("/dev/fuse", R_OK | W_OK) != 0) {
    std::fprintf(stderr, "SKIP: /dev/fuse is missing\n");
    return 77;
  }
  std::atexit(teardown);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) ::signal(s, on_signal);

  char mnt[] = "/tmp/relayfs-recbench-XXXXXX";
  g_mnt = ::mkdtemp(mnt);
  std::string tmpl = out_parent + "/relayctl-recbench-out-XXXXXX";
  if (!::mkdtemp(tmpl.data())) {
    std::perror(out_parent.c_str());
    return 1;
  }
  g_out = tmpl;
  // -o blocking: cat waits for data instead of taking an empty read for end of file.
  g_daemon = spawn({argv[1], "none", g_mnt, "-f", "-o", "blocking"}, "");
  for (int i = 0; i < 500 && !relayfs::bench::mounted(g_mnt); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (!relayfs::bench::mounted(g_mnt)) {
    std::fprintf(stderr, "%s did not mount\n", argv[1]);
    return 1;
  }

  std::printf("relayctl record vs cat FILE > file: one producer, %zu-byte records, flat out for "
              "%.1f s, RELAY_BLOCKING (no limit), global channel %zu x %zu B\n",
              cfg.rec, cfg.seconds, cfg.n_subbufs, cfg.subbuf);
  std::printf("output in %s (same filesystem for both)%s; producer on CPU 0, reader on CPU 1; "
              "medians over %d runs [min .. max]\n\n",
              out_parent.c_str(), cfg.no_direct ? ", relayctl record --no-direct" : "", runs);
  std::vector<double> rec, cat, ratio;
  for (int i = 0; i < runs; ++i) {
    rec.push_back(run_row(cfg, "rec" + std::to_string(i), true));
    cat.push_back(run_row(cfg, "cat" + std::to_string(i), false));
    ratio.push_back(cat.back() > 0 ? rec.back() / cat.back() : 0);
    std::printf("run %d: record %.0f MB/s, cat %.0f MB/s\n", i + 1, rec.back() / 1e6,
                cat.back() / 1e6);
    std::fflush(stdout);
  }
  std::printf("\n");
  std::printf("%-34s %s\n", "", "MB/s to disk");
  std::printf("%-34s %s\n", "relayctl record PATH OUTDIR", figures(rec, 1e6, "%.0f [%.0f .. %.0f]").c_str());
  std::printf("%-34s %s\n", "cat FILE > file", figures(cat, 1e6, "%.0f [%.0f .. %.0f]").c_str());
  std::printf("%-34s %s\n", "ratio record / cat", figures(ratio, 1, "%.2fx [%.2f .. %.2f]").c_str());
  const bool failed = std::find(rec.begin(), rec.end(), 0.0) != rec.end() ||
                      std::find(cat.begin(), cat.end(), 0.0) != cat.end();
  return failed ? 1 : 0;
}
