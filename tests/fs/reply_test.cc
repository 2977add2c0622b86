// Every FUSE handler replies exactly once, on every path (src/fs/ops.cc): the rare paths are made
// to happen with the daemon's fault injection (RELAYFS_TEST_FAULTS, src/fs/fault.h).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <relayfs/relay.h>

#include <atomic>
#include <cerrno>
#include <string>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

std::atomic<int> g_mapped{0}, g_unmapped{0};
void on_mapped(rchan_buf*, void*) { ++g_mapped; }
void on_unmapped(rchan_buf*, void*) { ++g_unmapped; }

}  // namespace

TEST_CASE("open replies once even when telling the producer (buf_mapped) runs out of memory") {
  TestFaults faults("notify_alloc");
  Mount m;
  rchan_callbacks cb{};
  cb.buf_mapped = &on_mapped;
  cb.buf_unmapped = &on_unmapped;
  rchan* c = open_global(m.dir, "n", 4096, 4, cb);
  const std::string want = write_records(c, 0, 50);
  // The first opener makes the daemon send buf_mapped after its reply to the open: the event is
  // lost to the injected bad_alloc, and that must not become a second reply.
  for (int round = 0; round < 3; ++round) {
    const int fd = ::open(m.path("n0").c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    ::close(fd);
  }
  CHECK(alive(m.pid));
  CHECK(slurp(m.path("n0")) == want);
  CHECK(alive(m.pid));
  CHECK(g_mapped == 0);  // what the fault took, and nothing else
  CHECK(g_unmapped == 0);
  CHECK(relay_close(c) == 0);
}
