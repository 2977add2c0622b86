// Every FUSE handler replies exactly once, on every path (src/fs/ops.cc, files.h): the rare paths
// are made to happen with the daemon's fault injection (RELAYFS_TEST_FAULTS, src/fs/fault.h). And
// every reply on the control socket reaches its client, or the client is cut off
// (src/fs/connection.h).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <relayfs/relay.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

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

// A reply the socket has no room for waits for room: none is dropped (issue 14: a dropped
// kReaderConsumedReply left relay_reader_consumed waiting 30 s, then failing with EIO).
TEST_CASE("replies to a client that reads late all arrive, in order") {
  namespace proto = relayfs::proto;
  Mount m;
  const int s = connect_control(m.dir);
  const timeval limit{10, 0};  // a daemon that stopped reading us fails the test, not hangs it
  ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  // No relay_reader_open on this connection: each is refused with EBADF, in a reply of its own.
  constexpr uint32_t kRequests = 3000;  // far more than a socket's buffer holds
  for (uint32_t i = 1; i <= kRequests; ++i)
    REQUIRE(proto::send_message(s, proto::encode(proto::ReaderConsumed{0, 0}, i)) == 0);
  uint32_t next = 1;
  for (;;) {
    pollfd p{s, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) break;
    proto::Received r;
    if (proto::recv_message(s, &r) != 1) break;
    proto::Status st;
    REQUIRE(static_cast<proto::Type>(r.header.type) == proto::Type::kReaderConsumedReply);
    REQUIRE(proto::decode(r.payload.data(), r.payload.size(), &st) == 0);
    CHECK(st.status == -EBADF);
    REQUIRE(r.header.seq == next);
    if (++next > kRequests) break;
  }
  CHECK(next == kRequests + 1);
  CHECK(alive(m.pid));
  ::close(s);
}

TEST_CASE("a client that never reads its replies is cut off, and the others are served") {
  namespace proto = relayfs::proto;
  Mount m;
  const int s = connect_control(m.dir);
  const timeval limit{10, 0};
  ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  // Requests until the daemon hangs up: its queue for us is bounded (1 MiB of replies).
  uint32_t sent = 0;
  int rc = 0;
  while (sent < 400000 && (rc = proto::send_message(s, proto::encode(proto::ReaderConsumed{0, 0},
                                                                     sent + 1))) == 0)
    ++sent;
  MESSAGE(sent << " requests sent before the daemon hung up: " << std::string(std::strerror(-rc)));
  CHECK(rc == -EPIPE);
  CHECK(sent > 10000);  // a megabyte of replies, at about 24 bytes each, and the socket's own
  // What the socket held when the daemon hung up can still be read, then the end of stream.
  uint32_t replies = 0;
  for (;;) {
    pollfd p{s, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 5000) == 1);  // a daemon that never hangs up fails here, not hangs
    proto::Received r;
    if (proto::recv_message(s, &r) != 1) break;
    ++replies;
  }
  CHECK(replies < sent);
  CHECK(alive(m.pid));
  // Everyone else goes on.
  rchan* c = open_global(m.dir, "after", 4096, 4);
  REQUIRE(c != nullptr);
  const std::string want = write_records(c, 0, 5);
  CHECK(slurp(m.path("after0")) == want);
  CHECK(relay_close(c) == 0);
  ::close(s);
}

// The end-of-file reply lets the reader close at once, and its release free the channel on the
// loop thread while the read's handler is still finishing: it must not touch the freed channel
// or open file (a use-after-free the sanitizer builds catch).
TEST_CASE("readers that close right after the end of file leave the daemon whole") {
  Mount m;
  for (int i = 0; i < 300; ++i) {
    const std::string name = "e" + std::to_string(i);
    rchan* c = open_global(m.dir, name.c_str(), 4096, 4);
    REQUIRE(c != nullptr);
    const std::string want = write_records(c, 0, 3);
    REQUIRE(relay_close(c) == 0);
    const int fd = ::open(m.path(name + "0").c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    CHECK(read_exactly(fd, want.size(), 65536) == want);
    char buf[64];
    CHECK(::read(fd, buf, sizeof buf) == 0);
    ::close(fd);  // its release races the tail of the end-of-file read
  }
  CHECK(alive(m.pid));
}

namespace {
void on_usr1(int) {}
}  // namespace

// A reader's interrupt can reach the daemon's loop before the read it interrupts does (the
// worker registers the interrupt callback, then hands the read over): the read must still end
// with EINTR, not wait for data. park_delay holds the hand-over half a second.
TEST_CASE("a blocking read interrupted on its way to being parked ends with EINTR") {
  TestFaults faults("park_delay");
  Mount m({"-o", "blocking"});
  rchan* c = open_global(m.dir, "i", 4096, 4);
  const int fd = ::open(m.path("i0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  struct sigaction sa {}, old {};
  sa.sa_handler = &on_usr1;  // caught, no SA_RESTART: the read itself must come back with EINTR
  REQUIRE(::sigaction(SIGUSR1, &sa, &old) == 0);
  std::atomic<bool> done{false};
  ssize_t got = 0;
  int err = 0;
  std::thread reader([&] {
    char buf[64];
    got = ::read(fd, buf, sizeof buf);
    err = errno;
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // inside the 500 ms hand-over
  ::pthread_kill(reader.native_handle(), SIGUSR1);
  for (int i = 0; i < 200 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const bool ended = done;
  if (!ended) write_records(c, 0, 1);  // the interrupt was lost: data ends the read
  reader.join();
  ::sigaction(SIGUSR1, &old, nullptr);
  CHECK(ended);
  CHECK(got == -1);
  CHECK(err == EINTR);
  CHECK(alive(m.pid));
  ::close(fd);
  CHECK(relay_close(c) == 0);
}
