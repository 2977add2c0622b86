// The main() of every mount test program: without /dev/fuse or fusermount3 the whole program
// skips, with the exit status 77 that meson counts as a skip.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "mount.h"

int main(int argc, char** argv) {
  if (!relayfs::test::fuse_available()) {
    std::fprintf(stderr, "SKIP: /dev/fuse or fusermount3 is missing\n");
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
