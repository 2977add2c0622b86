// splice(2) and sendfile(2) of relay files (src/fs/ops.cc, page_read): this kernel serves them
// through its page cache, which takes a page of the stream for a splice of a few bytes. What it
// took and no reader was shown to get is counted in lost_readahead_bytes, at most a page with
// the daemon's read-ahead off; pv and cat reading to the end lose nothing; and the books balance.
// With the real tools: pv, and python's os.splice and os.sendfile.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <relayfs/relay.h>
#include <sys/xattr.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <thread>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

constexpr unsigned long long kPage = 4096;

unsigned long long lost_bytes(const Attrs& a) {
  return num(a, "lost_uncommitted") + num(a, "lost_overrun_bytes") + num(a, "lost_reset_bytes") +
         num(a, "lost_readahead_bytes") + num(a, "lost_expired_bytes");
}

void check_balance(const Attrs& a) {
  CAPTURE(num(a, "bytes_produced"));
  CAPTURE(num(a, "bytes_consumed"));
  CAPTURE(num(a, "bytes_unread"));
  CAPTURE(lost_bytes(a));
  CHECK(num(a, "bytes_produced") == num(a, "bytes_consumed") + num(a, "bytes_unread") + lost_bytes(a));
}

// What was produced and is neither counted as read nor left for a reader that reads rest.
unsigned long long produced_minus(const Attrs& a, size_t rest) {
  return num(a, "bytes_produced") - num(a, "bytes_consumed") - rest;
}

bool have(const char* tool) {
  return run(std::string("command -v ") + tool + " >/dev/null 2>&1") == 0;
}

// Runs python3 code with the relay file as sys.argv[1]; returns what it printed.
std::string python(const std::string& code, const std::string& path) {
  return capture("python3 -c '" + code + "' '" + path + "' 2>&1");
}

// python's os.splice of n bytes of path into a pipe, then close: what it got.
std::string splice_and_close(const std::string& path, size_t n) {
  return python(
      "import os,sys\n"
      "fd=os.open(sys.argv[1],os.O_RDONLY); r,w=os.pipe()\n"
      "n=os.splice(fd,w," + std::to_string(n) + "); sys.stdout.write(os.read(r,n).decode())\n"
      "os.close(fd)\n",
      path);
}

}  // namespace

TEST_CASE("pv -S stops after 1000 bytes: what its splice took beyond them is counted, at most a page") {
  if (!have("pv")) {
    MESSAGE("skipped: pv is not installed");
    return;
  }
  Mount m;
  rchan* c = open_global(m.dir, "pv", 1 << 16, 8);
  const std::string all = write_records(c, 0, 20000);  // 220,000 bytes
  const std::string path = m.path("pv0");
  const unsigned long long produced = num(getfattr(path), "bytes_produced");
  REQUIRE(produced == all.size());
  const std::string got = capture("pv -q -S -s 1000 '" + path + "' </dev/null 2>/dev/null");
  REQUIRE(got.size() == 1000);
  CHECK(got == all.substr(0, 1000));
  const Attrs after_pv = getfattr(path);
  const unsigned long long lost = num(after_pv, "lost_readahead_bytes");
  check_balance(after_pv);
  const std::string rest = slurp(path);  // cat: what the buffer still holds
  const unsigned long long truly_lost = produced - got.size() - rest.size();
  MESSAGE("pv got " << got.size() << " bytes, cat " << rest.size() << "; the page cache took "
                    << truly_lost << " more that nobody got; counted: " << lost);
  CHECK(lost >= truly_lost);                 // nothing lost without a counter
  CHECK(lost <= truly_lost + got.size());    // off only by what pv got of that page
  CHECK(lost <= kPage);                      // read-ahead off: one page
  CHECK(all.substr(produced - rest.size()) == rest);  // the rest, in order, from where it was
  const Attrs end = getfattr(path);
  CHECK(num(end, "bytes_consumed") == rest.size());
  CHECK(num(end, "bytes_unread") == 0);
  check_balance(end);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("with -o readahead the kernel takes a window: more is counted, and the books balance") {
  Mount m({"-o", "readahead=131072"});
  rchan* c = open_global(m.dir, "ra", 1 << 16, 16);
  const std::string all = write_records(c, 0, 50000);  // 550,000 bytes
  const std::string path = m.path("ra0");
  const std::string out = splice_and_close(path, 100);
  REQUIRE(out.size() == 100);
  const Attrs a = getfattr(path);
  const unsigned long long lost = num(a, "lost_readahead_bytes");
  MESSAGE("a splice of 100 bytes with read-ahead 128 KiB left " << lost << " bytes counted");
  CHECK(lost > kPage);             // the kernel read ahead
  CHECK(lost <= 2 * 131072 + kPage);
  check_balance(a);
  const std::string rest = slurp(path);
  CHECK(rest == all.substr(all.size() - rest.size()));
  CHECK(produced_minus(a, rest.size()) == lost);  // nothing else went missing
  CHECK(relay_close(c) == 0);
}

TEST_CASE("python os.splice of 100 bytes, then close: the rest of the page is counted") {
  Mount m;
  rchan* c = open_global(m.dir, "sp", 1 << 16, 8);
  const std::string all = write_records(c, 0, 1000);  // 11,000 bytes
  const std::string path = m.path("sp0");
  const std::string out = splice_and_close(path, 100);
  REQUIRE(out.size() == 100);
  CHECK(out == all.substr(0, 100));
  const Attrs a = getfattr(path);
  CHECK(num(a, "lost_readahead_bytes") == kPage);  // the page the kernel asked for
  CHECK(num(a, "bytes_consumed") == 0);
  check_balance(a);
  const std::string rest = slurp(path);
  CHECK(rest == all.substr(kPage));
  check_balance(getfattr(path));
  CHECK(relay_close(c) == 0);
}

TEST_CASE("python os.sendfile of 100 bytes from a small buffer: all it took is counted") {
  Mount m;
  rchan* c = open_global(m.dir, "sf", 1 << 16, 8);
  const std::string all = write_records(c, 0, 300);  // 3,300 bytes: less than a page
  const std::string path = m.path("sf0");
  const std::string out = python(
      "import os,sys\n"
      "fd=os.open(sys.argv[1],os.O_RDONLY); r,w=os.pipe()\n"
      "n=os.sendfile(w,fd,None,100); sys.stdout.write(os.read(r,n).decode())\n"
      "os.close(fd)\n",
      path);
  REQUIRE(out.size() == 100);
  CHECK(out == all.substr(0, 100));
  const Attrs a = getfattr(path);
  CHECK(num(a, "lost_readahead_bytes") == all.size());
  CHECK(num(a, "bytes_unread") == 0);
  check_balance(a);
  CHECK(slurp(path).empty());
  CHECK(relay_close(c) == 0);
}

TEST_CASE("splicing to the end and closing without a read(2): the last page is counted anyway") {
  Mount m;
  rchan* c = open_global(m.dir, "eof", 1 << 16, 8);
  const std::string all = write_records(c, 0, 9000);  // 99,000 bytes: 24 pages and a part
  REQUIRE(relay_close(c) == 0);
  const int keep = ::open(m.path("eof0").c_str(), O_RDONLY);  // the counters, after the file goes
  REQUIRE(keep >= 0);
  const std::string out = python(
      "import os,sys\n"
      "fd=os.open(sys.argv[1],os.O_RDONLY); r,w=os.pipe(); b=b\"\"\n"
      "while True:\n"
      "  n=os.splice(fd,w,4096)\n"
      "  if n==0: break\n"
      "  b+=os.read(r,n)\n"
      "os.close(fd); sys.stdout.write(b.decode())\n",
      m.path("eof0"));
  CHECK(out == all);  // it had everything
  // What the kernel never said it delivered: the page the end of file was in (relay(7)).
  const unsigned long long counted = fnum(keep, "lost_readahead_bytes");
  MESSAGE("spliced to the end: " << counted << " bytes of the last page counted");
  CHECK(counted > 0);
  CHECK(counted <= kPage);
  ::close(keep);
}

TEST_CASE("os.splice then os.read on the same file: the page stays for the read, nothing lost") {
  Mount m;
  rchan* c = open_global(m.dir, "mix", 1 << 16, 8);
  const std::string all = write_records(c, 0, 1000);
  const std::string path = m.path("mix0");
  const std::string out = python(
      "import os,sys\n"
      "fd=os.open(sys.argv[1],os.O_RDONLY); r,w=os.pipe()\n"
      "n=os.splice(fd,w,100); b=os.read(r,n)\n"
      "while True:\n"
      "  x=os.read(fd,777)\n"
      "  if not x: break\n"
      "  b+=x\n"
      "os.close(fd); sys.stdout.write(b.decode())\n",
      path);
  CHECK(out == all);
  const Attrs a = getfattr(path);
  CHECK(num(a, "lost_readahead_bytes") == 0);
  CHECK(num(a, "bytes_consumed") == all.size());
  check_balance(a);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("pv and cat reading a live channel to its end lose nothing") {
  if (!have("pv")) {
    MESSAGE("skipped: pv is not installed");
    return;
  }
  Mount m({"-o", "blocking"});
  relay_options opts{RELAY_BLOCKING, -1, nullptr};
  rchan* c = open_global(m.dir, "live", 1 << 16, 8, {}, &opts);
  // The file leaves the directory once drained and closed: its counters are read through a
  // descriptor kept open.
  const int keep = ::open(m.path("live0").c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(keep >= 0);
  std::string want;
  std::thread writer([&] {
    for (int i = 0; i < 20; ++i) {
      want += write_records(c, i * 1000, i * 1000 + 1000);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE(relay_close(c) == 0);
  });
  const std::string got = capture("pv -q " + m.path("live0") + " 2>/dev/null </dev/null");
  writer.join();
  CHECK(got == want);
  CHECK(fnum(keep, "lost_readahead_bytes") == 0);
  ::close(keep);
}

TEST_CASE("splice of the merged view: what the page cache took counts against each buffer") {
  Mount m;
  rchan* c = relay_open("mv", m.dir.c_str(), 4096, 4, nullptr, nullptr);  // one buffer per CPU
  REQUIRE(c != nullptr);
  std::string all;
  for (unsigned cpu = 0; cpu < ncpus(); ++cpu) {
    std::thread([&] {
      REQUIRE(pin_to(cpu));
      all += write_records(c, static_cast<int>(cpu) * 100, static_cast<int>(cpu) * 100 + 100);
    }).join();
  }
  const std::string out = python(
      "import os,sys\n"
      "fd=os.open(sys.argv[1],os.O_RDONLY); r,w=os.pipe()\n"
      "n=os.splice(fd,w,10); os.read(r,n); os.close(fd)\n",
      m.path("mv"));
  const Attrs merged = getfattr(m.path("mv"));
  CHECK(num(merged, "lost_readahead_bytes") == std::min<unsigned long long>(all.size(), kPage));
  unsigned long long sum = 0;
  for (unsigned cpu = 0; cpu < ncpus(); ++cpu) {
    const Attrs a = getfattr(m.path("mv" + std::to_string(cpu)));
    sum += num(a, "lost_readahead_bytes");
    check_balance(a);
  }
  CHECK(sum == num(merged, "lost_readahead_bytes"));
  check_balance(merged);
  CHECK(relay_close(c) == 0);
}
