// The merged view file BASE of a per-CPU channel through a real mount: every CPU's records once,
// whole and in order, through any size of read; one read position shared with the per-CPU files;
// cat; blocking reads; and its going with the other files. Every test mounts its own tree and
// takes it down, even when it fails. No assertion depends on how fast anything runs: sleeps only
// give a thread the chance to block, and every wait has a deadline after which the test fails.
#include <doctest/doctest.h>
#include <relayfs/relay.h>
#include <sched.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

using namespace std::chrono_literals;

// ---- Tagged records, written on a given CPU ----------------------------------------------------

// A writer's tagged record: "c<writer> <seq>\n".
std::string tagged(unsigned writer, int seq) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "c%u %d\n", writer, seq);
  return buf;
}

// Writes tagged(writer, from..to-1) from a thread pinned to cpu; returns the bytes written.
std::string write_on(rchan* c, unsigned cpu, unsigned writer, int from, int to) {
  std::string out;
  bool pinned = false;
  int failed = 0;
  std::thread t([&] {
    pinned = pin_to(cpu);
    if (!pinned) return;
    for (int s = from; s < to; ++s) {
      const std::string r = tagged(writer, s);
      if (relay_write(c, r.data(), r.size()) == 0)
        out += r;
      else
        ++failed;
    }
  });
  t.join();
  REQUIRE_MESSAGE(pinned, "cannot run a thread on CPU " << cpu);
  CHECK(failed == 0);
  return out;
}

// Checks a stream of tagged records: every line whole ("c<w> <seq>"), and each writer's
// sequence numbers in order from first[w]. Returns how many records of each writer it holds.
std::vector<int> check_tagged(const std::string& s, unsigned writers, std::vector<int> first = {}) {
  std::vector<int> next = first.empty() ? std::vector<int>(writers, 0) : first;
  int bad = 0;
  size_t at = 0;
  while (at < s.size()) {
    const size_t nl = s.find('\n', at);
    if (nl == std::string::npos) {
      ++bad;
      MESSAGE("a record cut short at the end: \"" << s.substr(at) << "\"");
      break;
    }
    const std::string line = s.substr(at, nl + 1 - at);
    unsigned w = 0;
    int seq = -1;
    if (std::sscanf(line.c_str(), "c%u %d", &w, &seq) != 2 || w >= writers ||
        tagged(w, seq) != line) {
      if (++bad <= 5) MESSAGE("not a whole record: \"" << line.substr(0, line.size() - 1) << "\"");
    } else if (seq != next[w]) {
      if (++bad <= 5)
        MESSAGE("writer " << w << ": record " << seq << " where " << next[w] << " was due");
      next[w] = seq + 1;
    } else {
      ++next[w];
    }
    at = nl + 1;
  }
  CHECK(bad == 0);
  for (unsigned w = 0; w < writers && !first.empty(); ++w) next[w] -= first[w];
  return next;
}

}  // namespace

TEST_CASE(
    "the merged view gives every CPU's records once, whole and in order, read 7 bytes at a time") {
  Mount m;
  const unsigned n = ncpus();
  const relay_options o{RELAY_BLOCKING, 30000, nullptr};  // small buffers, and no loss: writers wait
  rchan* c = relay_open_opts("mv", m.dir.c_str(), 512, 4, nullptr, nullptr, &o);
  REQUIRE_MESSAGE(c != nullptr, std::strerror(errno));
  REQUIRE(c->n_buffers == n);
  for (unsigned i = 0; i < n; ++i) CHECK(exists(m.path("mv" + std::to_string(i))));
  CHECK(exists(m.path("mv")));
  CHECK_FALSE(exists(m.path("mv" + std::to_string(n))));

  constexpr int kPer = 3000;
  size_t expected = 0;
  for (unsigned w = 0; w < n; ++w)
    for (int s = 0; s < kPer; ++s) expected += tagged(w, s).size();
  std::atomic<int> unpinned{0}, moved{0}, failed{0}, done{0};
  std::vector<std::thread> writers;
  for (unsigned w = 0; w < n; ++w) {
    writers.emplace_back([&, w] {
      if (!pin_to(w)) {
        ++unpinned;
        ++done;
        return;
      }
      for (int s = 0; s < kPer; ++s) {
        if (::sched_getcpu() != static_cast<int>(w)) ++moved;
        const std::string r = tagged(w, s);
        if (relay_write(c, r.data(), r.size()) != 0) ++failed;
      }
      ++done;
    });
  }
  const int fd = ::open(m.path("mv").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  std::string got;
  char buf[7];
  int idle_after_done = 0;
  const auto until = Clock::now() + 120s;
  while (got.size() < expected && Clock::now() < until && idle_after_done < 1000) {
    const ssize_t k = ::read(fd, buf, sizeof buf);
    if (k < 0) {  // no REQUIRE while the writers run
      FAIL_CHECK("read: " << std::strerror(errno));
      break;
    }
    if (k == 0) {
      if (done == static_cast<int>(n)) ++idle_after_done;
      std::this_thread::sleep_for(500us);
      continue;
    }
    got.append(buf, static_cast<size_t>(k));
  }
  for (auto& t : writers) t.join();
  ::close(fd);
  REQUIRE(unpinned == 0);
  CHECK(moved == 0);
  CHECK(failed == 0);
  CHECK(got.size() == expected);
  const std::vector<int> counts = check_tagged(got, n);
  for (unsigned w = 0; w < n; ++w) {
    CAPTURE(w);
    CHECK(counts[w] == kPer);
  }

  // Its size is the sum of the per-CPU files' sizes: every byte written, no padding.
  off_t sum = 0;
  for (unsigned i = 0; i < n; ++i) {
    const off_t s = file_size(m.path("mv" + std::to_string(i)));
    CHECK(s > 0);
    sum += s;
  }
  CHECK(file_size(m.path("mv")) == sum);
  CHECK(sum == static_cast<off_t>(expected));
  const Attrs a = getfattr(m.path("mv"));
  CHECK(num(a, "bytes_produced") == expected);
  CHECK(num(a, "bytes_consumed") == expected);
  CHECK(num(a, "lost_full") == 0);
  CHECK(relay_close(c) == 0);
  // Everything was read: the files go, the merged view with them.
  CHECK(wait_for([&] { return !exists(m.path("mv")) && !exists(m.path("mv0")); }));
}

TEST_CASE("the merged view and the per-CPU files share one read position") {
  Mount m;
  const unsigned n = ncpus();
  rchan* c = relay_open("sp", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  const unsigned last = n - 1;
  const std::string last_file = m.path("sp" + std::to_string(last));

  // Read part through the merged view: the rest, and only the rest, through the CPU's file.
  const std::string a = write_on(c, last, 0, 0, 300);
  int fd = ::open(m.path("sp").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  const std::string head = read_exactly(fd, 700, 700);
  ::close(fd);
  CHECK(head == a.substr(0, 700));
  CHECK(slurp(last_file) == a.substr(700));
  CHECK(slurp(m.path("sp")).empty());

  // And the other way round, stopping in the middle of a record.
  const std::string b = write_on(c, last, 0, 300, 600);
  fd = ::open(last_file.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  const std::string part = read_exactly(fd, 1001, 1001);
  ::close(fd);
  CHECK(part == b.substr(0, 1001));
  CHECK(slurp(m.path("sp"), 7) == b.substr(1001));
  CHECK(slurp(last_file).empty());

  // A merged read that stops mid-record finishes that record before any other CPU's bytes.
  if (n > 1) {
    const std::string x = write_on(c, last, 0, 600, 700);
    const std::string y = write_on(c, 0, 1, 0, 100);
    const std::string got = slurp(m.path("sp"), 5);
    CHECK(got.size() == x.size() + y.size());
    const std::vector<int> counts = check_tagged(got, 2, {600, 0});
    CHECK(counts[0] == 100);
    CHECK(counts[1] == 100);
  }
  CHECK(relay_close(c) == 0);
}

TEST_CASE("cat reads the merged view: every record of every CPU") {
  Mount m;
  const unsigned n = ncpus();
  rchan* c = relay_open("ct", m.dir.c_str(), 4096, 8, nullptr, nullptr);
  REQUIRE(c != nullptr);
  size_t total = 0;
  for (unsigned w = 0; w < n; ++w) total += write_on(c, w, w, 0, 1000).size();
  const std::string got = capture("cat '" + m.path("ct") + "'");
  CHECK(got.size() == total);
  const std::vector<int> counts = check_tagged(got, n);
  for (unsigned w = 0; w < n; ++w) CHECK(counts[w] == 1000);
  CHECK(capture("cat '" + m.path("ct") + "'").empty());
  CHECK(relay_close(c) == 0);
}

TEST_CASE(
    "with -o blocking, a read of the merged view waits for any CPU's record and ends at close") {
  Mount m({"-o", "blocking"});
  const unsigned n = ncpus();
  rchan* c = relay_open("bw", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  // Shared with the reader thread, which is left behind (detached) if it never returns.
  struct State {
    std::atomic<int> stage{0};  // 1: first read returned, 2: second read returned
    std::string first;
    ssize_t second = -2;
  };
  auto st = std::make_shared<State>();
  std::thread reader([st, path = m.path("bw")] {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    char buf[100];
    const ssize_t k = ::read(fd, buf, sizeof buf);
    if (k > 0) st->first.assign(buf, static_cast<size_t>(k));
    st->stage = 1;
    st->second = ::read(fd, buf, sizeof buf);
    st->stage = 2;
    ::close(fd);
  });
  std::this_thread::sleep_for(100ms);  // let it block
  CHECK(st->stage == 0);
  const std::string rec = write_on(c, n - 1, 0, 0, 1);
  CHECK(wait_for([&] { return st->stage >= 1; }));
  CHECK(st->first == rec);
  std::this_thread::sleep_for(100ms);
  CHECK(st->stage == 1);  // nothing more: it waits again
  CHECK(relay_close(c) == 0);
  const bool ended = wait_for([&] { return st->stage == 2; });
  CHECK(ended);
  if (ended) {
    reader.join();
    CHECK(st->second == 0);
  } else {
    reader.detach();  // the mount's teardown ends its read
  }
}

TEST_CASE("the merged view goes with the other files once the channel is closed and drained") {
  Mount m;
  const unsigned n = ncpus();
  auto all_gone = [&](const std::string& base) {
    if (exists(m.path(base))) return false;
    for (unsigned i = 0; i < n; ++i)
      if (exists(m.path(base + std::to_string(i)))) return false;
    return true;
  };
  auto all_there = [&](const std::string& base) {
    if (!exists(m.path(base))) return false;
    for (unsigned i = 0; i < n; ++i)
      if (!exists(m.path(base + std::to_string(i)))) return false;
    return true;
  };
  SUBCASE("nothing unread: at once") {
    rchan* c = relay_open("g1", m.dir.c_str(), 4096, 4, nullptr, nullptr);
    REQUIRE(c != nullptr);
    CHECK(all_there("g1"));
    CHECK(relay_close(c) == 0);
    CHECK(wait_for([&] { return all_gone("g1"); }));
  }
  SUBCASE("drained through the merged view") {
    rchan* c = relay_open("g2", m.dir.c_str(), 4096, 4, nullptr, nullptr);
    REQUIRE(c != nullptr);
    size_t total = 0;
    for (unsigned w = 0; w < n; ++w) total += write_on(c, w, w, 0, 50).size();
    CHECK(relay_close(c) == 0);
    CHECK(all_there("g2"));
    const std::string got = slurp(m.path("g2"));
    CHECK(got.size() == total);
    check_tagged(got, n);
    CHECK(wait_for([&] { return all_gone("g2"); }));
  }
  SUBCASE("drained through the per-CPU files") {
    rchan* c = relay_open("g3", m.dir.c_str(), 4096, 4, nullptr, nullptr);
    REQUIRE(c != nullptr);
    std::vector<std::string> wrote;
    for (unsigned w = 0; w < n; ++w) wrote.push_back(write_on(c, w, w, 0, 50));
    CHECK(relay_close(c) == 0);
    CHECK(all_there("g3"));
    for (unsigned i = 0; i < n; ++i) CHECK(slurp(m.path("g3" + std::to_string(i))) == wrote[i]);
    CHECK(wait_for([&] { return all_gone("g3"); }));
  }
}
