// The extended attributes' names (proto/names.h): the list the daemon shows and relayctl reads,
// and the lookups both sides use.
#include "proto/names.h"

#include <doctest/doctest.h>

#include <set>
#include <string>

using namespace relayfs;
using namespace relayfs::proto;

TEST_CASE("a relay file's attributes are the counters, then mode, blocking and channel") {
  for (size_t i = 0; i < core::kCounterCount; ++i)
    CHECK(std::string(attr_name(i)) == core::kCounterNames[i]);
  CHECK(std::string(attr_name(kAttrMode)) == "mode");
  CHECK(std::string(attr_name(kAttrBlocking)) == "blocking");
  CHECK(std::string(attr_name(kAttrChannel)) == "channel");
  std::set<std::string> names;
  for (size_t i = 0; i < kAttrCount; ++i) {
    names.insert(attr_name(i));
    CHECK(attr_index(attr_name(i)) == i);
    CHECK(xattr_name(i) == std::string("user.relayfs.") + attr_name(i));
    CHECK(xattr_index(xattr_name(i)) == i);
  }
  CHECK(names.size() == kAttrCount);  // no name twice
}

TEST_CASE("names that are no relay file attribute are told apart") {
  for (const char* name : {"user.relayfs.x", "user.relayfs.", "user.relayfs.modex",
                           "user.relayfs.mod", "user.other", "", "mode", "user.relayfs.control",
                           "user.relayfs.users"})
    CHECK_MESSAGE(xattr_index(name) == kAttrCount, name);
  CHECK(attr_index("") == kAttrCount);
  CHECK(std::string(kControlXattr) == "user.relayfs.control");
  CHECK(std::string(kUsersXattr) == "user.relayfs.users");
}
