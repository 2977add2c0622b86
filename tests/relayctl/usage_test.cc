// relayctl's usage: --help everywhere, and bad arguments refused with status 2 before anything
// is done.
#include "relayctl/tool.h"

using namespace relayfs::test;

TEST_CASE("--help, global and per command, goes to stdout with status 0") {
  for (const char* args : {"--help", "-h", "help"}) {
    const Outcome o = relayctl(args);
    CHECK(o.status == 0);
    CHECK(o.out.find("Usage: relayctl COMMAND") != std::string::npos);
  }
  for (const char* cmd : {"write", "stat", "record"}) {
    CAPTURE(cmd);
    const Outcome o = relayctl(std::string(cmd) + " --help");
    CHECK(o.status == 0);
    CHECK(o.out.find(std::string("Usage: relayctl ") + cmd) != std::string::npos);
    CHECK(o.err.empty());
  }
}

TEST_CASE("record --help says it never overwrites and which OUTDIR it refuses") {
  const Outcome o = relayctl("record --help");
  CHECK(o.status == 0);
  CHECK(o.out.find("never overwritten") != std::string::npos);
  CHECK(o.out.find("must belong to you or root") != std::string::npos);
  CHECK(o.out.find("mode less the umask") != std::string::npos);
}

TEST_CASE("bad arguments are usage errors, with status 2 and a message") {
  Mount m;
  struct Case {
    std::string args, message;
  };
  const Case cases[] = {
      {"", "Usage: relayctl"},
      {"frobnicate", "unknown command 'frobnicate'"},
      {"write", "missing PATH"},
      {"write a b", "too many arguments"},
      {"write --subbuf-size 0 " + m.path("x"), "invalid sub-buffer size '0'"},
      {"write -s 12Q " + m.path("x"), "invalid sub-buffer size '12Q'"},
      {"write -n -1 " + m.path("x"), "invalid sub-buffer count '-1'"},
      {"write --record-size", "needs an argument"},
      {"write -r 8K -s 4K " + m.path("x"), "larger than --subbuf-size"},
      {"write --overwrite --blocking " + m.path("x"), "exclude each other"},
      {"write --timeout-ms 5 " + m.path("x"), "--timeout-ms needs --blocking"},
      {"write -b -t x " + m.path("x"), "invalid timeout 'x'"},
      {"write -m 999 " + m.path("x"), "invalid mode '999'"},
      {"write --bogus " + m.path("x"), "unknown option '--bogus'"},
      {"write " + m.dir + "/", "does not name a channel"},
      {"stat", "missing PATH"},
      {"stat -z " + m.dir, "unknown option '-z'"},
      {"stat --prometheus --json " + m.dir, "--prometheus and --json exclude each other"},
      {"stat --users --prometheus " + m.dir, "--prometheus and --users exclude each other"},
      {"stat --prometheus", "missing PATH"},
      {"record " + m.path("x"), "missing PATH or OUTDIR"},
      {"record a b c", "too many arguments"},
      {"record --fast a b", "unknown option '--fast'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.args);
    const Outcome o = relayctl(c.args + " </dev/null");
    CHECK(o.status == 2);
    CHECK(o.err.find(c.message) != std::string::npos);
    CHECK(o.out.empty());
  }
  // Nothing was created by any of them.
  CHECK(capture("ls -A " + m.dir).empty());
}

TEST_CASE("record of a channel that does not exist is an error naming it") {
  Mount m;
  TempDir t;
  const Outcome o = relayctl("record " + m.path("none") + " " + t.path("out"));
  CHECK(o.status == 1);
  CHECK(o.err.find(m.path("none") + ": " + std::strerror(ENOENT)) != std::string::npos);
}
