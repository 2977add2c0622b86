// Small helpers the benchmarks share: pinning the calling thread, medians, and a `cat` reader.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

namespace relayfs::bench {

// Pins the calling thread to one CPU.
inline void pin_self(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);
}

// The median of v (0 if empty).
inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Runs cat FILE (or cat reading in_fd) with stdout on /dev/null; close_fd is closed in the
// child (the pipe's write end, or cat would never see end of file). cat runs on CPU 1, beside a
// producer the caller pins to CPU 0.
inline pid_t spawn_cat(const std::string& file, int in_fd, int close_fd = -1) {
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

}  // namespace relayfs::bench
