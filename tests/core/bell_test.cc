// src/core/bell.h: a reader's bell as the producer keeps it (Bells) and as the reader arms it
// (arm_bell): what add() accepts from another process, one ring per arming, no ring unarmed,
// and removal while writers ring.
#include "core/bell.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>

namespace core = relayfs::core;
using core::UniqueFd;

namespace {

struct Bell {
  Bell() {
    REQUIRE(core::make_bell_page(&page) == 0);
    REQUIRE(core::Mapping::map(page.get(), core::kBellPageSize, PROT_READ | PROT_WRITE, &map) == 0);
    REQUIRE(core::make_bell_sockets(&reader, &ring_end) == 0);
  }
  core::BellPage& p() { return *reinterpret_cast<core::BellPage*>(map.bytes()); }
  // Arms the bell as a reader of a buffer whose producer commits with a locked add does.
  void arm() { REQUIRE(core::arm_bell(p(), hdr) == 0); }
  // The descriptors for Bells::add, as another process would pass them.
  UniqueFd page_copy() const { return UniqueFd(::dup(page.get())); }
  UniqueFd ring_copy() const { return UniqueFd(::dup(ring_end.get())); }
  // How many rings the reader finds on its socket, drained.
  uint64_t rings() {
    uint64_t n = 0;
    char buf[256];
    ssize_t got;
    while ((got = ::recv(reader.get(), buf, sizeof buf, MSG_DONTWAIT)) > 0)
      n += static_cast<uint64_t>(got);
    return n;
  }
  UniqueFd page, reader, ring_end;
  core::Mapping map;
  core::ShmHeader hdr{};  // fenced_commits 0
};

// Runs f in a child process with a 10 s alarm and the default SIGPIPE action: true if it
// returned, false if it blocked, or a signal (SIGPIPE) killed it.
template <typename F>
bool returns_in_child(F f) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::signal(SIGPIPE, SIG_DFL);
    ::alarm(10);
    f();
    ::_exit(0);
  }
  int st = 0;
  return pid > 0 && ::waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}
}  // namespace

TEST_CASE("a bell rings once per arming, and not at all unarmed") {
  core::Bells bells;
  Bell b;
  REQUIRE(bells.add(7, b.page_copy(), b.ring_copy()) == 0);
  CHECK(b.rings() == 1);  // add rings once: the reader may have armed before
  bells.ring();
  CHECK(b.rings() == 0);  // not armed
  b.arm();
  bells.ring();
  bells.ring();
  CHECK(b.rings() == 1);  // one ring for one arming, however many writers find it
  CHECK(b.p().armed.load() == 0);
  bells.remove(7);
  b.arm();
  bells.ring();
  CHECK(b.rings() == 0);  // removed: never rung again
  CHECK(bells.size() == 0);
}

TEST_CASE("Bells::add checks what another process passed: a Unix stream socket and a sealed page") {
  core::Bells bells;
  Bell b;
  CHECK(bells.add(0, b.page_copy(), b.ring_copy()) == -EINVAL);  // 0 is nobody's
  CHECK(bells.add(1, b.page_copy(), b.page_copy()) == -EINVAL);  // not a socket
  CHECK(bells.add(1, b.ring_copy(), b.ring_copy()) == -EINVAL);  // not a page
  UniqueFd plain(::memfd_create("x", MFD_CLOEXEC));             // no seals: could shrink
  REQUIRE(::ftruncate(plain.get(), core::kBellPageSize) == 0);
  CHECK(bells.add(1, std::move(plain), b.ring_copy()) == -EINVAL);
  UniqueFd big(::memfd_create("x", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(::ftruncate(big.get(), 2 * core::kBellPageSize) == 0);
  REQUIRE(::fcntl(big.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
  CHECK(bells.add(1, std::move(big), b.ring_copy()) == -EINVAL);  // not one page
  REQUIRE(bells.add(1, b.page_copy(), b.ring_copy()) == 0);
  CHECK(bells.add(1, b.page_copy(), b.ring_copy()) == -EEXIST);
  CHECK(bells.size() == 1);
  // The page cannot be shrunk under the producer by whoever else holds it.
  CHECK(::ftruncate(b.page.get(), 0) == -1);
}

TEST_CASE("a buffer keeps at most kMaxBells bells; clear() frees them all") {
  core::Bells bells;
  std::vector<Bell> bs(core::kMaxBells + 1);
  for (uint32_t i = 0; i < core::kMaxBells; ++i)
    REQUIRE(bells.add(i + 1, bs[i].page_copy(), bs[i].ring_copy()) == 0);
  CHECK(bells.add(99, bs.back().page_copy(), bs.back().ring_copy()) == -ENOSPC);
  for (auto& b : bs) {
    b.rings();
    b.arm();
  }
  bells.ring();
  for (uint32_t i = 0; i < core::kMaxBells; ++i) CHECK(bs[i].rings() == 1);
  CHECK(bs.back().rings() == 0);
  bells.clear();
  CHECK(bells.size() == 0);
  REQUIRE(bells.add(99, bs.back().page_copy(), bs.back().ring_copy()) == 0);
}

TEST_CASE("bells come and go while writer threads ring them: nothing freed under a writer") {
  core::Bells bells;
  Bell b;
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int i = 0; i < 3; ++i)
    writers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) bells.ring();
    });
  uint64_t rings = 0;
  for (uint32_t round = 1; round <= 2000; ++round) {
    REQUIRE(bells.add(round, b.page_copy(), b.ring_copy()) == 0);
    b.arm();
    bells.remove(round);
    rings += b.rings();  // drained each round: the socket holds only a few
  }
  stop = true;
  for (auto& t : writers) t.join();
  CHECK(bells.size() == 0);
  CHECK(rings >= 2000);  // at least add()'s own ring each round
}

// A holder of a bell may be hostile to the others (core/bell.h). With an eventfd, which every
// holder shares as one open file description, a reader could clear O_NONBLOCK and raise the
// counter to the top, and the producer's next ring (inside relay_write) and the daemon's
// (ReaderBell::fall_back) blocked for good.
TEST_CASE("a ring never blocks and raises no signal, whatever another holder does") {
  Bell b;
  SUBCASE("another holder made the ringing socket blocking, and the reader never drains") {
    UniqueFd other = b.ring_copy();
    REQUIRE(::fcntl(other.get(), F_SETFL, 0) == 0);  // shared with ring_end: one description
    REQUIRE((::fcntl(b.ring_end.get(), F_GETFL) & O_NONBLOCK) == 0);
    CHECK(returns_in_child([&] {
      for (int i = 0; i < 100000; ++i) core::ring_bell(b.ring_end.get());
    }));
    CHECK(b.rings() > 0);  // the first rings arrived; the rest found the reader awake
  }
  SUBCASE("the reader went away") {
    b.reader.reset();
    CHECK(returns_in_child([&] { core::ring_bell(b.ring_end.get()); }));
  }
  SUBCASE("the reader cannot ring the producer's socket, nor itself") {
    const char x = 1;
    CHECK(::send(b.reader.get(), &x, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0);
    CHECK(errno == EPIPE);
  }
}

TEST_CASE("drain_bell returns while a hostile producer keeps ringing as fast as it can") {
  // The producer holds a ringing end: it may raise its send buffer and send without a pause.
  Bell b;
  const int big = 4 << 20;
  (void)::setsockopt(b.ring_end.get(), SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  std::atomic<bool> drained{false}, gave_up{false};
  std::thread flood([&] {
    std::vector<char> chunk(64 << 10, 'r');
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!drained.load()) {
      if (std::chrono::steady_clock::now() > until) {
        gave_up = true;  // drain_bell kept receiving for 10 s
        return;
      }
      (void)::send(b.ring_end.get(), chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
  });
  // Rung already, before the reader looks (a peek: Bell::rings would drain as long as it floods).
  char one;
  while (::recv(b.reader.get(), &one, 1, MSG_PEEK | MSG_DONTWAIT) != 1) std::this_thread::yield();
  CHECK(core::drain_bell(b.reader.get()));
  drained = true;
  flood.join();
  CHECK_FALSE(gave_up.load());
}

TEST_CASE("drain_bell takes every ring, never blocks, and says when no one can ring any more") {
  Bell b;
  core::ring_bell(b.ring_end.get());
  core::ring_bell(b.ring_end.get());
  REQUIRE(::fcntl(b.reader.get(), F_SETFL, 0) == 0);  // blocking: drain must not care
  CHECK(returns_in_child([&] {
    if (!core::drain_bell(b.reader.get())) ::_exit(2);
  }));
  CHECK(core::drain_bell(b.reader.get()));
  CHECK(b.rings() == 0);
  b.ring_end.reset();
  CHECK_FALSE(core::drain_bell(b.reader.get()));
}
