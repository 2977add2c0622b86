// The counters every relay file carries (src/core/stats.h): one definition of bytes_produced for
// the producer (relay_buf_stats) and the daemon (user.relayfs.*), and books that balance whatever
// the reader does: bytes_produced = bytes_consumed + bytes_unread + every byte counter of loss.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <relayfs/relay.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/xattr.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

// Every byte counter of loss, from the attributes.
unsigned long long lost_bytes(const Attrs& a) {
  return num(a, "lost_uncommitted") + num(a, "lost_overrun_bytes") + num(a, "lost_reset_bytes") +
         num(a, "lost_readahead_bytes") + num(a, "lost_expired_bytes");
}

// The books of a relay file balance.
void check_balance(const std::string& path) {
  const Attrs a = getfattr(path);
  CAPTURE(path);
  CAPTURE(num(a, "bytes_produced"));
  CAPTURE(num(a, "bytes_consumed"));
  CAPTURE(num(a, "bytes_unread"));
  CAPTURE(lost_bytes(a));
  CHECK(num(a, "bytes_produced") == num(a, "bytes_consumed") + num(a, "bytes_unread") + lost_bytes(a));
}

// n records of exactly 12 bytes, numbered from `from`.
std::string write12(rchan* c, int from, int n) {
  std::string all;
  for (int i = from; i < from + n; ++i) {
    char r[16];
    std::snprintf(r, sizeof r, "rec %06d.\n", i);
    REQUIRE(relay_write(c, r, 12) == 0);
    all.append(r, 12);
  }
  return all;
}

}  // namespace

TEST_CASE("bytes_produced is one definition: a reserved record counts once committed, on both sides") {
  Mount m;
  rchan* c = open_global(m.dir, "def", 4096, 4);
  const std::string before = write_records(c, 0, 10);
  char* slot = static_cast<char*>(relay_reserve(c, kRec));
  REQUIRE(slot != nullptr);
  const std::string after = write_records(c, 10, 12);  // committed, behind the record in flight
  // In flight: neither the library nor the daemon counts the reserved record, nor what follows
  // it (nobody can prove it whole yet).
  CHECK(stats_of(c).bytes_produced == before.size());
  CHECK(num(getfattr(m.path("def0")), "bytes_produced") == before.size());
  CHECK(file_size(m.path("def0")) == static_cast<off_t>(before.size()));
  const std::string mid = record(99);
  std::memcpy(slot, mid.data(), kRec);
  relay_commit(c, slot, kRec);
  const size_t all = before.size() + kRec + after.size();
  CHECK(stats_of(c).bytes_produced == all);
  CHECK(num(getfattr(m.path("def0")), "bytes_produced") == all);
  CHECK(slurp(m.path("def0")) == before + mid + after);
  check_balance(m.path("def0"));
  CHECK(relay_close(c) == 0);
}

TEST_CASE("relay_reset counts what it discards unread in lost_reset_bytes, and the books balance") {
  Mount m;
  rchan* c = open_global(m.dir, "rs", 4096, 4);
  SUBCASE("nothing read before the reset") {
    write12(c, 0, 100);  // 1,200 bytes, as in the report
    REQUIRE(relay_reset(c) == 0);
    const std::string kept = write_records(c, 100, 103);  // 3 records of 11 bytes
    const Attrs a = getfattr(m.path("rs0"));
    CHECK(num(a, "bytes_produced") == 1233);
    CHECK(num(a, "bytes_unread") == 33);
    CHECK(num(a, "lost_reset_bytes") == 1200);
    CHECK(stats_of(c).lost_reset_bytes == 1200);  // published for the producer too
    check_balance(m.path("rs0"));
    CHECK(slurp(m.path("rs0")) == kept);
  }
  SUBCASE("part read before the reset, across sub-buffers") {
    const std::string first = write12(c, 0, 500);  // 6,000 bytes: one sub-buffer closed
    const int fd = ::open(m.path("rs0").c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    CHECK(read_exactly(fd, 600, 600) == first.substr(0, 600));
    REQUIRE(relay_reset(c) == 0);
    const std::string kept = write12(c, 500, 3);
    CHECK(read_exactly(fd, 36, 4096) == kept);
    ::close(fd);
    const Attrs a = getfattr(m.path("rs0"));
    CHECK(num(a, "lost_reset_bytes") == 6000 - 600);
    CHECK(num(a, "bytes_consumed") == 600 + 36);
    CHECK(num(a, "bytes_unread") == 0);
    check_balance(m.path("rs0"));
  }
  CHECK(relay_close(c) == 0);
}

TEST_CASE("overwrite mode: the bytes of lapped sub-buffers are counted, and the books balance") {
  Mount m;
  relay_options opts{RELAY_OVERWRITE, 0, nullptr};
  rchan* c = open_global(m.dir, "ow", 1024, 4, {}, &opts);
  const int fd = ::open(m.path("ow0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  const std::string first = write_records(c, 0, 50);
  CHECK(read_exactly(fd, 500, 500) == first.substr(0, 500));
  write_records(c, 50, 3050);  // 33,000 bytes more through 4 KiB: lapped many times
  std::string rest;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) rest.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const Attrs a = getfattr(m.path("ow0"));
  CHECK(num(a, "overruns") > 0);
  CHECK(num(a, "lost_overrun_bytes") > 0);
  CHECK(num(a, "bytes_consumed") == 500 + rest.size());
  CHECK(num(a, "bytes_unread") == 0);
  CHECK(num(a, "lost_overrun_bytes") == 3050 * kRec - 500 - rest.size());
  check_balance(m.path("ow0"));
  check_balance(m.path("ow"));  // the merged view: sums
  CHECK(relay_close(c) == 0);
}

TEST_CASE("an mmap reader's sub-buffers count as consumed: the books balance for it too") {
  Mount m;
  rchan* c = open_global(m.dir, "mm", 4096, 4);
  const std::string all = write_records(c, 0, 800);  // 8,800 bytes: two sub-buffers closed
  relay_reader* r = relay_reader_open(m.path("mm0").c_str());
  REQUIRE(r != nullptr);
  relay_subbuf sb;
  size_t had = 0;
  while (relay_reader_next(r, &sb) == 1) {
    had += sb.length;
    REQUIRE(relay_reader_consumed(r, 1) == 0);
  }
  CHECK(had == 2 * (4096 / kRec) * kRec);
  const Attrs a = getfattr(m.path("mm0"));
  CHECK(num(a, "bytes_consumed") == had);
  CHECK(num(a, "bytes_unread") == all.size() - had);
  check_balance(m.path("mm0"));
  relay_reader_close(r);
  CHECK(slurp(m.path("mm0")) == all.substr(had));
  check_balance(m.path("mm0"));
  CHECK(relay_close(c) == 0);
}


TEST_CASE("a lone writer killed holding a reserved slot: the records after it are counted lost") {
  Mount m;
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    rchan_callbacks cb{};
    cb.create_buf_file = &make_global<0400>;
    rchan* c = relay_open("lone", m.dir.c_str(), 4096, 4, &cb, nullptr);
    if (!c) ::_exit(1);
    for (int i = 0; i < 3; ++i) relay_write(c, record(i).data(), kRec);
    char* slot = static_cast<char*>(relay_reserve(c, kRec));  // never committed
    if (!slot) ::_exit(2);
    for (int i = 4; i < 6; ++i) relay_write(c, record(i).data(), kRec);  // committed, after it
    if (::write(ready[1], "x", 1) != 1) ::_exit(3);
    ::pause();  // killed here, holding the slot
    ::_exit(4);
  }
  ::close(ready[1]);
  char x;
  REQUIRE(::read(ready[0], &x, 1) == 1);
  ::close(ready[0]);
  const int fd = ::open(m.path("lone0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  // Once the daemon has finalized the channel, a read gets what can be proven whole.
  std::string got;
  REQUIRE(wait_for([&] {
    char buf[256];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) got.append(buf, static_cast<size_t>(n));
    return n == 0 && fnum(fd, "lost_uncommitted") != 0;
  }));
  CHECK(got == record(0) + record(1) + record(2));
  CHECK(fnum(fd, "lost_uncommitted") == 3 * kRec);  // the slot and the two records after it
  CHECK(fnum(fd, "bytes_produced") == 6 * kRec);
  CHECK(fnum(fd, "bytes_consumed") == 3 * kRec);
  CHECK(fnum(fd, "bytes_unread") == 0);
  ::close(fd);
}
