// Small helpers the benchmarks share: pinning the calling thread, and medians.
#pragma once

#include <sched.h>

#include <algorithm>
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

}  // namespace relayfs::bench
