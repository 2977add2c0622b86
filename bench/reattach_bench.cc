// Daemon restarts, from the producers' side (relay(7), "Daemon restarts"):
//  1. Reattach time. N channels (4096 x 4, per-CPU) in a few producer processes, under one
//     directory per process; the daemon is SIGKILLed, its dead mount taken away
//     (fusermount3 -u -z), and a new daemon mounted at the same place. Per channel: from the
//     moment the new mount is listed in /proc/self/mountinfo (this program polls it for POLLPRI,
//     as the channels' event threads do) until the producer has the channel back on the new
//     daemon. The producer process sees that itself: a reattach gives the channel's control
//     socket descriptor a new socket (dup3 onto the old number, src/client/relay.cc), so a
//     thread of the producer's fstat()s each socket descriptor until its inode changes. The
//     daemon answers the adopt only once the files are in its tree, so by then they exist; after
//     each round every file is stat()ed in the new mount to make sure.
//  2. relay_write's cost with and without a daemon: one thread pinned to CPU 0, 64-byte records
//     into an overwrite channel (never full, so nothing fails without a reader), ns per record,
//     alternating: daemon, SIGKILL (no remount), no daemon, remount, daemon, ... And whether the
//     writer makes system calls, attached and detached (strace -c -p on the writing thread).
//
// Usage: reattach_bench DAEMON [--channels 1,64,1024] [--rounds R] [--procs P]
//                              [--records N] [--batches B] [--write-rounds W] [--only reattach|write]
// Rounds default to 5 for up to 64 channels and 3 above; P (default 4) producer processes share
// the channels; N (default 20M) records per batch, B (default 3) batches per phase, median.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <relayfs/relay.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mount.h"
#include "proc.h"
#include "util.h"

using Clock = std::chrono::steady_clock;

using relayfs::bench::cleanup;
using relayfs::bench::cpu_seconds;
using relayfs::bench::crash_daemon;
using relayfs::bench::Mount;
using relayfs::bench::mounted;
using relayfs::bench::median;
using relayfs::bench::on_signal;
using relayfs::bench::pin_self;
using relayfs::bench::spawn_daemon;
using relayfs::bench::start_daemon;

namespace {

constexpr int kMaxProcs = 64;
constexpr int kMaxChannels = 1 << 16;
constexpr size_t kRecord = 64;

// steady_clock is CLOCK_MONOTONIC: one clock for every process on the machine.
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

// The q-quantile (0..1) of v, nearest rank.
double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(q * static_cast<double>(v.size()) + 0.999999);
  rank = std::clamp<size_t>(rank, 1, v.size());
  return v[rank - 1];
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds limit) {
  const auto until = Clock::now() + limit;
  while (!pred()) {
    if (Clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

// A child of ours: ends with the bench, takes no part in its cleanup.
void become_child() {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
}

// Waits up to limit for our child pid; kills (SIGKILL) and reaps it if it does not end.
void reap(pid_t pid, std::chrono::milliseconds limit) {
  if (!wait_until([&] { return waitpid(pid, nullptr, WNOHANG) != 0; }, limit)) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
}

// ---- 1. reattach time -------------------------------------------------------------------

enum Cmd : int { kNone, kArm, kMeasure, kStop, kVerify, kQuit };

// What the bench and one producer process share. The bench writes cmd, then bumps seq; the
// producer carries it out and sets ack to seq.
struct Proc {
  std::atomic<int> cmd;
  std::atomic<uint32_t> seq, ack;
  std::atomic<int> ready;     // 1: channels open, sockets found; -errno: failed
  std::atomic<int> all_back;  // kMeasure: every channel is back
  int first, n;               // its channels: first .. first+n-1
  int missing;                // kVerify: files not found
};

struct Shared {
  Proc procs[kMaxProcs];
  std::atomic<int64_t> back_ns[kMaxChannels];  // per channel socket: when it was replaced
};

Shared* shared_map() {
  void* p = mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1,
                 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  return new (p) Shared{};
}

// The descriptors of this process that are sockets: one per channel, its daemon connection.
std::vector<int> socket_fds() {
  std::vector<int> out;
  DIR* d = opendir("/proc/self/fd");
  if (!d) return out;
  const int own = dirfd(d);
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const int fd = atoi(e->d_name);
    struct stat st;
    if (fd != own && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) out.push_back(fd);
  }
  closedir(d);
  return out;
}

// Of one width, so that no channel's name is another's file name ("c1" has a file "c10").
std::string chan_name(int i) {
  char b[16];
  snprintf(b, sizeof b, "c%05d", i);
  return b;
}

// A producer process: opens its channels under DIR/pK, then follows the bench's commands.
[[noreturn]] void producer_main(const std::string& dir, int k, Shared* sh) {
  become_child();
  Proc& p = sh->procs[k];
  const std::string sub = dir + "/p" + std::to_string(k);
  std::vector<rchan*> chans;
  for (int i = 0; i < p.n; ++i) {
    rchan* c = relay_open(chan_name(p.first + i).c_str(), sub.c_str(), 4096, 4, nullptr, nullptr);
    if (!c) {
      p.ready.store(-errno);
      _exit(1);
    }
    chans.push_back(c);
  }
  const std::vector<int> socks = socket_fds();
  if (static_cast<int>(socks.size()) != p.n) {
    fprintf(stderr, "producer %d: %zu sockets for %d channels\n", k, socks.size(), p.n);
    p.ready.store(-EPROTO);
    _exit(1);
  }
  std::vector<ino_t> ino(socks.size());
  p.ready.store(1);
  char rec[kRecord] = {};
  uint32_t seen = 0;
  for (;;) {
    while (p.seq.load(std::memory_order_acquire) == seen) usleep(200);
    seen = p.seq.load(std::memory_order_acquire);
    const int cmd = p.cmd.load();
    if (cmd == kArm) {
      // A record in each buffer for the next daemon to take over, and the sockets as they are.
      for (rchan* c : chans) relay_write(c, rec, sizeof rec);
      for (size_t i = 0; i < socks.size(); ++i) {
        struct stat st{};
        fstat(socks[i], &st);
        ino[i] = st.st_ino;
        sh->back_ns[p.first + static_cast<int>(i)].store(0);
      }
      p.all_back.store(0);
    } else if (cmd == kMeasure) {
      p.ack.store(seen, std::memory_order_release);
      // Until every socket is replaced or the bench says stop. Each sweep fstat()s the
      // channels not back yet (~0.3 us each) and then sleeps 10x as long, 0.1 .. 1 ms: about
      // 10% of a CPU at most while many are pending, a resolution of a sweep and its sleep.
      std::vector<size_t> pending(socks.size());
      for (size_t i = 0; i < pending.size(); ++i) pending[i] = i;
      while (!pending.empty() && p.seq.load(std::memory_order_acquire) == seen) {
        const int64_t t0 = now_ns();
        for (size_t j = 0; j < pending.size();) {
          struct stat st{};
          const size_t i = pending[j];
          if (fstat(socks[i], &st) == 0 && st.st_ino != ino[i]) {
            sh->back_ns[p.first + static_cast<int>(i)].store(now_ns());
            pending[j] = pending.back();
            pending.pop_back();
          } else {
            ++j;
          }
        }
        const int64_t sweep = now_ns() - t0;
        std::this_thread::sleep_for(
            std::chrono::nanoseconds(std::clamp<int64_t>(10 * sweep, 100000, 1000000)));
      }
      if (pending.empty()) p.all_back.store(1);
      continue;  // acked already; a kStop that came is the next command
    } else if (cmd == kVerify) {
      int missing = 0;
      for (size_t i = 0; i < chans.size(); ++i) {
        const std::string base = sub + "/" + chan_name(p.first + static_cast<int>(i));
        struct stat st;
        for (unsigned b = 0; b < chans[i]->n_buffers; ++b)
          missing += stat((base + std::to_string(b)).c_str(), &st) != 0;
        missing += stat(base.c_str(), &st) != 0;  // the merged view
      }
      p.missing = missing;
    } else if (cmd == kQuit) {
      for (rchan* c : chans) relay_close(c);
      _exit(0);
    }
    p.ack.store(seen, std::memory_order_release);
  }
}

void send(Shared* sh, int nprocs, int cmd) {
  for (int k = 0; k < nprocs; ++k) {
    sh->procs[k].cmd.store(cmd);
    sh->procs[k].seq.fetch_add(1, std::memory_order_release);
  }
}

bool acked(Shared* sh, int nprocs) {
  return wait_until(
      [&] {
        for (int k = 0; k < nprocs; ++k)
          if (sh->procs[k].ack.load(std::memory_order_acquire) !=
              sh->procs[k].seq.load(std::memory_order_acquire))
            return false;
        return true;
      },
      std::chrono::seconds(60));
}

// Waits for a relayfs to be listed at dir, woken by the mount table's POLLPRI (mfd was opened
// before the daemon started, so no change is missed). Returns when it was seen, or 0.
int64_t wait_mount(int mfd, const std::string& dir, pid_t daemon) {
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < until) {
    pollfd pfd{mfd, POLLPRI, 0};
    poll(&pfd, 1, 5);
    const int64_t t = now_ns();
    if (mounted(dir)) return t;
    if (waitpid(daemon, nullptr, WNOHANG) == daemon) return 0;
  }
  return 0;
}

struct RoundResult {
  std::vector<double> ms;  // per channel that came back
  int not_back = 0, missing = 0;
  double daemon_cpu_ms = 0, producers_cpu_ms = 0;
};

std::vector<std::string> daemon_argv(const std::string& daemon) {
  return {daemon, "none", "@DIR", "-f"};
}

// One N: a mount, producers, `rounds` crash-and-remounts. Prints a row per round; returns them.
std::vector<RoundResult> run_reattach(const std::string& daemon, int n, int rounds, int procs) {
  Shared* sh = shared_map();
  Mount m = start_daemon(daemon_argv(daemon), "fuse.relayfs");
  const std::string dir = m.dir;
  const int np = std::min(n, procs);
  std::vector<pid_t> kids;
  for (int k = 0, first = 0; k < np; ++k) {
    const int cnt = n / np + (k < n % np ? 1 : 0);
    sh->procs[k].first = first;
    sh->procs[k].n = cnt;
    first += cnt;
    mkdir((dir + "/p" + std::to_string(k)).c_str(), 0755);
    const pid_t pid = fork();
    if (pid == 0) producer_main(dir, k, sh);
    kids.push_back(pid);
  }
  const bool ready = wait_until(
      [&] {
        for (int k = 0; k < np; ++k)
          if (sh->procs[k].ready.load() == 0) return false;
        return true;
      },
      std::chrono::seconds(120));
  for (int k = 0; k < np && ready; ++k)
    if (sh->procs[k].ready.load() < 0) {
      fprintf(stderr, "producer %d: relay_open failed: %s\n", k,
              strerror(-sh->procs[k].ready.load()));
      cleanup();
      exit(1);
    }
  if (!ready) {
    fprintf(stderr, "producers did not open %d channels in 120 s\n", n);
    cleanup();
    exit(1);
  }

  std::vector<RoundResult> out;
  for (int r = 0; r < rounds; ++r) {
    send(sh, np, kArm);
    acked(sh, np);
    crash_daemon(m.pid);
    // Every event thread has seen its daemon go and the dead mount go, and waits.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const int mfd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    send(sh, np, kMeasure);
    acked(sh, np);
    double kids_cpu0 = 0;
    for (pid_t k : kids) kids_cpu0 += cpu_seconds(k);
    m = spawn_daemon(daemon_argv(daemon), dir);
    const int64_t t0 = wait_mount(mfd, dir, m.pid);
    close(mfd);
    if (t0 == 0) {
      fprintf(stderr, "the new daemon did not mount on %s\n", dir.c_str());
      cleanup();
      exit(1);
    }
    wait_until(
        [&] {
          for (int k = 0; k < np; ++k)
            if (!sh->procs[k].all_back.load()) return false;
          return true;
        },
        std::chrono::seconds(30));
    RoundResult res;
    res.daemon_cpu_ms = 1000 * cpu_seconds(m.pid);
    for (pid_t k : kids) res.producers_cpu_ms += 1000 * cpu_seconds(k);
    res.producers_cpu_ms -= 1000 * kids_cpu0;
    send(sh, np, kStop);
    acked(sh, np);
    send(sh, np, kVerify);
    acked(sh, np);
    for (int k = 0; k < np; ++k) res.missing += sh->procs[k].missing;
    for (int i = 0; i < n; ++i) {
      const int64_t t = sh->back_ns[i].load();
      if (t == 0)
        ++res.not_back;
      else
        res.ms.push_back(static_cast<double>(std::max<int64_t>(0, t - t0)) / 1e6);
    }
    printf("%8d %5d %5d/%d %9.2f %9.2f %9.2f %9.2f %9d %10d %13.0f %13.0f\n", n, np, r + 1,
           rounds, quantile(res.ms, 0.5), quantile(res.ms, 0.99), quantile(res.ms, 1.0),
           quantile(res.ms, 0.0), res.not_back, res.missing, res.daemon_cpu_ms,
           res.producers_cpu_ms);
    fflush(stdout);
    out.push_back(res);
  }
  send(sh, np, kQuit);
  for (pid_t k : kids) reap(k, std::chrono::seconds(30));
  crash_daemon(m.pid);
  rmdir(dir.c_str());
  munmap(sh, sizeof(Shared));
  return out;
}

// ---- 2. relay_write with and without a daemon --------------------------------------------

enum WCmd : int { kRun = 1, kTrace, kWQuit };

struct Writer {
  std::atomic<int> cmd;
  std::atomic<uint32_t> seq, ack;
  std::atomic<int> ready;  // 1: channel open; -errno: failed
  std::atomic<int> armed, go, done, release;  // kTrace's handshake, no system call on our side
  uint64_t records;
  double ns_per_record;
  uint64_t failed;
};

// The writer: one thread on CPU 0, an overwrite channel "w" of 64 KiB x 4 at dir.
[[noreturn]] void writer_main(const std::string& dir, Writer* w) {
  become_child();
  pin_self(0);
  relay_options opts{RELAY_OVERWRITE, -1, nullptr};
  rchan* c = relay_open_opts("w", dir.c_str(), 64 * 1024, 4, nullptr, nullptr, &opts);
  if (!c) {
    w->ready.store(-errno);
    _exit(1);
  }
  w->ready.store(1);
  char rec[kRecord] = {};
  auto write_n = [&](uint64_t n) {
    uint64_t failed = 0;
    for (uint64_t i = 0; i < n; ++i) {
      std::memcpy(rec, &i, sizeof i);
      failed += relay_write(c, rec, sizeof rec) != 0;
    }
    return failed;
  };
  uint32_t seen = 0;
  for (;;) {
    while (w->seq.load(std::memory_order_acquire) == seen) usleep(200);
    seen = w->seq.load(std::memory_order_acquire);
    const int cmd = w->cmd.load();
    if (cmd == kRun) {
      const auto t0 = Clock::now();
      w->failed = write_n(w->records);
      w->ns_per_record =
          std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / static_cast<double>(w->records);
    } else if (cmd == kTrace) {
      // strace attaches while this thread spins; from then on until it detaches, this thread
      // only spins on shared memory and writes.
      w->armed.store(1);
      while (!w->go.load(std::memory_order_acquire)) __builtin_ia32_pause();
      w->failed = write_n(w->records);
      w->done.store(1, std::memory_order_release);
      while (!w->release.load(std::memory_order_acquire)) __builtin_ia32_pause();
      w->armed.store(0);
      w->go.store(0);
      w->done.store(0);
      w->release.store(0);
    } else if (cmd == kWQuit) {
      relay_close(c);
      _exit(0);
    }
    w->ack.store(seen, std::memory_order_release);
  }
}

bool wcmd(Writer* w, int cmd) {
  w->cmd.store(cmd);
  const uint32_t s = w->seq.fetch_add(1, std::memory_order_release) + 1;
  return wait_until([&] { return w->ack.load(std::memory_order_acquire) == s; },
                    std::chrono::seconds(300));
}

// Median ns/record of `batches` runs of w->records each; every batch's figure also into all.
double measure(Writer* w, int batches, uint64_t* failed, std::vector<double>* all) {
  std::vector<double> v;
  for (int b = 0; b < batches; ++b) {
    if (!wcmd(w, kRun)) {
      fprintf(stderr, "the writer did not finish\n");
      cleanup();
      exit(1);
    }
    v.push_back(w->ns_per_record);
    all->push_back(w->ns_per_record);
    *failed += w->failed;
  }
  return median(v);
}

bool have_strace() {
  return system("command -v strace >/dev/null 2>&1") == 0;
}

int tracer_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("TracerPid:", 0) == 0) return atoi(line.c_str() + 10);
  return 0;
}

// System calls the writing thread made while writing `records` records, counted by strace -c
// attached to that thread alone; -1 if strace could not attach.
long count_syscalls(Writer* w, pid_t writer, uint64_t records) {
  const uint64_t keep = w->records;
  w->records = records;
  w->cmd.store(kTrace);
  const uint32_t s = w->seq.fetch_add(1, std::memory_order_release) + 1;
  wait_until([&] { return w->armed.load() == 1; }, std::chrono::seconds(10));
  char out[] = "/tmp/relayfs-strace-XXXXXX";
  const int ofd = mkstemp(out);
  close(ofd);
  const pid_t st = fork();
  if (st == 0) {
    become_child();
    const int null = open("/dev/null", O_WRONLY);
    dup2(null, 2);
    const std::string p = std::to_string(writer);
    execlp("strace", "strace", "-c", "-p", p.c_str(), "-o", out, static_cast<char*>(nullptr));
    _exit(127);
  }
  const bool attached = wait_until([&] { return tracer_of(writer) == st; }, std::chrono::seconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  w->go.store(1, std::memory_order_release);
  wait_until([&] { return w->done.load(std::memory_order_acquire) == 1; }, std::chrono::seconds(60));
  kill(st, SIGINT);
  waitpid(st, nullptr, 0);
  w->release.store(1, std::memory_order_release);
  wait_until([&] { return w->ack.load(std::memory_order_acquire) == s; }, std::chrono::seconds(60));
  w->records = keep;
  // strace -c writes nothing at all when it saw no call; else a table ending in "total".
  long calls = 0;
  std::ifstream in(out);
  std::string line;
  while (std::getline(in, line))
    if (line.find(" total") != std::string::npos) {
      std::istringstream ss(line);
      std::string pct, secs, usecs;
      ss >> pct >> secs >> usecs >> calls;
    }
  unlink(out);
  return attached ? calls : -1;
}

void run_write(const std::string& daemon, int rounds, int batches, uint64_t records) {
  Writer* w = static_cast<Writer*>(mmap(nullptr, sizeof(Writer), PROT_READ | PROT_WRITE,
                                        MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (w) Writer{};
  w->records = records;
  Mount m = start_daemon(daemon_argv(daemon), "fuse.relayfs");
  const std::string dir = m.dir;
  const pid_t writer = fork();
  if (writer == 0) writer_main(dir, w);
  if (!wait_until([&] { return w->ready.load() != 0; }, std::chrono::seconds(30)) ||
      w->ready.load() < 0) {
    fprintf(stderr, "writer: relay_open failed: %s\n", strerror(-w->ready.load()));
    cleanup();
    exit(1);
  }
  const bool strace = have_strace();
  long calls_daemon = -1, calls_none = -1;
  const uint64_t trace_records = 2000000;
  uint64_t failed = 0;
  std::vector<double> with(rounds + 1), none(rounds), with_all, none_all;
  for (int r = 0; r < rounds; ++r) {
    with[r] = measure(w, batches, &failed, &with_all);
    if (r == 0 && strace) calls_daemon = count_syscalls(w, writer, trace_records);
    crash_daemon(m.pid);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the channel has detached
    none[r] = measure(w, batches, &failed, &none_all);
    if (r == 0 && strace) calls_none = count_syscalls(w, writer, trace_records);
    m = start_daemon(daemon_argv(daemon), "fuse.relayfs", dir);
    struct stat st;
    if (!wait_until([&] { return stat((dir + "/w0").c_str(), &st) == 0; },
                    std::chrono::seconds(15))) {
      fprintf(stderr, "the writer's channel did not come back\n");
      cleanup();
      exit(1);
    }
  }
  with[rounds] = measure(w, batches, &failed, &with_all);
  w->cmd.store(kWQuit);  // no answer: the writer closes its channel and exits
  w->seq.fetch_add(1, std::memory_order_release);
  reap(writer, std::chrono::seconds(30));
  crash_daemon(m.pid);
  rmdir(dir.c_str());

  printf("%-8s %16s %16s %16s %18s\n", "round", "daemon before", "no daemon", "daemon after",
         "none / with");
  std::vector<double> ratios;
  for (int r = 0; r < rounds; ++r) {
    const double ratio = none[r] / ((with[r] + with[r + 1]) / 2);
    ratios.push_back(ratio);
    printf("%-8d %16.2f %16.2f %16.2f %18.3f\n", r + 1, with[r], none[r], with[r + 1], ratio);
  }
  // One noisy batch moves a round's ratio; the verdict takes the medians of every batch.
  const double mw = median(with_all), mn = median(none_all);
  printf("%-8s %16.2f %16.2f %16s %18.3f  (medians of all %zu and %zu batches; median of the "
         "per-round ratios %.3f)\n",
         "all", mw, mn, "", mn / mw, with_all.size(), none_all.size(), median(ratios));
  printf("records that failed: %llu (overwrite mode: none expected)\n",
         static_cast<unsigned long long>(failed));
  if (!strace)
    printf("system calls: strace is not installed; not counted\n");
  else
    printf("system calls by the writing thread over %llu records (strace -c -p TID): daemon "
           "attached %ld, no daemon %ld%s\n",
           static_cast<unsigned long long>(trace_records), calls_daemon, calls_none,
           calls_daemon < 0 || calls_none < 0 ? " (-1: strace did not attach)" : "");
  printf("target: no measurable change in relay_write's cost: %s (no daemon / daemon %.3f)\n",
         std::abs(mn / mw - 1) <= 0.05 ? "met, within 5%" : "MISSED, beyond 5%", mn / mw);
  munmap(w, sizeof(Writer));
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) v.push_back(atoi(item.c_str()));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr,
            "usage: %s DAEMON [--channels 1,64,1024] [--rounds R] [--procs P] [--records N] "
            "[--batches B] [--write-rounds W] [--only reattach|write]\n",
            argv[0]);
    return 2;
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);  // rows as they come, also into a pipe
  const std::string daemon = argv[1];
  std::vector<int> channels = {1, 64, 1024};
  int rounds = 0, procs = 4, batches = 3, write_rounds = 5;
  uint64_t records = 20000000;
  std::string only;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--channels")
      channels = parse_list(argv[i + 1]);
    else if (a == "--rounds")
      rounds = std::max(1, atoi(argv[i + 1]));
    else if (a == "--procs")
      procs = std::clamp(atoi(argv[i + 1]), 1, kMaxProcs);
    else if (a == "--records")
      records = std::max<uint64_t>(1, std::strtoull(argv[i + 1], nullptr, 10));
    else if (a == "--batches")
      batches = std::max(1, atoi(argv[i + 1]));
    else if (a == "--write-rounds")
      write_rounds = std::max(1, atoi(argv[i + 1]));
    else if (a == "--only")
      only = argv[i + 1];
  }
  for (int n : channels)
    if (n < 1 || n > kMaxChannels) {
      fprintf(stderr, "--channels: 1 .. %d\n", kMaxChannels);
      return 2;
    }
  if (access("/dev/fuse", R_OK | W_OK) != 0) {
    fprintf(stderr, "SKIP: /dev/fuse is missing\n");
    return 77;
  }
  // Each channel holds a descriptor per buffer (one per possible CPU), its socket, doorbell,
  // wake-up eventfd and, detached, the mount table: the soft limit goes up to the hard one.
  rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  atexit(cleanup);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGHUP, on_signal);
  const long ncpu = sysconf(_SC_NPROCESSORS_CONF);

  if (only.empty() || only == "reattach") {
    printf("reattach: N channels of 4096 x 4 (per-CPU: %ld buffers and a merged view each) in up "
           "to %d producer processes; SIGKILL the daemon, fusermount3 -u -z, a new daemon at the "
           "same mount point\n",
           ncpu, procs);
    printf("per channel, ms from the new mount in /proc/self/mountinfo to the channel back on "
           "the new daemon (its socket replaced); files: the channel's files stat()ed after; "
           "daemon CPU: the new daemon's, start to all back; producer CPU: the producer processes' "
           "from before the mount to all back, their socket-watching thread included "
           "(both in 10 ms clock ticks; RLIMIT_NOFILE %llu)\n\n",
           static_cast<unsigned long long>(rl.rlim_cur));
    printf("%8s %5s %7s %9s %9s %9s %9s %9s %10s %13s %13s\n", "channels", "procs", "round",
           "p50 ms", "p99 ms", "max ms", "first ms", "not back", "files lost", "daemon CPU ms",
           "producer CPU");
    std::vector<std::pair<int, std::vector<RoundResult>>> all;
    for (int n : channels)
      all.emplace_back(n, run_reattach(daemon, n, rounds ? rounds : (n <= 64 ? 5 : 3), procs));
    printf("\nover all rounds, every channel of every round:\n");
    printf("%8s %7s %9s %9s %9s %12s %12s\n", "channels", "rounds", "p50 ms", "p99 ms", "max ms",
           "not back", "files lost");
    for (auto& [n, rs] : all) {
      std::vector<double> ms;
      int not_back = 0, missing = 0;
      for (auto& r : rs) {
        ms.insert(ms.end(), r.ms.begin(), r.ms.end());
        not_back += r.not_back;
        missing += r.missing;
      }
      printf("%8d %7zu %9.2f %9.2f %9.2f %12d %12d\n", n, rs.size(), quantile(ms, 0.5),
             quantile(ms, 0.99), quantile(ms, 1.0), not_back, missing);
      if (n == 64)
        printf("target: 64 channels back within 1 s: %s (max %.2f ms)\n",
               not_back == 0 && missing == 0 && quantile(ms, 1.0) <= 1000 ? "met" : "MISSED",
               quantile(ms, 1.0));
    }
    printf("\n");
    fflush(stdout);
  }
  if (only.empty() || only == "write") {
    printf("relay_write with and without a daemon: 1 thread on CPU 0, %zu-byte records, overwrite "
           "channel 64 KiB x 4, nobody reading; ns/record, median of %d batches of %llu records "
           "per phase; daemon SIGKILLed (and its mount taken away) between 'daemon before' and "
           "'no daemon', a new one mounted before 'daemon after'\n",
           kRecord, batches, static_cast<unsigned long long>(records));
    run_write(daemon, write_rounds, batches, records);
  }
  cleanup();
  return 0;
}
