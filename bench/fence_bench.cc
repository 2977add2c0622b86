// What a switch claimed from another CPU pays for its fence (rseq::remote_fence), before the
// process forks (a membarrier that restarts this process's rseq sections on the buffer's CPU)
// and after (the claimer runs on that CPU for a moment, which reaches every process's sections;
// doc/core-design.md, "Remote claims after a fork"). The thread runs on CPU 1 and fences CPU 0.
//   fence_bench [--calls N] [--rounds R]
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/rseq.h"

namespace fence = relayfs::core::rseq;  // not "rseq": that is struct rseq of <sys/rseq.h>

namespace {

// Median microseconds of one remote_fence(0) over `calls` calls.
double median_us(int calls) {
  std::vector<double> v;
  v.reserve(static_cast<size_t>(calls));
  for (int i = 0; i < calls; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fence::remote_fence(0);
    v.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int calls = 2000, rounds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--calls")) calls = std::max(1, std::atoi(argv[i + 1]));
    if (!std::strcmp(argv[i], "--rounds")) rounds = std::max(1, std::atoi(argv[i + 1]));
  }
  if (!fence::available()) {
    std::puts("fence_bench: no rseq here (or a TSan build): nothing to measure");
    return 0;
  }
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(1, &one);
  if (::sched_setaffinity(0, sizeof one, &one) != 0) {
    std::puts("fence_bench: needs CPU 1");
    return 0;
  }
  std::vector<double> before, after;
  for (int r = 0; r < rounds; ++r) before.push_back(median_us(calls));
  // The first fork switches remote_fence to running on the CPU; the child has nothing to do.
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  if (child < 0 || ::waitpid(child, nullptr, 0) != child) return 1;
  for (int r = 0; r < rounds; ++r) after.push_back(median_us(calls));
  std::sort(before.begin(), before.end());
  std::sort(after.begin(), after.end());
  const double b = before[before.size() / 2], a = after[after.size() / 2];
  std::printf("remote_fence(0) from CPU 1, median of %d rounds of %d calls:\n", rounds, calls);
  std::printf("  before any fork (membarrier):        %8.2f us\n", b);
  std::printf("  after a fork (run on the CPU):       %8.2f us   %.1fx\n", a, a / b);
  return 0;
}
