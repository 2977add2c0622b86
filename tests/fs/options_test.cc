// The daemon's command line and mount options (src/fs/main.cc): -o ro refuses new channels with
// EROFS, a mount point that is missing or no directory is a failure to mount (1), not a usage
// error (2), and RELAYFS_TEST_FAULTS takes only faults it knows.
#include <doctest/doctest.h>
#include <relayfs/relay.h>

#include <cerrno>
#include <string>

#include "proto/protocol.h"
#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;
namespace proto = relayfs::proto;

namespace {

// The exit status of the daemon run in the foreground with args (it must not mount).
int daemon_status(const std::string& args) {
  return run(daemon_path() + " " + args + " -f 2>/dev/null");
}

}  // namespace

TEST_CASE("-o ro: relay_open fails with EROFS, raw or through the library, and mkdir too") {
  Mount m({"-o", "ro"});
  errno = 0;
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0400>;
  CHECK(relay_open("log", m.dir.c_str(), 4096, 4, &cb, nullptr) == nullptr);
  CHECK(errno == EROFS);
  const int s = connect_control(m.dir);
  proto::OpenRequest req;
  req.parent_ino = 1;
  req.subbuf_size = 4096;
  req.n_subbufs = 4;
  req.flags = proto::kFlagGlobal;
  req.base_filename = "raw";
  CHECK(control_answer(s, proto::encode(req, 1)) == EROFS);
  ::close(s);
  CHECK(::mkdir(m.path("dir").c_str(), 0755) == -1);
  CHECK(errno == EROFS);
  CHECK(!exists(m.path("log0")));
  CHECK(!exists(m.path("raw0")));
}

TEST_CASE("a rw mount (and ro then rw) takes channels") {
  Mount m({"-o", "ro,rw"});
  rchan* c = open_global(m.dir, "log");
  const std::string want = write_records(c, 0, 3);
  CHECK(slurp(m.path("log0")) == want);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("exit status: a missing or non-directory mount point is 1, a usage error 2") {
  TempDir t;
  CHECK(daemon_status(t.path("missing")) == 1);
  CHECK(daemon_status("none " + t.path("missing")) == 1);
  REQUIRE(run("touch '" + t.path("file") + "'") == 0);
  CHECK(daemon_status(t.path("file")) == 1);
  CHECK(daemon_status("") == 2);                      // no mount point
  CHECK(daemon_status("a b " + t.dir) == 2);          // too many arguments
  CHECK(run(daemon_path() + " --help >/dev/null") == 0);
  const std::string err = capture(daemon_path() + " " + t.path("missing") + " -f 2>&1");
  CHECK(err.find("No such file or directory") != std::string::npos);
}

TEST_CASE("RELAYFS_TEST_FAULTS with an unknown fault is refused before mounting") {
  TempDir t;
  CHECK(run("RELAYFS_TEST_FAULTS=no_such_fault " + daemon_path() + " " + t.dir +
            " -f 2>/dev/null") == 2);
  CHECK(!is_mounted(t.dir));
}
