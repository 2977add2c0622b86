// relayctl flush / reset / close against a real mount: on a channel of `relayctl write
// --control` (a writer kept waiting on its standard input, a FIFO), and on channels that do not
// allow outside control.
#include <fcntl.h>
#include <relayfs/relay.h>

#include "relayctl/tool.h"

using namespace relayfs::test;

namespace {

// `relayctl write --control ARGS DIR/BASE` reading from a FIFO the test feeds.
struct Writer {
  Writer(const Mount& m, const std::string& base, const std::vector<std::string>& args) {
    fifo = m.dir + "-" + base + ".fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    std::vector<std::string> all = {"write", "--control"};
    all.insert(all.end(), args.begin(), args.end());
    all.push_back(m.path(base));
    // relayctl's stdin is the FIFO: open both ends here so neither side blocks in open().
    const int rd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
    REQUIRE(rd >= 0);
    in = ::open(fifo.c_str(), O_WRONLY | O_CLOEXEC);  // relayctl must not hold it: EOF
    REQUIRE(in >= 0);
    std::string prog = relayctl_path();
    std::vector<char*> argv{prog.data()};
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t p = ::fork();
    REQUIRE(p >= 0);
    if (p == 0) {
      ::fcntl(rd, F_SETFL, 0);
      ::dup2(rd, 0);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(rd);
    pid = p;
    // The channel exists once its first file does.
    for (int i = 0; i < 400 && !exists(m.path(base + "0")); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(exists(m.path(base + "0")));
  }
  ~Writer() {
    if (in >= 0) ::close(in);
    if (pid > 0) wait_exit(pid);
    ::unlink(fifo.c_str());
  }
  void feed(const std::string& s) { REQUIRE(::write(in, s.data(), s.size()) == static_cast<ssize_t>(s.size())); }
  int finish() {  // end of input: relayctl closes the channel and exits
    ::close(in);
    in = -1;
    const int st = wait_exit(pid);
    pid = -1;
    return st;
  }
  std::string fifo;
  int in = -1;
  pid_t pid = -1;
};

}  // namespace

TEST_CASE("relayctl flush makes the partial sub-buffer readable; close ends the channel") {
  Mount m;
  Writer w(m, "log", {});
  w.feed("one\ntwo\n");
  // The lines sit in the current sub-buffer until a switch: the counter says none is produced.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  CHECK(num(getfattr(m.path("log0")), "subbufs_produced") == 0);
  Outcome f = relayctl("flush '" + m.path("log") + "'");
  CHECK(f.status == 0);
  CHECK(f.err == "");
  CHECK(num(getfattr(m.path("log0")), "subbufs_produced") == 1);
  CHECK(slurp(m.path("log0")) == "one\ntwo\n");
  // A file of the channel names it too.
  CHECK(relayctl("flush '" + m.path("log0") + "'").status == 0);
  w.feed("three\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Outcome c = relayctl("close '" + m.path("log") + "'");
  CHECK(c.status == 0);
  // Closed: what was written is still read, then end of file; the writer's next record fails.
  CHECK(capture("timeout 10 cat '" + m.path("log0") + "'") == "three\n");
  w.feed("four\n");
  const int st = w.finish();
  CHECK(st != -1);
}

TEST_CASE("relayctl reset is refused for relayctl write, and nothing is lost") {
  Mount m;
  Writer w(m, "rs", {});
  w.feed("kept\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Outcome r = relayctl("reset '" + m.path("rs") + "'");
  CHECK(r.status == 1);
  CHECK(r.err.find("cannot reset") != std::string::npos);
  CHECK(r.err.find("Device or resource busy") != std::string::npos);
  CHECK(w.finish() == 0);
  CHECK(slurp(m.path("rs0")) == "kept\n");
}

TEST_CASE("relayctl flush/reset/close: refusals and bad arguments are clear errors") {
  Mount m;
  // A channel without RELAY_CONTROL.
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0444>;
  rchan* c = open_global(m.dir, "plain", 4096, 4, cb);
  Outcome p = relayctl("flush '" + m.path("plain") + "'");
  CHECK(p.status == 1);
  CHECK(p.err.find("did not allow outside control") != std::string::npos);
  CHECK(p.err.find(m.path("plain")) != std::string::npos);
  Outcome n = relayctl("close '" + m.path("nothing") + "'");
  CHECK(n.status == 1);
  CHECK(n.err.find("no such channel") != std::string::npos);
  CHECK(relayctl("flush").status == 2);
  CHECK(relayctl("reset --bogus x").status == 2);
  Outcome h = relayctl("close --help");
  CHECK(h.status == 0);
  CHECK(h.out.find("Usage: relayctl close PATH...") != std::string::npos);
  CHECK(relay_close(c) == 0);
}
