// What the benchmarks read from /proc: mounts, and a process's CPU time and memory.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace relayfs::bench {

// Is dir a mount point of this file system type now (e.g. "fuse.relayfs")?
inline bool mounted(const std::string& dir, const std::string& type = "fuse.relayfs") {
  std::ifstream in("/proc/mounts");
  std::string line;
  while (std::getline(in, line))
    if (line.find(" " + dir + " " + type + " ") != std::string::npos) return true;
  return false;
}

// CPU seconds (user + system, all threads) a process has used so far.
inline double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t rp = all.rfind(')');  // comm may hold spaces
  if (rp == std::string::npos) return 0;
  std::vector<std::string> f;
  std::string w;
  for (size_t i = rp + 2; i <= all.size(); ++i) {
    if (i == all.size() || all[i] == ' ') {
      f.push_back(w);
      w.clear();
    } else {
      w += all[i];
    }
  }
  // f[0] is field 3 (state): utime is field 14, stime field 15.
  if (f.size() < 13) return 0;
  return static_cast<double>(std::stoull(f[11]) + std::stoull(f[12])) /
         static_cast<double>(sysconf(_SC_CLK_TCK));
}

// A field of /proc/PID/status in KiB ("VmRSS", "RssAnon", "RssFile", "RssShmem"), or a count
// ("Threads"); -1 if absent.
inline long status_kib(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return std::atol(line.c_str() + key.size() + 1);
  return -1;
}

}  // namespace relayfs::bench
