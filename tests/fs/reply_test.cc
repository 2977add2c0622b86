// Every FUSE handler replies exactly once, on every path (src/fs/ops.cc): the rare paths are made
// to happen with the daemon's fault injection (RELAYFS_TEST_FAULTS, src/fs/fault.h).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <relayfs/relay.h>
#include <unistd.h>

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

TEST_CASE("a zero-copy read whose reply fails leaves its records for the next read") {
  TestFaults faults("reply_fail");
  Mount m;
  // No subbuf_start and no RELAY_OVERWRITE: reads reply straight from the mapping (zero-copy).
  rchan* c = open_global(m.dir, "z", 256, 8);
  const std::string want = write_records(c, 0, 50);  // 550 bytes: two closed sub-buffers and a part
  const std::string file = m.path("z0");
  const int fd = ::open(file.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  char buf[4096];
  errno = 0;
  CHECK(::read(fd, buf, sizeof buf) == -1);  // the injected failure of the reply
  CHECK(errno == EIO);
  CHECK(alive(m.pid));
  // Nothing was delivered, so nothing is consumed...
  CHECK(num(getfattr(file), "bytes_consumed") == 0);
  CHECK(num(getfattr(file), "subbufs_consumed") == 0);
  // ...and the next reader gets every record from the first one on, once each.
  const int other = ::open(file.c_str(), O_RDONLY);
  REQUIRE(other >= 0);
  CHECK(read_exactly(other, want.size(), sizeof buf) == want);
  CHECK(::read(fd, buf, sizeof buf) == 0);  // nothing more, for either file
  CHECK(num(getfattr(file), "bytes_consumed") == want.size());
  CHECK(num(getfattr(file), "subbufs_consumed") == 2);
  CHECK(alive(m.pid));
  ::close(other);
  ::close(fd);
  CHECK(relay_close(c) == 0);
}
