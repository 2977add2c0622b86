// The mount table's parser (proto/mountinfo.h): the fields relayfs uses, escapes undone, lines
// that are no entry passed over.
#include "proto/mountinfo.h"

#include <doctest/doctest.h>

using namespace relayfs::proto;

TEST_CASE("mountinfo: device, mount point and type, with \\ooo escapes undone") {
  const auto m = parse_mountinfo(
      "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n"
      "97 29 0:52 / /mnt/relay\\040one rw,nosuid,nodev - fuse.relayfs none rw,user_id=0\n"
      "not an entry\n"
      "98 29 0:53 /sub /mnt/back\\134slash rw master:1 propagation:2 - fuse.relayfs x rw\n");
  REQUIRE(m.size() == 3);
  CHECK(m[0].dev == "0:21");
  CHECK(m[0].point == "/proc");
  CHECK(m[0].type == "proc");
  CHECK(m[1].dev == "0:52");
  CHECK(m[1].point == "/mnt/relay one");
  CHECK(m[1].type == kFsType);
  CHECK(m[2].point == "/mnt/back\\slash");  // optional fields before " - " are skipped
  CHECK(m[2].type == "fuse.relayfs");
}

TEST_CASE("mountinfo: this process's table lists its root") {
  bool root = false;
  for (const auto& e : read_mountinfo()) root = root || e.point == "/";
  CHECK(root);
}
