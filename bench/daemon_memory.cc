// Daemon memory: mounts relayfs, opens 1, 64 and 1024 channels from this one producer process
// (small geometry, 4 KiB x 2 by default) and prints the daemon's resident memory from
// /proc/PID/status at each step, with 0 channels as the baseline. RssShmem is the daemon's view
// of the channel buffers (shared memory it maps and has touched); the figure the target speaks of
// is what is left, VmRSS - RssShmem (= RssAnon + RssFile), and how far it grew over 0 channels.
// A last row writes one sub-buffer of records into every buffer and reads every file once, so
// the daemon has touched each buffer and run its read path on each.
//
// Channels are global (create_buf_file sets *is_global = 1: one buffer, one file per channel)
// unless --per-cpu is given (one buffer per possible CPU).
//
// Usage: daemon_memory DAEMON [--per-cpu] [--subbuf BYTES] [--n-subbufs N] [--runs N]
#include <fcntl.h>
#include <relayfs/relay.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "proc.h"

using relayfs::bench::mounted;
using relayfs::bench::status_kib;

namespace {

long count_fds(pid_t pid) {
  std::error_code ec;
  long n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return n;
}

std::string g_dir;
pid_t g_daemon = -1;

void cleanup() {
  if (g_daemon > 0) {
    system(("fusermount3 -u -z " + g_dir + " 2>/dev/null").c_str());
    kill(g_daemon, SIGTERM);
    for (int i = 0; i < 200 && g_daemon > 0; ++i) {
      if (waitpid(g_daemon, nullptr, WNOHANG) == g_daemon) g_daemon = -1;
      else std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (g_daemon > 0) {
      kill(g_daemon, SIGKILL);
      waitpid(g_daemon, nullptr, 0);
      g_daemon = -1;
    }
  }
  if (!g_dir.empty()) rmdir(g_dir.c_str());
  g_dir.clear();
}

void on_signal(int) {
  cleanup();
  _exit(1);
}

bool g_per_cpu = false;

int create_buf_file(const char*, const char*, mode_t*, rchan_buf*, int* is_global) {
  *is_global = g_per_cpu ? 0 : 1;
  return 0;
}

struct Row {
  std::string what;
  long channels, buffers;
  double buffer_kib;  // nominal: buffers * subbuf * n_subbufs
  long rss, anon, file, shmem, threads, fds;
};

Row sample(const std::string& what, long channels, long buffers, double buffer_kib) {
  // Let the daemon's loop and workers settle.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  return {what,
          channels,
          buffers,
          buffer_kib,
          status_kib(g_daemon, "VmRSS"),
          status_kib(g_daemon, "RssAnon"),
          status_kib(g_daemon, "RssFile"),
          status_kib(g_daemon, "RssShmem"),
          status_kib(g_daemon, "Threads"),
          count_fds(g_daemon)};
}

void raise_nofile(rlim_t want) {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur >= want) return;
  rl.rlim_cur = std::min<rlim_t>(want, rl.rlim_max);
  setrlimit(RLIMIT_NOFILE, &rl);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s DAEMON [--per-cpu] [--subbuf BYTES] [--n-subbufs N]\n", argv[0]);
    return 2;
  }
  const std::string daemon = argv[1];
  size_t subbuf = 4096, n_subbufs = 2;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--per-cpu")
      g_per_cpu = true;
    else if (a == "--subbuf" && i + 1 < argc)
      subbuf = static_cast<size_t>(atol(argv[++i]));
    else if (a == "--n-subbufs" && i + 1 < argc)
      n_subbufs = static_cast<size_t>(atol(argv[++i]));
  }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    fprintf(stderr, "SKIP: /dev/fuse is missing\n");
    return 77;
  }
  raise_nofile(1 << 20);  // each channel holds fds in the producer (and the daemon)

  char tmpl[] = "/tmp/relayfs-mem-XXXXXX";
  g_dir = mkdtemp(tmpl);
  atexit(cleanup);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);
  g_daemon = fork();
  if (g_daemon == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    // The daemon inherits the raised RLIMIT_NOFILE.
    execl(daemon.c_str(), daemon.c_str(), "none", g_dir.c_str(), "-f",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 500 && !mounted(g_dir); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (!mounted(g_dir)) {
    fprintf(stderr, "relayfs did not mount\n");
    return 1;
  }

  rchan_callbacks cb{};
  cb.create_buf_file = create_buf_file;
  std::vector<rchan*> chans;
  std::vector<Row> rows;
  const double per_buf_kib = static_cast<double>(subbuf * n_subbufs) / 1024;
  long buffers = 0;
  rows.push_back(sample("mounted, no channel", 0, 0, 0));
  for (long target : {1L, 64L, 1024L}) {
    while (static_cast<long>(chans.size()) < target) {
      const std::string name = "m" + std::to_string(chans.size()) + "_";
      rchan* c = relay_open(name.c_str(), g_dir.c_str(), subbuf, n_subbufs, &cb, nullptr);
      if (!c && errno == EMFILE) {
        raise_nofile(static_cast<rlim_t>(count_fds(getpid())) * 2 + 64);
        c = relay_open(name.c_str(), g_dir.c_str(), subbuf, n_subbufs, &cb, nullptr);
      }
      if (!c) {
        fprintf(stderr, "relay_open #%zu: %s (producer holds %ld fds)\n", chans.size(),
                strerror(errno), count_fds(getpid()));
        return 1;
      }
      buffers += c->n_buffers;
      chans.push_back(c);
    }
    rows.push_back(sample(std::to_string(target) + " channel(s) open", target, buffers,
                          per_buf_kib * static_cast<double>(buffers)));
  }
  // Fill one sub-buffer of every buffer (from the CPU that owns it: a global buffer takes any),
  // then read every file once, non-blocking.
  {
    std::vector<char> rec(64, 'r');
    for (rchan* c : chans) {
      for (size_t k = 0; k + rec.size() <= subbuf; k += rec.size()) relay_write(c, rec.data(), rec.size());
      relay_flush(c);
    }
    std::vector<char> out(1 << 20);
    for (size_t i = 0; i < chans.size(); ++i)
      for (unsigned b = 0; b < chans[i]->n_buffers; ++b) {
        const std::string f = g_dir + "/m" + std::to_string(i) + "_" + std::to_string(b);
        const int fd = open(f.c_str(), O_RDONLY | O_NONBLOCK);
        if (fd < 0) continue;
        while (read(fd, out.data(), out.size()) > 0) {
        }
        close(fd);
      }
    rows.push_back(sample("1024, each written + read once", static_cast<long>(chans.size()),
                          buffers, per_buf_kib * static_cast<double>(buffers)));
  }
  const long producer_fds = count_fds(getpid());

  printf("relayfs daemon memory (/proc/PID/status), %s channels of %zu x %zu B; KiB\n",
         g_per_cpu ? "per-CPU" : "global (is_global=1)", n_subbufs, subbuf);
  printf("beyond buffers = VmRSS - RssShmem (RssAnon + RssFile); growth = beyond buffers minus "
         "its 0-channel value\n\n");
  printf("%-32s %8s %9s %8s %8s %8s %8s %10s %8s %10s %7s %6s\n", "", "buffers", "buf KiB",
         "VmRSS", "RssAnon", "RssFile", "RssShmem", "beyond buf", "growth", "growth/ch",
         "threads", "fds");
  const long base = rows[0].rss - rows[0].shmem;
  for (auto& r : rows) {
    const long beyond = r.rss - r.shmem;
    printf("%-32s %8ld %9.0f %8ld %8ld %8ld %8ld %10ld %8ld %10.2f %7ld %6ld\n", r.what.c_str(),
           r.buffers, r.buffer_kib, r.rss, r.anon, r.file, r.shmem, beyond, beyond - base,
           r.channels ? static_cast<double>(beyond - base) / r.channels : 0.0, r.threads, r.fds);
  }
  const Row& at1024 = rows[3];
  const long beyond1024 = at1024.rss - at1024.shmem;
  printf("\nproducer process holds %ld fds for %zu channels\n", producer_fds, chans.size());
  printf("target: < 4096 KiB beyond the buffers at 1024 channels: absolute %ld KiB (%s), growth "
         "over 0 channels %ld KiB (%s)\n",
         beyond1024, beyond1024 < 4096 ? "met" : "MISSED", beyond1024 - base,
         beyond1024 - base < 4096 ? "met" : "MISSED");

  for (rchan* c : chans) relay_close(c);
  cleanup();
  return 0;
}
