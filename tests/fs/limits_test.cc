// Limits: what a process or a user may hold, and what happens at the edge. A producer at its own
// descriptor limit gets EMFILE from relay_open, and the half-made channel goes away.
#include <doctest/doctest.h>
#include <relayfs/relay.h>
#include <sys/resource.h>

#include <cerrno>
#include <string>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

TEST_CASE("relay_open at the producer's descriptor limit fails with EMFILE, and leaves nothing") {
  Mount m;
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Room for the control socket and one descriptor more: a global channel needs two (its
    // buffer and its doorbell), so the reply's descriptors cannot all be taken.
    const int lowest = ::dup(0);
    ::close(lowest);
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = static_cast<rlim_t>(lowest) + 2;
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) ::_exit(100);
    rchan_callbacks cb{};
    cb.create_buf_file = &make_global<0400>;
    errno = 0;
    rchan* c = relay_open("fd", m.dir.c_str(), 4096, 4, &cb, nullptr);
    ::_exit(c ? 101 : errno == EMFILE ? 0 : errno);
  }
  int st = 0;
  REQUIRE(::waitpid(pid, &st, 0) == pid);
  REQUIRE(WIFEXITED(st));
  CHECK_MESSAGE(WEXITSTATUS(st) == 0,
                "relay_open failed with " << std::string(std::strerror(WEXITSTATUS(st))) << ", not EMFILE");
  // The daemon made the channel before the producer failed to take it: the connection's end
  // finalizes it, and, empty, it goes.
  CHECK(wait_for([&] { return !exists(m.path("fd0")); }));
  rchan* c = open_global(m.dir, "fd");
  const std::string want = write_records(c, 0, 2);
  CHECK(slurp(m.path("fd0")) == want);
  CHECK(relay_close(c) == 0);
}
