// A child process that a test forked. If the test ends without reaping it (a failed REQUIRE),
// the guard kills it (SIGKILL) and reaps it, so that it does not run on, spinning or stopped.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

namespace relayfs::test {

struct ChildGuard {
  pid_t pid = -1;  // set by the test after fork(); -1 once it reaped the child itself
  ChildGuard() = default;
  ChildGuard(const ChildGuard&) = delete;
  ChildGuard& operator=(const ChildGuard&) = delete;
  ~ChildGuard() {
    if (pid <= 0) return;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
};

}  // namespace relayfs::test
