// The relay spec's promises to readers blocked in read or poll, through a real mount and the
// producer library: woken by a commit (not by a reservation), by relay_flush, drained and ended by
// relay_close, and across relay_reset. (The data itself, record by record: spec_test.cc.)
// Every test mounts its own tree and takes it down, even when it fails. No assertion depends on
// timing: sleeps only give a thread the chance to block, and every wait has a deadline after
// which the test fails (and kills the daemon, so no reader stays stuck).
#include <doctest/doctest.h>
#include <poll.h>
#include <relayfs/relay.h>
#include <sys/syscall.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

// Everything readable now, without waiting (a blocking mount's read would wait at the end).
std::string read_available(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::fcntl(fd, F_SETFL, flags);
  return out;
}

// ---- Threads that block --------------------------------------------------------------------------

pid_t this_tid() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

// True once thread tid of this process sleeps (state S) in one of the system calls nrs; false
// after 10 s.
bool wait_blocked_in(pid_t tid, const std::vector<long>& nrs) {
  const std::string task = "/proc/self/task/" + std::to_string(tid);
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < until) {
    const char state = proc_state(task);
    std::ifstream sc(task + "/syscall");
    long nr = -1;
    sc >> nr;
    if (state == 'S' && std::find(nrs.begin(), nrs.end(), nr) != nrs.end()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

const std::vector<long> kReadCalls = {SYS_read};
#ifdef SYS_poll
const std::vector<long> kPollCalls = {SYS_poll, SYS_ppoll};
#else
const std::vector<long> kPollCalls = {SYS_ppoll};
#endif

// Joins a thread that should finish now (done becomes true). If it does not within the deadline,
// a reader is stuck: kill the daemon, which fails its system call, so the join cannot hang.
bool join_or_kill(std::thread& t, const std::atomic<bool>& done, Mount& m) {
  const bool ok = wait_for(done);
  if (!ok) m.stop_daemon(SIGKILL);
  t.join();
  return ok;
}

// If the test body throws (a failed REQUIRE) while a thread of the test may be blocked in a
// read or poll of the mount, kill the daemon so that call fails, and join the thread: a joinable
// std::thread destroyed during unwinding would abort the program and leave the mount behind.
class Reaper {
 public:
  Reaper(Mount& m, std::thread& t) : m_(m), t_(t) {}
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;
  ~Reaper() {
    if (!t_.joinable()) return;
    m_.stop_daemon(SIGKILL);
    t_.join();
  }

 private:
  Mount& m_;
  std::thread& t_;
};

}  // namespace

// ---- flush, reset and close with readers attached -----------------------------------------------

TEST_CASE("blocked readers: woken by a commit, drained and ended by relay_close, across a reset") {
  Mount m({"-o", "blocking"});
  rchan* c = open_global(m.dir, "w", 64, 16);  // 5 records of 11 bytes per sub-buffer
  const std::string file = m.path("w0");

  SUBCASE("a reservation does not wake a blocked reader; its commit does, with the whole record") {
    const int fd = ::open(file.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    std::atomic<pid_t> tid{0};
    std::atomic<bool> done{false};
    std::string got;
    ssize_t n = -2;
    std::thread reader([&] {
      tid = this_tid();
      char buf[4096];
      n = ::read(fd, buf, sizeof buf);
      if (n > 0) got.assign(buf, static_cast<size_t>(n));
      done = true;
    });
    Reaper reap_reader(m, reader);
    while (tid.load() == 0) std::this_thread::yield();
    CHECK(wait_blocked_in(tid, kReadCalls));
    void* slot = relay_reserve(c, 11);
    REQUIRE(slot != nullptr);
    std::memcpy(slot, record(7).data(), 11);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK_FALSE(done.load());  // filled but not committed: not data yet
    relay_commit(c, slot, 11);
    CHECK(join_or_kill(reader, done, m));
    CHECK(n == 11);
    CHECK(got == record(7));
    ::close(fd);
  }

  SUBCASE("two readers blocked on one file: each record wakes one of them, whole") {
    const int fd[2] = {::open(file.c_str(), O_RDONLY), ::open(file.c_str(), O_RDONLY)};
    REQUIRE(fd[0] >= 0);
    REQUIRE(fd[1] >= 0);
    std::atomic<pid_t> tid[2] = {0, 0};
    std::atomic<bool> done[2] = {false, false};
    std::atomic<bool> any{false};
    std::string got[2];
    ssize_t n[2] = {-2, -2};
    std::vector<std::thread> readers;
    for (int i = 0; i < 2; ++i)
      readers.emplace_back([&, i] {
        tid[i] = this_tid();
        char buf[4096];
        n[i] = ::read(fd[i], buf, sizeof buf);
        if (n[i] > 0) got[i].assign(buf, static_cast<size_t>(n[i]));
        done[i] = true;
        any = true;
      });
    Reaper reap0(m, readers[0]), reap1(m, readers[1]);
    for (int i = 0; i < 2; ++i) {
      while (tid[i].load() == 0) std::this_thread::yield();
      CHECK(wait_blocked_in(tid[i], kReadCalls));
    }
    write_records(c, 1, 2);
    REQUIRE(wait_for(any));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK(done[0].load() != done[1].load());  // one woke, the other still waits
    const int first = done[0] ? 0 : 1, second = 1 - first;
    CHECK(n[first] == 11);
    CHECK(got[first] == record(1));
    CHECK(wait_blocked_in(tid[second], kReadCalls));
    write_records(c, 2, 3);
    CHECK(join_or_kill(readers[second], done[second], m));
    readers[first].join();
    CHECK(n[second] == 11);
    CHECK(got[second] == record(2));
    ::close(fd[0]);
    ::close(fd[1]);
  }

  SUBCASE("a blocked reader drains what is left and gets end of file at relay_close; the file "
          "goes once it closes") {
    const int fd = ::open(file.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    std::atomic<pid_t> tid{0};
    std::atomic<size_t> have{0};
    std::atomic<bool> done{false};
    std::string got;
    std::mutex mu;
    ssize_t last = -2;
    std::thread reader([&] {
      tid = this_tid();
      char buf[7];  // small reads: records end inside reads
      for (;;) {
        last = ::read(fd, buf, sizeof buf);
        if (last <= 0) break;
        std::lock_guard lk(mu);
        got.append(buf, static_cast<size_t>(last));
        have = got.size();
      }
      done = true;
    });
    Reaper reap_reader(m, reader);
    std::string want = write_records(c, 0, 20);
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (have.load() < want.size() && Clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    CHECK(have.load() == want.size());
    CHECK(wait_blocked_in(tid, kReadCalls));  // drained: it waits
    want += write_records(c, 20, 40);           // some of this is still unread at the close
    REQUIRE(relay_close(c) == 0);
    c = nullptr;
    CHECK(join_or_kill(reader, done, m));
    CHECK(last == 0);
    CHECK(got == want);
    MESSAGE("after end of file, with the reader's file still open, the file is "
            << std::string(exists(file) ? "still listed" : "already gone"));
    char b;
    CHECK(::read(fd, &b, 1) == 0);  // and stays at end of file
    ::close(fd);
    CHECK_FALSE(exists(file));
  }

  SUBCASE("relay_reset with a reader part way: only data written after it, and st_size never "
          "shrinks") {
    const std::string old = write_records(c, 0, 50);  // 10 sub-buffers
    const int fd = ::open(file.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    char buf[4096];
    REQUIRE(::read(fd, buf, 100) == 100);  // ends inside a record, in the second sub-buffer
    CHECK(std::string(buf, 100) == old.substr(0, 100));
    struct stat before, after;
    REQUIRE(::fstat(fd, &before) == 0);
    CHECK(before.st_size == 550);
    REQUIRE(relay_reset(c) == 0);
    REQUIRE(::fstat(fd, &after) == 0);
    CHECK(after.st_size >= before.st_size);
    // The 450 unread bytes are gone: a non-blocking read finds nothing.
    REQUIRE(::fcntl(fd, F_SETFL, O_NONBLOCK) == 0);
    errno = 0;
    CHECK(::read(fd, buf, sizeof buf) == -1);
    CHECK(errno == EAGAIN);
    REQUIRE(::fcntl(fd, F_SETFL, 0) == 0);

    // A reader blocked across another reset gets the first record written after it.
    std::atomic<pid_t> tid{0};
    std::atomic<bool> done{false};
    std::string got;
    std::thread reader([&] {
      tid = this_tid();
      char b[4096];
      const ssize_t n = ::read(fd, b, sizeof b);
      if (n > 0) got.assign(b, static_cast<size_t>(n));
      done = true;
    });
    Reaper reap_reader(m, reader);
    while (tid.load() == 0) std::this_thread::yield();
    CHECK(wait_blocked_in(tid, kReadCalls));
    REQUIRE(relay_reset(c) == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CHECK_FALSE(done.load());  // a reset is not data
    write_records(c, 50, 51);
    CHECK(join_or_kill(reader, done, m));
    CHECK(got == record(50));

    const std::string more = write_records(c, 51, 70);  // across several sub-buffers
    CHECK(read_available(fd) == more);
    struct stat end;
    REQUIRE(::stat(file.c_str(), &end) == 0);
    CHECK(end.st_size == after.st_size + 20 * 11);
    CHECK(end.st_size >= before.st_size + 20 * 11);
    ::close(fd);
  }
  if (c) CHECK(relay_close(c) == 0);
}

TEST_CASE("poll with a reader attached: relay_flush, a reservation held across a flush, a "
          "blocked poll") {
  Mount m;
  rchan* c = open_global(m.dir, "p", 64, 8);
  const int fd = ::open(m.path("p0").c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(fd >= 0);
  char buf[4096];
  auto readable = [&] {
    pollfd p{fd, POLLIN | POLLRDNORM, 0};
    return ::poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLRDNORM)) == (POLLIN | POLLRDNORM);
  };
  auto read_now = [&] {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  };

  SUBCASE("data before and after a flush: POLLIN, exactly that data without padding, then quiet") {
    const std::string want = write_records(c, 0, 3);
    REQUIRE(relay_flush(c) == 0);
    const std::string more = write_records(c, 3, 5);
    CHECK(readable());
    CHECK(read_now() == want + more);
    CHECK_FALSE(readable());
    errno = 0;
    CHECK(::read(fd, buf, sizeof buf) == -1);
    CHECK(errno == EAGAIN);
  }

  SUBCASE("a record reserved across a flush holds back what follows until it is committed") {
    const std::string first = write_records(c, 0, 2);
    void* slot = relay_reserve(c, 11);
    REQUIRE(slot != nullptr);
    std::memcpy(slot, record(2).data(), 11);
    REQUIRE(relay_flush(c) == 0);
    const std::string after = write_records(c, 3, 5);  // in the next sub-buffer
    CHECK(readable());
    CHECK(read_now() == first);
    CHECK_FALSE(readable());  // record 2 is in flight: nothing behind it may be returned
    CHECK(read_now().empty());

    std::atomic<pid_t> tid{0};
    std::atomic<bool> done{false};
    short revents = 0;
    std::thread poller([&] {
      tid = this_tid();
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20000) == 1) revents = p.revents;
      done = true;
    });
    Reaper reap_poller(m, poller);
    while (tid.load() == 0) std::this_thread::yield();
    CHECK(wait_blocked_in(tid, kPollCalls));
    relay_commit(c, slot, 11);
    CHECK(join_or_kill(poller, done, m));
    CHECK((revents & POLLIN) != 0);
    CHECK(read_now() == record(2) + after);
  }

  SUBCASE("a poll blocked on an empty file: an empty flush reports nothing, the next record "
          "wakes it") {
    std::atomic<pid_t> tid{0};
    std::atomic<bool> done{false};
    std::string got;
    int spurious = 0, timeouts = 0;
    std::thread poller([&] {
      tid = this_tid();
      char b[4096];
      for (int i = 0; i < 100 && got.empty() && timeouts == 0; ++i) {
        pollfd p{fd, POLLIN, 0};
        const int r = ::poll(&p, 1, 20000);
        if (r == 0) ++timeouts;
        if (r != 1 || !(p.revents & POLLIN)) continue;
        const ssize_t n = ::read(fd, b, sizeof b);
        if (n > 0)
          got.assign(b, static_cast<size_t>(n));
        else
          ++spurious;  // POLLIN, and yet nothing to read
      }
      done = true;
    });
    Reaper reap_poller(m, poller);
    while (tid.load() == 0) std::this_thread::yield();
    CHECK(wait_blocked_in(tid, kPollCalls));
    REQUIRE(relay_flush(c) == 0);  // nothing pending: an empty sub-buffer is closed
    CHECK_FALSE(readable());
    CHECK(read_now().empty());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(relay_flush(c) == 0);
    write_records(c, 9, 10);
    CHECK(join_or_kill(poller, done, m));
    CHECK(got == record(9));
    CHECK(spurious == 0);
    CHECK(timeouts == 0);
  }
  ::close(fd);
  CHECK(relay_close(c) == 0);
}
