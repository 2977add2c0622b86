// Outside control (relay_control, what relayctl flush/reset/close use) through a real mount: the
// producer allows it with RELAY_CONTROL, may veto each request with relay_options.control, and
// only the owner of the channel's files (or root) may ask. Every test mounts its own tree.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <relayfs/relay.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "proto/protocol.h"
#include "proto/wire.h"
#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

constexpr uid_t kNobody = 65534;

std::atomic<int> g_asked{0}, g_last_op{0}, g_verdict{0};

int veto(rchan*, int op) {
  ++g_asked;
  g_last_op = op;
  return g_verdict.load();
}

// A global channel whose files everyone may read (0444), opened with outside control.
rchan* open_controlled(const Mount& m, const char* base, int (*control)(rchan*, int) = nullptr,
                       unsigned flags = RELAY_CONTROL) {
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0444>;
  const relay_options o{flags, 0, control};
  return open_global(m.dir, base, 4096, 4, cb, &o);
}

int control(const std::string& path, int op) {
  return relay_control(path.c_str(), op) == 0 ? 0 : errno;
}

}  // namespace

TEST_CASE("flush from outside turns the partial sub-buffer into a produced one") {
  Mount m;
  rchan* c = open_controlled(m, "fl");
  const std::string data = write_records(c, 0, 5);
  CHECK(stats_of(c).subbufs_produced == 0);
  CHECK(control(m.path("fl0"), RELAY_CTL_FLUSH) == 0);
  CHECK(stats_of(c).subbufs_produced == 1);
  // Any file of the channel names it: the merged view too.
  CHECK(control(m.path("fl"), RELAY_CTL_FLUSH) == 0);
  CHECK(stats_of(c).subbufs_produced == 2);
  CHECK(slurp(m.path("fl0")) == data);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("close from outside: writes fail with EPIPE, readers reach end of file") {
  Mount m;
  rchan* c = open_controlled(m, "cl");
  const std::string data = write_records(c, 0, 3);
  CHECK(control(m.path("cl0"), RELAY_CTL_CLOSE) == 0);
  const std::string r = record(3);
  CHECK(relay_write(c, r.data(), r.size()) == -1);
  CHECK(errno == EPIPE);
  // cat ends instead of waiting for more: the buffer is closed and drained.
  CHECK(capture("timeout 10 cat '" + m.path("cl0") + "'") == data);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("records reserved before a close from outside and committed in reverse order are read") {
  Mount m;
  rchan* c = open_controlled(m, "rv");
  const std::string r1 = record(1), r2 = record(2);
  void* p1 = relay_reserve(c, r1.size());
  void* p2 = relay_reserve(c, r2.size());
  REQUIRE(p1 != nullptr);
  REQUIRE(p2 != nullptr);
  std::memcpy(p1, r1.data(), r1.size());
  std::memcpy(p2, r2.data(), r2.size());
  // The producer keeps its handle and can still commit what it reserved before the close.
  REQUIRE(control(m.path("rv0"), RELAY_CTL_CLOSE) == 0);
  relay_commit(c, p2, r2.size());
  relay_commit(c, p1, r1.size());
  const int fd = ::open(m.path("rv0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  CHECK(read_exactly(fd, 2 * kRec, 4096) == r1 + r2);
  CHECK(num(getfattr(m.path("rv0")), "bytes_produced") == 2 * kRec);
  // Once the producer is gone the buffer is finalized: nothing was left uncommitted.
  CHECK(relay_close(c) == 0);
  char more[64];
  CHECK(::read(fd, more, sizeof more) == 0);  // end of file
  char val[32] = {};
  const ssize_t n = ::fgetxattr(fd, "user.relayfs.lost_uncommitted", val, sizeof val - 1);
  REQUIRE(n > 0);
  CHECK(std::string(val, static_cast<size_t>(n)) == "0");
  ::close(fd);
}

TEST_CASE("reset from outside needs the producer's consent") {
  Mount m;
  SUBCASE("without a control callback, reset is refused with EBUSY and nothing is lost") {
    rchan* c = open_controlled(m, "rs");
    const std::string data = write_records(c, 0, 4);
    CHECK(control(m.path("rs0"), RELAY_CTL_RESET) == EBUSY);
    REQUIRE(relay_flush(c) == 0);
    CHECK(slurp(m.path("rs0")) == data);
    CHECK(relay_close(c) == 0);
  }
  SUBCASE("a callback that allows it: unread data is discarded") {
    g_asked = 0;
    g_verdict = 0;
    rchan* c = open_controlled(m, "rs", &veto);
    write_records(c, 0, 4);
    CHECK(control(m.path("rs0"), RELAY_CTL_RESET) == 0);
    CHECK(g_asked == 1);
    CHECK(g_last_op == RELAY_CTL_RESET);
    const std::string after = write_records(c, 10, 12);
    REQUIRE(relay_flush(c) == 0);
    CHECK(slurp(m.path("rs0")) == after);
    CHECK(relay_close(c) == 0);
  }
  SUBCASE("a callback that refuses: the requester gets its errno and nothing happens") {
    g_asked = 0;
    g_verdict = -EACCES;
    rchan* c = open_controlled(m, "rs", &veto);
    const std::string data = write_records(c, 0, 4);
    CHECK(control(m.path("rs0"), RELAY_CTL_FLUSH) == EACCES);
    CHECK(control(m.path("rs0"), RELAY_CTL_CLOSE) == EACCES);
    CHECK(g_asked == 2);
    CHECK(g_last_op == RELAY_CTL_CLOSE);
    CHECK(stats_of(c).subbufs_produced == 0);
    CHECK(relay_write(c, "x", 1) == 0);  // still open
    CHECK(relay_close(c) == 0);
  }
}

TEST_CASE("outside control is refused where the producer did not allow it, or for bad input") {
  Mount m;
  rchan* c = open_controlled(m, "no", nullptr, 0);  // no RELAY_CONTROL
  CHECK(control(m.path("no0"), RELAY_CTL_FLUSH) == EPERM);
  CHECK(control(m.path("no0"), 0) == EINVAL);
  CHECK(control(m.path("no0"), 4) == EINVAL);
  CHECK(control(m.path("none0"), RELAY_CTL_FLUSH) == ENOENT);
  CHECK(control(m.dir, RELAY_CTL_FLUSH) == EINVAL);          // a directory
  CHECK(control("/etc/hostname", RELAY_CTL_FLUSH) == ENOTSUP);  // not in relayfs
  CHECK(relay_control(nullptr, RELAY_CTL_FLUSH) == -1);
  CHECK(relay_close(c) == 0);
  // Once the producer closed the channel, nobody is there to ask.
  rchan* d = open_controlled(m, "gone");
  write_records(d, 0, 1);  // keeps the files until read
  CHECK(relay_close(d) == 0);
  CHECK(control(m.path("gone0"), RELAY_CTL_FLUSH) == ENOENT);
}

TEST_CASE("only the owner of the channel's files, or root, may control it") {
  if (::getuid() != 0) {
    MESSAGE("skipped: needs root to become another user");
    return;
  }
  Mount m({"-o", "allow_other"});
  rchan* c = open_controlled(m, "own");
  const std::string path = m.path("own0");
  CHECK(as_user(kNobody, kNobody, [&] { return control(path, RELAY_CTL_CLOSE); }) == EPERM);
  const std::string r = record(0);
  CHECK(relay_write(c, r.data(), r.size()) == 0);  // not closed
  CHECK(control(path, RELAY_CTL_FLUSH) == 0);       // root may
  CHECK(relay_close(c) == 0);
}

TEST_CASE("without allow_other, another user's request is refused at the socket") {
  if (::getuid() != 0) {
    MESSAGE("skipped: needs root to become another user");
    return;
  }
  Mount m;
  rchan* c = open_controlled(m, "priv");
  const std::string path = m.path("priv0");
  const std::string name = control_name(m.dir);
  // The kernel already refuses the path to another user; the raw socket is refused too.
  CHECK(as_user(kNobody, kNobody, [&] { return control(path, RELAY_CTL_FLUSH); }) == EACCES);
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(as_user(kNobody, kNobody, [&] {
          const int s = dial_control(name);
          if (s < 0) return 202;
          namespace proto = relayfs::proto;
          const proto::ControlRequest req{st.st_ino, proto::ControlOp::kClose};
          if (proto::send_message(s, proto::encode(req, 9)) != 0) return 203;
          proto::Received r;
          if (proto::recv_message(s, &r) != 1) return 204;
          proto::Status status;
          if (static_cast<proto::Type>(r.header.type) != proto::Type::kControlReply ||
              proto::decode(r.payload.data(), r.payload.size(), &status) != 0)
            return 205;
          return -status.status;
        }) == EACCES);
  CHECK(relay_write(c, "x", 1) == 0);  // not closed
  CHECK(relay_close(c) == 0);
}
