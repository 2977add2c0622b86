// src/core/bell.h: a reader's bell as the producer keeps it (Bells) and as the reader arms it
// (arm_bell): what add() accepts from another process, one ring per arming, no ring unarmed,
// and removal while writers ring.
#include "core/bell.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <thread>
#include <vector>

namespace core = relayfs::core;
using core::UniqueFd;

namespace {

struct Bell {
  Bell() {
    REQUIRE(core::make_bell_page(&page) == 0);
    REQUIRE(core::Mapping::map(page.get(), core::kBellPageSize, PROT_READ | PROT_WRITE, &map) == 0);
    efd.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    REQUIRE(efd);
  }
  core::BellPage& p() { return *reinterpret_cast<core::BellPage*>(map.bytes()); }
  // Arms the bell as a reader of a buffer whose producer commits with a locked add does.
  void arm() { REQUIRE(core::arm_bell(p(), hdr) == 0); }
  // The descriptors for Bells::add, as another process would pass them.
  UniqueFd page_copy() const { return UniqueFd(::dup(page.get())); }
  UniqueFd efd_copy() const { return UniqueFd(::dup(efd.get())); }
  // What the reader finds on its eventfd, drained.
  uint64_t rings() {
    uint64_t v = 0;
    return ::read(efd.get(), &v, sizeof v) == sizeof v ? v : 0;
  }
  UniqueFd page, efd;
  core::Mapping map;
  core::ShmHeader hdr{};  // fenced_commits 0
};

}  // namespace

TEST_CASE("a bell rings once per arming, and not at all unarmed") {
  core::Bells bells;
  Bell b;
  REQUIRE(bells.add(7, b.page_copy(), b.efd_copy()) == 0);
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

TEST_CASE("Bells::add checks what another process passed: an eventfd and a sealed page") {
  core::Bells bells;
  Bell b;
  CHECK(bells.add(0, b.page_copy(), b.efd_copy()) == -EINVAL);  // 0 is nobody's
  CHECK(bells.add(1, b.page_copy(), b.page_copy()) == -EINVAL);  // not an eventfd
  CHECK(bells.add(1, b.efd_copy(), b.efd_copy()) == -EINVAL);    // not a page
  UniqueFd plain(::memfd_create("x", MFD_CLOEXEC));             // no seals: could shrink
  REQUIRE(::ftruncate(plain.get(), core::kBellPageSize) == 0);
  CHECK(bells.add(1, std::move(plain), b.efd_copy()) == -EINVAL);
  UniqueFd big(::memfd_create("x", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(::ftruncate(big.get(), 2 * core::kBellPageSize) == 0);
  REQUIRE(::fcntl(big.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
  CHECK(bells.add(1, std::move(big), b.efd_copy()) == -EINVAL);  // not one page
  REQUIRE(bells.add(1, b.page_copy(), b.efd_copy()) == 0);
  CHECK(bells.add(1, b.page_copy(), b.efd_copy()) == -EEXIST);
  CHECK(bells.size() == 1);
  // The page cannot be shrunk under the producer by whoever else holds it.
  CHECK(::ftruncate(b.page.get(), 0) == -1);
}

TEST_CASE("a buffer keeps at most kMaxBells bells; clear() frees them all") {
  core::Bells bells;
  std::vector<Bell> bs(core::kMaxBells + 1);
  for (uint32_t i = 0; i < core::kMaxBells; ++i)
    REQUIRE(bells.add(i + 1, bs[i].page_copy(), bs[i].efd_copy()) == 0);
  CHECK(bells.add(99, bs.back().page_copy(), bs.back().efd_copy()) == -ENOSPC);
  for (auto& b : bs) {
    b.rings();
    b.arm();
  }
  bells.ring();
  for (uint32_t i = 0; i < core::kMaxBells; ++i) CHECK(bs[i].rings() == 1);
  CHECK(bs.back().rings() == 0);
  bells.clear();
  CHECK(bells.size() == 0);
  REQUIRE(bells.add(99, bs.back().page_copy(), bs.back().efd_copy()) == 0);
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
  for (uint32_t round = 1; round <= 2000; ++round) {
    REQUIRE(bells.add(round, b.page_copy(), b.efd_copy()) == 0);
    b.arm();
    bells.remove(round);
  }
  stop = true;
  for (auto& t : writers) t.join();
  CHECK(bells.size() == 0);
  CHECK(b.rings() >= 2000);  // at least add()'s own ring each round
}
