// fork(2) and channels, through a real mount and real processes: a child inherits its parent's
// channel, writes into the same buffers, and its relay_close frees only its own handle; what needs
// the channel's owner (relay_reset) fails in a child with EPERM; a child that exits without
// relay_close changes nothing; and once the opener is gone, the last child's relay_close ends the
// channel (relay_open(3), "fork(2)"). Every test mounts its own tree. Children use no doctest
// macro: they report through a pipe and end with _exit, so that no destructor of the parent's
// (the Mount fixture's above all) runs twice.
#include <doctest/doctest.h>
#include <poll.h>
#include <relayfs/relay.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

using namespace std::chrono_literals;

// What a child reports: the results of the calls under test, and how long its relay_close took.
struct Report {
  int close_rc = -2;  // relay_close's return value (-2: not called)
  int close_err = 0;  // errno after it
  double close_s = -1;
  int write_failures = 0;  // records whose relay_write failed
  int reset_rc = -2, reset_err = 0;
  int flush_rc = -2, flush_err = 0;
  int consumed_rc = -2, consumed_err = 0;
  int stats_rc = -2;
  unsigned long long bytes_produced = 0;
  int full = -1;  // relay_buf_full
};

// Writes record(from) .. record(to - 1); returns how many failed. No REQUIRE: for children.
int write_quietly(rchan* c, int from, int to) {
  int failed = 0;
  for (int i = from; i < to; ++i) {
    const std::string r = record(i);
    if (relay_write(c, r.data(), r.size()) != 0) ++failed;
  }
  return failed;
}

// relay_close, timed, into the report.
void close_timed(rchan* c, Report* r) {
  const auto t0 = Clock::now();
  r->close_rc = relay_close(c);
  r->close_err = r->close_rc == 0 ? 0 : errno;
  r->close_s = std::chrono::duration<double>(Clock::now() - t0).count();
}

// Runs body (Report body()) in a child process, which must exit 0 within limit; returns what it
// reported. A child still running at the limit is killed and the test fails.
template <class F>
Report in_child(F body, std::chrono::milliseconds limit = 20s) {
  int p[2];
  REQUIRE(::pipe(p) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(p[0]);
    const Report r = body();
    const bool sent = ::write(p[1], &r, sizeof r) == static_cast<ssize_t>(sizeof r);
    ::_exit(sent ? 0 : 1);
  }
  ::close(p[1]);
  bool killed = false;
  const int st = wait_or_kill(pid, limit, &killed);
  Report r;
  const ssize_t n = ::read(p[0], &r, sizeof r);
  ::close(p[0]);
  REQUIRE_MESSAGE(!killed, "the child did not finish in " << limit.count() << " ms");
  REQUIRE(WIFEXITED(st));
  REQUIRE(WEXITSTATUS(st) == 0);
  REQUIRE(n == static_cast<ssize_t>(sizeof r));
  return r;
}

std::atomic<int> g_mapped{0};

void count_mapped(rchan_buf*, void*) {
  ++g_mapped;
}

}  // namespace

TEST_CASE("a child's records land in the parent's channel; its relay_close returns at once and "
          "leaves the channel to the parent") {
  Mount m;
  g_mapped = 0;
  rchan_callbacks cb{};
  cb.buf_mapped = &count_mapped;
  const relay_options opts{RELAY_CONTROL, 0, nullptr};
  // Small sub-buffers, so that the child's records switch sub-buffers the parent then writes on.
  rchan* c = open_global(m.dir, "fk", 256, 64, cb, &opts);
  std::string expected = write_records(c, 0, 20);

  const Report r = in_child([&] {
    Report rep;
    rep.write_failures = write_quietly(c, 100, 200);
    close_timed(c, &rep);
    return rep;
  });
  for (int i = 100; i < 200; ++i) expected += record(i);
  MESSAGE("the child's relay_close took " << r.close_s * 1000 << " ms");
  CHECK(r.write_failures == 0);
  CHECK(r.close_rc == 0);
  CHECK(r.close_err == 0);
  CHECK(r.close_s < 5.0);

  // The channel is still the parent's: its writes succeed (no EPIPE) ...
  expected += write_records(c, 200, 220);
  // ... outside control still reaches its event thread ...
  const uint64_t produced = stats_of(c).subbufs_produced;
  CHECK(relay_control(m.path("fk0").c_str(), RELAY_CTL_FLUSH) == 0);
  CHECK(stats_of(c).subbufs_produced == produced + 1);
  // ... and so do buf_mapped events; every record of both processes is read back, once.
  const int fd = ::open(m.path("fk0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  CHECK(wait_for([] { return g_mapped.load() == 1; }));
  CHECK(read_exactly(fd, expected.size(), 1 << 16) == expected);
  const relay_stats st = stats_of(c);
  CHECK(st.lost_full + st.lost_wrap + st.lost_too_big + st.lost_uncommitted == 0);

  const auto t0 = Clock::now();
  CHECK(relay_close(c) == 0);
  const double parent_s = std::chrono::duration<double>(Clock::now() - t0).count();
  MESSAGE("the parent's relay_close took " << parent_s * 1000 << " ms");
  CHECK(parent_s < 5.0);
  ::close(fd);
}

TEST_CASE("relay_reset in a child fails with EPERM and discards nothing of the parent's") {
  Mount m;
  rchan* c = open_global(m.dir, "rs", 256, 64);
  std::string expected = write_records(c, 0, 20);
  const relay_stats before = stats_of(c);

  const Report r = in_child([&] {
    Report rep;
    rep.reset_rc = relay_reset(c);
    rep.reset_err = rep.reset_rc == 0 ? 0 : errno;
    rep.write_failures = write_quietly(c, 100, 105);
    close_timed(c, &rep);
    return rep;
  });
  for (int i = 100; i < 105; ++i) expected += record(i);
  CHECK(r.reset_rc == -1);
  CHECK(r.reset_err == EPERM);
  CHECK(r.write_failures == 0);
  CHECK(r.close_rc == 0);

  // Nothing was reset: the counters went on from where they were, and every record is there.
  const relay_stats after = stats_of(c);
  CHECK(after.bytes_produced == before.bytes_produced + 5 * kRec);
  CHECK(slurp(m.path("rs0")) == expected);
  // The parent, the owner, still may reset.
  CHECK(relay_reset(c) == 0);
  const std::string fresh = write_records(c, 300, 305);
  CHECK(slurp(m.path("rs0")) == fresh);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("a child may flush, read the counters of and report consumed sub-buffers of the "
          "parent's channel") {
  Mount m;
  rchan* c = open_global(m.dir, "fl", 256, 4);
  write_records(c, 0, 10);
  const relay_stats before = stats_of(c);
  REQUIRE(before.subbufs_consumed == 0);

  const Report r = in_child([&] {
    Report rep;
    rep.flush_rc = relay_flush(c);
    rep.flush_err = rep.flush_rc == 0 ? 0 : errno;
    rep.consumed_rc = relay_subbufs_consumed(c, 0, 1);
    rep.consumed_err = rep.consumed_rc == 0 ? 0 : errno;
    relay_stats st{};
    rep.stats_rc = relay_buf_stats(c->buf[0], &st);
    rep.bytes_produced = st.bytes_produced;
    rep.full = relay_buf_full(c->buf[0]);
    close_timed(c, &rep);
    return rep;
  });
  CHECK(r.flush_rc == 0);
  CHECK(r.consumed_rc == 0);
  CHECK(r.stats_rc == 0);
  CHECK(r.bytes_produced == before.bytes_produced);
  CHECK(r.full == 0);
  CHECK(r.close_rc == 0);
  // The flush switched the parent's buffer, and the daemon took the consumed report as the
  // owner's: the flushed sub-buffer is released.
  CHECK(stats_of(c).subbufs_produced == before.subbufs_produced + 1);
  CHECK(wait_for([&] { return stats_of(c).subbufs_consumed == 1; }));
  const std::string more = write_records(c, 10, 12);
  CHECK(slurp(m.path("fl0")) == more);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("a child that exits without relay_close leaves the channel to the parent") {
  Mount m;
  rchan* c = open_global(m.dir, "ex", 256, 64);
  std::string expected = write_records(c, 0, 20);
  const Report r = in_child([&] {
    Report rep;
    rep.write_failures = write_quietly(c, 100, 150);
    return rep;  // and _exit: the child's copies of the socket and buffers go with it
  });
  CHECK(r.write_failures == 0);
  for (int i = 100; i < 150; ++i) expected += record(i);
  expected += write_records(c, 200, 220);
  CHECK(slurp(m.path("ex0")) == expected);
  const auto t0 = Clock::now();
  CHECK(relay_close(c) == 0);
  CHECK(Clock::now() - t0 < 5s);
}

TEST_CASE("once the opener has exited, the channel lives until its child closes it") {
  Mount m;
  // The opener is a process of its own, so that it can exit while its child goes on; the test
  // learns the child's pid through `pids` and tells it to go on through `go` once the opener is
  // reaped; the child reports through `rep`.
  int pids[2], go[2], rep[2];
  REQUIRE(::pipe(pids) == 0);
  REQUIRE(::pipe(go) == 0);
  REQUIRE(::pipe(rep) == 0);
  const pid_t opener = ::fork();
  REQUIRE(opener >= 0);
  if (opener == 0) {
    rchan_callbacks cb{};
    cb.create_buf_file = &make_global<0440>;
    rchan* c = relay_open("op", m.dir.c_str(), 256, 64, &cb, nullptr);
    if (!c || write_quietly(c, 0, 20) != 0) ::_exit(1);
    const pid_t child = ::fork();
    if (child < 0) ::_exit(2);
    if (child == 0) {
      char byte;
      if (::read(go[0], &byte, 1) != 1) ::_exit(3);  // the opener is gone
      Report r;
      r.write_failures = write_quietly(c, 100, 120);
      close_timed(c, &r);
      ::_exit(::write(rep[1], &r, sizeof r) == static_cast<ssize_t>(sizeof r) ? 0 : 4);
    }
    ::_exit(::write(pids[1], &child, sizeof child) == sizeof child ? 0 : 5);  // no relay_close
  }
  ::close(pids[1]);
  ::close(go[0]);
  ::close(rep[1]);
  bool killed = false;
  const int st = wait_or_kill(opener, 10s, &killed);
  pid_t child = -1;
  const bool got_pid = ::read(pids[0], &child, sizeof child) == sizeof child;
  ::close(pids[0]);
  REQUIRE(!killed);
  REQUIRE(WIFEXITED(st));
  REQUIRE(WEXITSTATUS(st) == 0);
  REQUIRE(got_pid);

  // The opener is gone, but its child still holds the connection: the channel is open, and a
  // drained file stays.
  std::string expected;
  for (int i = 0; i < 20; ++i) expected += record(i);
  CHECK(slurp(m.path("op0")) == expected);
  std::this_thread::sleep_for(100ms);
  CHECK(exists(m.path("op0")));

  REQUIRE(::write(go[1], "g", 1) == 1);
  ::close(go[1]);
  pollfd pfd{rep[0], POLLIN, 0};
  Report r;
  const bool reported = ::poll(&pfd, 1, 20'000) == 1 && ::read(rep[0], &r, sizeof r) == sizeof r;
  ::close(rep[0]);
  if (!reported) ::kill(child, SIGKILL);  // not our child: init reaps it
  REQUIRE_MESSAGE(reported, "the child did not report within 20 s");
  MESSAGE("the child's relay_close took " << r.close_s * 1000 << " ms");
  CHECK(r.write_failures == 0);
  CHECK(r.close_rc == 0);
  CHECK(r.close_s < 5.0);

  // Its relay_close dropped the last copy of the connection: the daemon finalizes the channel,
  // whose data stays readable and whose file goes once drained.
  expected.clear();
  for (int i = 100; i < 120; ++i) expected += record(i);
  CHECK(slurp(m.path("op0")) == expected);
  CHECK(wait_for([&] { return !exists(m.path("op0")); }, 10s));
}
