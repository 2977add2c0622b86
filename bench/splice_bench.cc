// splice(2) readers and the kernel's read-ahead (relay(7), "Splice and sendfile"). This kernel
// serves splice and sendfile of a relay file through its page cache, and what the page cache
// takes has left the buffer whether or not the reader gets it. The daemon turns the kernel's
// read-ahead off by default (-o readahead=0), so a splicing reader that stops early leaves at
// most a page counted in lost_readahead_bytes; with read-ahead on, more, but pages come in
// larger requests. This measures both sides, for each read-ahead setting, in the same run:
//  - the loss: lost_readahead_bytes after `pv -q -S -s 1000` of a buffer holding 1 MiB, and
//    after python's os.splice(fd, pipe, 100), then close; the real loss beside it (what a cat
//    afterwards does not find);
//  - the speed: MB/s of `pv -q FILE > /dev/null` (splice) draining BYTES of 64-byte records
//    that the benchmark writes into a blocking channel, against `cat FILE > /dev/null` (read(2))
//    draining the same, on the same mount: the ratio pv/cat is the figure (2 shared cores).
// Figures are medians over --runs runs.
//
// Usage: splice_bench DAEMON [--runs N] [--bytes BYTES] [--readahead SIZE[,SIZE...]]
#include <fcntl.h>
#include <relayfs/relay.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mount.h"

using Clock = std::chrono::steady_clock;
using relayfs::bench::cleanup;
using relayfs::bench::Mount;
using relayfs::bench::on_signal;
using relayfs::bench::start_daemon;

namespace {

int g_channel = 0;  // channel names are new for every run

unsigned long long attr(const std::string& path, const char* name) {
  char v[64];
  const ssize_t n = getxattr(path.c_str(), (std::string("user.relayfs.") + name).c_str(), v,
                             sizeof v - 1);
  if (n < 0) return 0;
  v[n] = '\0';
  return std::strtoull(v, nullptr, 10);
}

// A global channel in dir; blocking: writers wait for room.
rchan* open_channel(const std::string& dir, std::string* file, bool blocking) {
  const std::string base = "sb" + std::to_string(g_channel++);
  rchan_callbacks cb{};
  cb.create_buf_file = [](const char*, const char*, mode_t* mode, rchan_buf*, int* global) {
    *global = 1;
    *mode = 0400;
    return 0;
  };
  relay_options opts{blocking ? RELAY_BLOCKING : 0u, -1, nullptr};
  rchan* c = relay_open_opts(base.c_str(), dir.c_str(), 1 << 20, 16, &cb, nullptr, &opts);
  if (!c) {
    perror("relay_open");
    cleanup();
    exit(1);
  }
  *file = dir + "/" + base + "0";
  return c;
}

void write_bytes(rchan* c, uint64_t bytes) {
  char rec[64];
  std::memset(rec, 'x', sizeof rec);
  rec[63] = '\n';
  for (uint64_t i = 0; i * sizeof rec < bytes; ++i) {
    std::memcpy(rec, &i, sizeof i);
    if (relay_write(c, rec, sizeof rec) != 0) {
      perror("relay_write");
      cleanup();
      exit(1);
    }
  }
}

struct Loss {
  double counted, real;  // lost_readahead_bytes, and what nobody got
};

// A reader that stops early (cmd, with FILE for the relay file): what it leaves counted.
Loss early_stop(const Mount& m, const std::string& cmd) {
  std::string file;
  rchan* c = open_channel(m.dir, &file, false);
  write_bytes(c, 1 << 20);
  const unsigned long long produced = attr(file, "bytes_produced");
  std::string run = cmd;
  run.replace(run.find("FILE"), 4, "'" + file + "'");
  FILE* p = popen(run.c_str(), "r");
  unsigned long long got = 0;
  char buf[65536];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) got += n;
  pclose(p);
  const unsigned long long counted = attr(file, "lost_readahead_bytes");
  // Closed first: on this blocking mount, cat then reads to the end of file instead of waiting.
  relay_close(c);
  FILE* cat = popen(("cat '" + file + "'").c_str(), "r");
  unsigned long long rest = 0;
  for (size_t n; (n = fread(buf, 1, sizeof buf, cat)) > 0;) rest += n;
  pclose(cat);
  return {static_cast<double>(counted), static_cast<double>(produced - got - rest)};
}

// MB/s of reader (a command with FILE) draining `bytes` written while it reads.
double drain_speed(const Mount& m, const std::string& reader, uint64_t bytes) {
  std::string file;
  rchan* c = open_channel(m.dir, &file, true);
  std::string run = reader;
  run.replace(run.find("FILE"), 4, "'" + file + "'");
  const auto t0 = Clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", run.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  write_bytes(c, bytes);
  relay_close(c);  // the reader gets the end of file once it has everything
  int st = 0;
  waitpid(pid, &st, 0);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "splice_bench: '%s' failed\n", run.c_str());
    cleanup();
    exit(1);
  }
  return static_cast<double>(bytes) / s / 1e6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s DAEMON [--runs N] [--bytes BYTES] [--readahead SIZE[,SIZE...]]\n",
            argv[0]);
    return 2;
  }
  const std::string daemon = argv[1];
  int runs = 3;
  uint64_t bytes = 256ull << 20;
  std::vector<std::string> readaheads = {"0", "131072"};
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--runs") runs = std::max(1, atoi(argv[i + 1]));
    else if (a == "--bytes") bytes = strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--readahead") {
      readaheads.clear();
      std::istringstream in(argv[i + 1]);
      for (std::string r; std::getline(in, r, ',');) readaheads.push_back(r);
    }
  }
  if (system("command -v pv >/dev/null 2>&1") != 0) {
    fprintf(stderr, "splice_bench: pv is not installed\n");
    return 77;
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  printf("splice_bench: %d runs, %llu MiB drained per speed run, 64-byte records\n", runs,
         static_cast<unsigned long long>(bytes >> 20));
  printf("%-10s %14s %14s %14s %14s %10s %10s %8s\n", "readahead", "pv-S counted", "pv-S real",
         "splice counted", "splice real", "pv MB/s", "cat MB/s", "pv/cat");
  for (const std::string& ra : readaheads) {
    const Mount m = start_daemon(
        {daemon, "none", "@DIR", "-f", "-o", "blocking,readahead=" + ra}, "fuse.relayfs");
    std::vector<double> pvc, pvr, spc, spr, pvs, cats, ratio;
    for (int r = 0; r < runs; ++r) {
      const Loss a = early_stop(m, "pv -q -S -s 1000 FILE");
      const Loss b = early_stop(m,
                                "python3 -c 'import os,sys; fd=os.open(sys.argv[1],os.O_RDONLY); "
                                "r,w=os.pipe(); n=os.splice(fd,w,100); "
                                "sys.stdout.buffer.write(os.read(r,n))' FILE");
      pvc.push_back(a.counted);
      pvr.push_back(a.real);
      spc.push_back(b.counted);
      spr.push_back(b.real);
      const double pv = drain_speed(m, "pv -q FILE >/dev/null", bytes);
      const double cat = drain_speed(m, "cat FILE >/dev/null", bytes);
      pvs.push_back(pv);
      cats.push_back(cat);
      ratio.push_back(pv / cat);
    }
    printf("%-10s %14.0f %14.0f %14.0f %14.0f %10.0f %10.0f %8.2f\n", ra.c_str(), median(pvc),
           median(pvr), median(spc), median(spr), median(pvs), median(cats), median(ratio));
    fflush(stdout);
    cleanup();
  }
  return 0;
}
