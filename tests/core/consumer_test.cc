// The consumer side: the kernel's read() semantics, consumption, lapping, reset, attach.
#include "core/consumer.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "core/view.h"
#include "harness.h"

using namespace relayfs;
using test::Mode;
using test::Rig;
using test::SpecHook;

TEST_CASE("read removes padding and keeps header bytes") {
  SpecHook hook{Mode::kNoOverwrite, 4};
  Rig rig(16, 4, hook.hooks());
  REQUIRE(rig.write("abcdefgh") == 0);  // header(4) + 8: 4 bytes left
  REQUIRE(rig.write("ijklmn") == 0);    // does not fit: sub-buffer 0 closes with padding 4
  REQUIRE(rig.prod->flush() == 0);      // sub-buffer 1 closes; sub-buffer 2 begins with its header
  const std::string got = rig.drain();
  REQUIRE(got.size() == 4 + 8 + 4 + 6 + 4);
  uint32_t pad0;
  std::memcpy(&pad0, got.data(), 4);
  CHECK(pad0 == 4);  // the spec's callback stored sub-buffer 0's padding in its header
  CHECK(got.substr(4, 8) == "abcdefgh");
  CHECK(got.substr(16, 6) == "ijklmn");
}

TEST_CASE("reads of any size return the same stream") {
  for (size_t chunk : {1, 2, 3, 7, 16, 31, 1000}) {
    CAPTURE(chunk);
    Rig rig(32, 8);
    std::string want;
    for (int i = 0; i < 40; ++i) {
      const std::string rec = "rec" + std::to_string(i) + ";";
      if (rig.write(rec) == 0) want += rec;
    }
    rig.prod->flush();
    CHECK(rig.drain(chunk) == want);
  }
}

TEST_CASE("a reserved record is invisible until committed; what precedes it is readable") {
  Rig rig(64, 2);
  REQUIRE(rig.write("before") == 0);
  core::Reservation r;
  REQUIRE(rig.prod->reserve(5, &r) == 0);
  std::memcpy(r.ptr, "HALF", 4);  // half written
  CHECK(rig.drain() == "before");
  REQUIRE(rig.write("after") == 0);
  CHECK(rig.drain().empty());  // "after" waits behind the record in flight
  r.ptr[4] = '!';
  rig.prod->commit(r);
  CHECK(rig.drain() == "HALF!after");
}

TEST_CASE("data_available and drained follow the buffer") {
  Rig rig(32, 2);
  CHECK_FALSE(rig.cons->data_available());
  rig.write("x");
  CHECK(rig.cons->data_available());
  rig.drain();
  CHECK_FALSE(rig.cons->data_available());
  CHECK_FALSE(rig.cons->drained());
  rig.cons->finalize();
  CHECK(rig.cons->drained());
}

TEST_CASE("subbufs_consumed releases sub-buffers and is clamped to those produced") {
  Rig rig(8, 2);
  REQUIRE(rig.write("aaaaaaaa") == 0);
  REQUIRE(rig.write("bbbbbbbb") == 0);
  CHECK(rig.write("cccccccc") == -ENOSPC);
  CHECK(rig.cons->subbufs_consumed(0) == -EINVAL);
  CHECK(rig.cons->subbufs_consumed(1) == 0);  // an mmap reader finished sub-buffer 0
  CHECK(rig.write("dddddddd") == 0);
  CHECK(rig.cons->subbufs_consumed(100) == 0);
  CHECK(rig.cons->stats().subbufs_consumed == 2);
  CHECK(rig.drain() == "dddddddd");
}

TEST_CASE("a lapped overwrite reader skips to the oldest intact sub-buffer") {
  SpecHook hook{Mode::kOverwrite, 0};
  Rig rig(4, 3, hook.hooks());
  for (char c = 'a'; c <= 'j'; ++c) REQUIRE(rig.write(std::string(4, c)) == 0);
  CHECK(rig.drain(3) == "hhhhiiiijjjj");
  CHECK(rig.cons->stats().overruns == 7);
}

TEST_CASE("bytes_produced includes the readable part of the current sub-buffer and never shrinks") {
  Rig rig(64, 2);
  CHECK(rig.cons->bytes_produced() == 0);
  rig.write("12345");
  CHECK(rig.cons->bytes_produced() == 5);
  rig.prod->flush();
  rig.write("678");
  CHECK(rig.cons->bytes_produced() == 8);
  rig.prod->reset();
  CHECK(rig.cons->bytes_produced() >= 8);
  rig.write("9");
  CHECK(rig.cons->bytes_produced() >= 9);
}

TEST_CASE("a reset restarts the reader's position at the beginning") {
  Rig rig(8, 2);
  rig.write("aaaa");
  rig.write("bbbbbbbb");
  std::vector<char> tmp(2);
  REQUIRE(rig.cons->read(tmp.data(), 2) == 2);
  rig.prod->reset();
  rig.write("cc");
  CHECK(rig.drain() == "cc");
  REQUIRE(rig.write("dddddddd") == 0);  // sub-buffer 0 closes
  CHECK(rig.drain() == "dddddddd");     // and is consumed, in the new generation
  // The producer counts that progress: sub-buffer 2 may reuse slot 0.
  REQUIRE(rig.write("eeeeeeee") == 0);
  CHECK(rig.drain() == "eeeeeeee");
}

TEST_CASE("a consumed count published before a reset does not count after it") {
  Rig rig(8, 2);
  rig.write("aaaaaaaa");
  rig.write("bbbbbbbb");
  rig.drain();  // publishes consumed = 2 for the old generation
  rig.prod->reset();
  // The reader has not looked since the reset: the producer must not count its old progress.
  rig.write("cccccccc");
  rig.write("dddddddd");
  CHECK(rig.write("eeeeeeee") == -ENOSPC);
}

TEST_CASE("Buffer::attach maps a sealed buffer fd and refuses anything else") {
  core::Geometry g;
  REQUIRE(core::make_geometry(4096, 4, &g) == 0);
  core::Buffer a;
  REQUIRE(core::Buffer::create(g, "t", &a) == 0);
  core::Buffer b;
  // The consumer publishes its position and arms the doorbell: it needs a writable mapping.
  REQUIRE(core::Buffer::attach(core::UniqueFd(::dup(a.fd())), g, PROT_READ | PROT_WRITE, true,
                               &b) == 0);
  core::Producer p(a);
  core::Consumer c(b);
  REQUIRE(p.write("shared", 6) == 0);
  char out[16];
  CHECK(c.read(out, sizeof out) == 6);
  CHECK(std::string(out, 6) == "shared");

  core::Geometry other;
  REQUIRE(core::make_geometry(4096, 8, &other) == 0);
  core::Buffer bad;
  CHECK(core::Buffer::attach(core::UniqueFd(::dup(a.fd())), other, PROT_READ, true, &bad) ==
        -EINVAL);
  // An unsealed memfd of the right size could shrink under the reader: refused.
  core::UniqueFd raw(::memfd_create("unsealed", MFD_CLOEXEC));
  REQUIRE(raw);
  REQUIRE(::ftruncate(raw.get(), static_cast<off_t>(core::Layout::of(g).total_size)) == 0);
  CHECK(core::Buffer::attach(std::move(raw), g, PROT_READ, false, &bad) == -EINVAL);
  CHECK(core::Buffer::attach(core::UniqueFd(), g, PROT_READ, false, &bad) == -EBADF);
}

namespace {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
// Minor page faults the calling thread took so far.
long thread_minflt() {
  rusage ru{};
  REQUIRE(::getrusage(RUSAGE_THREAD, &ru) == 0);
  return ru.ru_minflt;
}
}  // namespace

TEST_CASE("Buffer::populate allocates every page and maps it: the writes after it take no fault") {
  core::Geometry g;
  REQUIRE(core::make_geometry(4096, 64, &g) == 0);  // 256 KiB of data: 64 pages
  core::Buffer a;
  REQUIRE(core::Buffer::create(g, "t", &a) == 0);
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t data_pages = g.data_size() / page;
  // A second writable mapping of the same memfd, as a producer's: create() wrote only the
  // control area, so no data page exists yet.
  auto resident = [&](const core::Buffer& b) {
    std::vector<unsigned char> v(data_pages);
    REQUIRE(::mincore(b.data(), g.data_size(), v.data()) == 0);
    size_t n = 0;
    for (unsigned char x : v) n += x & 1;
    return n;
  };
  auto touch_all = [&](const core::Buffer& b) {
    const long before = thread_minflt();
    for (size_t off = 0; off < g.data_size(); off += page) b.data()[off] = 'p';
    return thread_minflt() - before;
  };
  SUBCASE("populated") {
    core::Buffer b;
    REQUIRE(core::Buffer::attach(core::UniqueFd(::dup(a.fd())), g, PROT_READ | PROT_WRITE, true,
                                 &b) == 0);
    CHECK(resident(b) == 0);
    REQUIRE(b.populate() == 0);
    CHECK(resident(b) == data_pages);
    // Every page is in this mapping's page tables, writable: writing each one faults none. Not
    // counted under a sanitizer, whose shadow memory faults on those writes itself (ASan 8,
    // TSan 64 here); the residency above holds there too.
    if (!kSanitized) CHECK(touch_all(b) < 4);
  }
  SUBCASE("not populated: the same writes fault once a page (what the test above tells apart)") {
    core::Buffer b;
    REQUIRE(core::Buffer::attach(core::UniqueFd(::dup(a.fd())), g, PROT_READ | PROT_WRITE, true,
                                 &b) == 0);
    CHECK(touch_all(b) >= static_cast<long>(data_pages));
  }
  SUBCASE("a page the kernel cannot populate: the error comes back, it is not taken for success") {
    // No real setup here makes the kernel refuse memory to the advice: a memory cgroup over its
    // limit OOM-kills the populating process instead. A hole in the mapping is refused with
    // ENOMEM, the errno a refused allocation gives, and goes through the same branch.
    core::Buffer b;
    REQUIRE(core::Buffer::attach(core::UniqueFd(::dup(a.fd())), g, PROT_READ | PROT_WRITE, true,
                                 &b) == 0);
    // The Buffer's own munmap of the whole range at its end is unaffected by the hole.
    REQUIRE(::munmap(b.data() + 8 * page, page) == 0);
    CHECK(b.populate() == -ENOMEM);
  }
  core::Buffer none;
  CHECK(none.populate() == -EBADF);
}

TEST_CASE("regression: a switch in progress is not taken for a lap (found by the stress test)") {
  // No-overwrite, two sub-buffers, both full; the reader is inside sub-buffer 0. A writer closing
  // sub-buffer 1 has published produced == 2 while the busy word still carries sequence 1. The
  // reader once read that as "the writer moved past us" and skipped the rest of sub-buffer 0.
  Rig rig(8, 2);
  REQUIRE(rig.write("aaaaaaaa") == 0);
  REQUIRE(rig.write("bbbbbbbb") == 0);
  char two[2];
  REQUIRE(rig.cons->read(two, 2) == 2);
  core::ShmHeader* h = rig.buf.header();
  h->produced.store(2);
  h->wpos.store(core::make_word(1, 1, core::kOffBusy));
  CHECK(rig.drain().empty());  // undecided: nothing now, and nothing skipped
  h->wpos.store(core::make_word(0, 2, core::kOffStopped));  // the switch was refused: full
  CHECK(rig.drain() == "aaaaaabbbbbbbb");
  CHECK(rig.cons->stats().overruns == 0);
}

TEST_CASE("a finalized buffer skips and counts what a dead producer never committed") {
  Rig rig(16, 4);
  SUBCASE("a hole in a closed sub-buffer does not hold back the later ones") {
    REQUIRE(rig.write("aaaa") == 0);
    core::Reservation hole;
    REQUIRE(rig.prod->reserve(4, &hole) == 0);  // its writer dies: never committed
    REQUIRE(rig.write("bbbb") == 0);
    REQUIRE(rig.write("cccccccccccc") == 0);  // switches: sub-buffer 0 closes with the hole
    REQUIRE(rig.write("dddddddddddd") == 0);
    CHECK(rig.drain() == "aaaa");  // stuck behind the hole while the producer may still commit
    rig.cons->finalize();
    CHECK(rig.drain() == "ccccccccccccdddddddddddd");
    CHECK(rig.cons->stats().lost_uncommitted == 8);  // the hole and "bbbb" after it
    CHECK(rig.cons->drained());
  }
  SUBCASE("a hole in the last sub-buffer is counted once") {
    REQUIRE(rig.write("aaaa") == 0);
    core::Reservation hole;
    REQUIRE(rig.prod->reserve(5, &hole) == 0);
    REQUIRE(rig.write("bb") == 0);
    rig.cons->finalize();
    CHECK(rig.drain() == "aaaa");
    CHECK(rig.cons->stats().lost_uncommitted == 7);
    CHECK(rig.drain().empty());
    CHECK(rig.cons->stats().lost_uncommitted == 7);
    CHECK(rig.cons->drained());
  }
}

TEST_CASE("at_record_boundary is false only while a record is partly returned") {
  Rig rig(64, 4);
  REQUIRE(rig.write("0123456789") == 0);
  REQUIRE(rig.write("abcdefghij") == 0);
  char tmp[64];
  CHECK(rig.cons->at_record_boundary());
  REQUIRE(rig.cons->read(tmp, 15) == 15);
  CHECK_FALSE(rig.cons->at_record_boundary());
  REQUIRE(rig.cons->read(tmp, 5) == 5);
  CHECK(rig.cons->at_record_boundary());
}

TEST_CASE("read with one_subbuf stops at the end of a sub-buffer") {
  Rig rig(16, 4);
  for (int i = 0; i < 4; ++i) REQUIRE(rig.write("12345678") == 0);  // two sub-buffers
  char tmp[64];
  CHECK(rig.cons->read(tmp, sizeof tmp, true) == 16);
  CHECK(rig.cons->at_record_boundary());
  CHECK(rig.cons->read(tmp, sizeof tmp, true) == 16);
}

TEST_CASE("consume_upto releases sub-buffers for the current reset generation only") {
  Rig rig(16, 4);
  for (int i = 0; i < 6; ++i) REQUIRE(rig.write("12345678") == 0);  // 2 closed + 1 current
  const uint32_t gen = static_cast<uint32_t>(rig.buf.header()->consumed.load() >> 48);
  CHECK(rig.cons->consume_upto(gen + 2, 2) == -ESTALE);
  CHECK(rig.cons->consume_upto(gen, 2) == 0);
  CHECK(rig.cons->stats().subbufs_consumed == 2);
  CHECK(rig.drain() == "1234567812345678");
}

TEST_CASE("consume_upto takes a hostile reader's position without wrapping") {
  core::ProducerHooks hk;
  hk.subbuf_start = [](void*, core::Producer&, void*, void*, uint32_t) { return true; };
  Rig rig(16, 4, hk);  // overwrite mode, lapped below
  for (int i = 0; i < 24; ++i) REQUIRE(rig.write("12345678") == 0);  // 12 sub-buffers' worth
  const uint32_t gen = static_cast<uint32_t>(rig.buf.header()->consumed.load() >> 48);
  CHECK(rig.cons->consume_upto(gen, ~uint64_t{0}) == 0);
  const auto st = rig.cons->stats();
  CHECK(st.subbufs_consumed <= st.subbufs_produced);
  CHECK(st.overruns < 12);
  // The buffer still works: new records are readable.
  REQUIRE(rig.write("abcdefgh") == 0);
  REQUIRE(rig.write("ijklmnop") == 0);
  CHECK(rig.drain().find("abcdefghijklmnop") != std::string::npos);
}

TEST_CASE("plan_read hands out spans without consuming until finish_read; abort_read keeps them") {
  Rig rig(16, 2);
  for (int i = 0; i < 4; ++i) REQUIRE(rig.write("12345678") == 0);  // the buffer is full
  CHECK(rig.write("x") == -ENOSPC);
  iovec iov[8];
  int n = 0;
  REQUIRE(rig.cons->plan_read(iov, 8, 100, &n) == 32);
  CHECK(n == 2);
  CHECK(std::string(static_cast<char*>(iov[0].iov_base), iov[0].iov_len) == "1234567812345678");
  // Not consumed yet: the writer cannot take the sub-buffers being delivered.
  CHECK(rig.prod->buf_full());
  CHECK(rig.write("y") == -ENOSPC);
  rig.cons->abort_read();
  CHECK(rig.cons->stats().bytes_consumed == 0);
  REQUIRE(rig.cons->plan_read(iov, 1, 100, &n) == 16);  // one span at most
  CHECK(n == 1);
  rig.cons->finish_read();
  CHECK_FALSE(rig.prod->buf_full());
  CHECK(rig.write("abcdefgh") == 0);
  CHECK(rig.drain() == "1234567812345678abcdefgh");  // the planned 16 bytes are gone
  CHECK(rig.cons->stats().bytes_consumed == 40);  // 16 delivered by the plan, 24 by drain()
}

namespace {
// The bytes of an extent, as a recorder would write them from the mapping.
std::string extent_bytes(const Rig& rig, const core::Consumer::Extent& e) {
  return std::string(rig.buf.data() + e.data_offset(rig.buf.geometry().subbuf_size), e.len);
}
}  // namespace

TEST_CASE("take_extent hands out closed sub-buffers whole, padding cut, and consumes nothing") {
  Rig rig(16, 4);
  core::Consumer::Extent e;
  REQUIRE(rig.write("aaaaaaaaaa") == 0);
  CHECK(rig.cons->take_extent(&e) == 0);  // the sub-buffer is still open
  REQUIRE(rig.write("bbbbbbbb") == 0);    // closes sub-buffer 0 with 6 bytes of padding
  REQUIRE(rig.cons->take_extent(&e) == 1);
  CHECK(e.seq == 0);
  CHECK(e.closed);
  CHECK(extent_bytes(rig, e) == "aaaaaaaaaa");
  core::Consumer::Extent again;
  REQUIRE(rig.cons->take_extent(&again) == 1);  // nothing consumed: the same extent
  CHECK(again.seq == e.seq);
  CHECK(again.len == e.len);
  CHECK(rig.cons->finish_extent(e) == 1);
  CHECK(rig.cons->stats().subbufs_consumed == 1);
  CHECK(rig.cons->take_extent(&e) == 0);  // "bbbbbbbb" is in the open sub-buffer
  CHECK(rig.drain() == "bbbbbbbb");       // read() goes on where the extent ended
}

TEST_CASE("an extent says where it starts in the byte stream; a part of it can be passed over") {
  Rig rig(16, 4);
  core::Consumer::Extent e;
  REQUIRE(rig.write("aaaaaaaaaa") == 0);
  REQUIRE(rig.write("bbbbbbbb") == 0);  // sub-buffer 0 holds 10 bytes, 1 holds 8
  REQUIRE(rig.write("cccc") == 0);      // and 12: sub-buffer 1 closes
  REQUIRE(rig.write("dddddddd") == 0);
  uint64_t at = 99;
  CHECK(rig.cons->position(&at));
  CHECK(at == 0);
  REQUIRE(rig.cons->take_extent(&e) == 1);
  CHECK(e.pos == 0);
  CHECK(e.exact);
  CHECK(rig.cons->extent_intact(e));
  CHECK(rig.cons->finish_extent(e, e.len + 1) == 0);  // more than the extent: refused
  CHECK(rig.cons->finish_extent(e, 4) == 1);           // only 4 bytes of it, consumed
  CHECK(rig.cons->position(&at));
  CHECK(at == 4);
  CHECK_FALSE(rig.cons->extent_intact(e));  // the position moved: no longer that extent
  REQUIRE(rig.cons->take_extent(&e) == 1);  // the rest of sub-buffer 0
  CHECK(e.pos == 4);
  CHECK(e.off == 4);
  CHECK(extent_bytes(rig, e) == "aaaaaa");
  CHECK(rig.cons->finish_extent(e) == 1);
  REQUIRE(rig.cons->take_extent(&e) == 1);
  CHECK(e.pos == 10);
  CHECK(extent_bytes(rig, e) == "bbbbbbbbcccc");
  CHECK(rig.cons->finish_extent(e) == 1);
  CHECK(rig.cons->position(&at));
  CHECK(at == 22);
  CHECK(rig.cons->stats().bytes_consumed == 22);
}

TEST_CASE("take_extent waits for a record in flight, then gives the rest after a partial read") {
  Rig rig(16, 4);
  core::Consumer::Extent e;
  REQUIRE(rig.write("aaaa") == 0);
  core::Reservation r;
  REQUIRE(rig.prod->reserve(4, &r) == 0);
  REQUIRE(rig.write("cccccccccccc") == 0);  // closes sub-buffer 0 with the record in flight
  char two[2];
  REQUIRE(rig.cons->read(two, 2) == 2);     // a reader took "aa"
  CHECK(rig.cons->take_extent(&e) == 0);    // not wholly committed
  std::memcpy(r.ptr, "bbbb", 4);
  rig.prod->commit(r);
  REQUIRE(rig.cons->take_extent(&e) == 1);
  CHECK(extent_bytes(rig, e) == "aabbbb");  // the rest, from where the reader stopped
  CHECK(rig.cons->finish_extent(e) == 1);
  CHECK(rig.cons->stats().bytes_consumed == 8);
}

TEST_CASE("finish_extent consumes nothing if another reader took the bytes meanwhile") {
  Rig rig(16, 4);
  REQUIRE(rig.write("aaaaaaaaaaaa") == 0);
  REQUIRE(rig.write("bbbbbbbbbbbb") == 0);
  core::Consumer::Extent e;
  REQUIRE(rig.cons->take_extent(&e) == 1);
  char one;
  REQUIRE(rig.cons->read(&one, 1) == 1);  // a cat read one byte while the extent was on its way
  CHECK(rig.cons->finish_extent(e) == 0);
  CHECK(rig.cons->stats().bytes_consumed == 1);
  REQUIRE(rig.cons->take_extent(&e) == 1);  // the rest, once more
  CHECK(extent_bytes(rig, e) == "aaaaaaaaaaa");
  CHECK(rig.cons->finish_extent(e) == 1);
}

TEST_CASE("finish_extent refuses an extent the writer overwrote, and the overrun is counted") {
  SpecHook hook{Mode::kOverwrite, 0};
  Rig rig(4, 3, hook.hooks());
  REQUIRE(rig.write("aaaa") == 0);
  REQUIRE(rig.write("bbbb") == 0);
  core::Consumer::Extent e;
  REQUIRE(rig.cons->take_extent(&e) == 1);
  CHECK(extent_bytes(rig, e) == "aaaa");
  for (char c = 'c'; c <= 'f'; ++c) REQUIRE(rig.write(std::string(4, c)) == 0);  // laps it
  CHECK(rig.cons->finish_extent(e) == 0);
  REQUIRE(rig.cons->take_extent(&e) == 1);
  CHECK(extent_bytes(rig, e) == "dddd");  // the oldest the writer has not begun to reuse
  CHECK(rig.cons->stats().overruns == 3);
}

TEST_CASE("finish_extent refuses an extent taken before a reset") {
  Rig rig(16, 4);
  REQUIRE(rig.write("aaaaaaaaaaaa") == 0);
  REQUIRE(rig.write("bbbbbbbbbbbb") == 0);
  core::Consumer::Extent e;
  REQUIRE(rig.cons->take_extent(&e) == 1);
  rig.prod->reset();
  CHECK(rig.cons->finish_extent(e) == 0);
  CHECK(rig.cons->take_extent(&e) == 0);
}

TEST_CASE("once finalized, take_extent also gives the committed tail of the open sub-buffer") {
  Rig rig(16, 4);
  REQUIRE(rig.write("aaaa") == 0);
  core::Reservation hole;
  REQUIRE(rig.prod->reserve(3, &hole) == 0);  // its writer died
  core::Consumer::Extent e;
  CHECK(rig.cons->take_extent(&e) == 0);
  rig.cons->finalize();
  REQUIRE(rig.cons->take_extent(&e) == 1);
  CHECK_FALSE(e.closed);
  CHECK(extent_bytes(rig, e) == "aaaa");
  CHECK(rig.cons->finish_extent(e) == 1);
  CHECK(rig.cons->take_extent(&e) == 0);
  CHECK(rig.cons->stats().lost_uncommitted == 3);
  CHECK(rig.cons->drained());
}

TEST_CASE("expire frees what a finalized buffer holds unread, counted in lost_expired_bytes") {
  Rig rig(64, 4);
  std::string all;
  for (int i = 0; i < 20; ++i) {  // 20 x 10 bytes: sub-buffers closed, and a partial one
    const std::string rec = "record" + std::to_string(1000 + i);
    REQUIRE(rig.write(rec) == 0);
    all += rec;
  }
  char part[25];
  REQUIRE(rig.cons->read(part, sizeof part) == 25);  // some read first
  CHECK(rig.cons->expire() == 0);                     // not finalized: nothing happens
  CHECK(rig.cons->stats().bytes_unread == all.size() - 25);
  rig.prod->close();
  rig.cons->finalize();
  CHECK(rig.cons->expire() == all.size() - 25);
  const core::BufferStats st = rig.cons->stats();
  CHECK(st.lost_expired_bytes == all.size() - 25);
  CHECK(st.bytes_consumed == 25);
  CHECK(st.bytes_unread == 0);
  CHECK(test::balanced(st));
  CHECK(rig.cons->drained());
  CHECK(rig.drain().empty());
  CHECK(rig.cons->expire() == 0);  // once
}

TEST_CASE("a hostile produced count cannot hold subbufs_consumed in a loop") {
  Rig rig(64, 4);
  REQUIRE(rig.write("0123456789") == 0);
  REQUIRE(rig.prod->flush() == 0);
  // The producer claims 2^62 sub-buffers produced and asks to release as many: the lapped ones
  // are passed in one step (this walked them one by one, holding the daemon's loop for ever).
  rig.buf.header()->produced.store(uint64_t{1} << 62, std::memory_order_release);
  CHECK(rig.cons->subbufs_consumed(uint64_t{1} << 62) == 0);
  CHECK(rig.cons->stats().subbufs_consumed >= (uint64_t{1} << 62) - 4);
  CHECK(rig.cons->consume_upto(0, uint64_t{1} << 62) >= -EIO);
  char buf[64];
  CHECK(rig.cons->read(buf, sizeof buf) >= -EIO);  // returns, whatever it makes of it
}

TEST_CASE("bytes_produced never counts the sub-buffer a switch is closing twice") {
  Rig rig(64, 4);
  REQUIRE(rig.write(std::string(30, 'a')) == 0);
  CHECK(rig.cons->bytes_produced() == 30);
  core::ShmHeader* h = rig.buf.header();
  // A switch caught between its two stores: it holds the busy word and has added the closed
  // sub-buffer's 30 bytes to the closed total, but not yet moved `produced`. The current
  // sub-buffer's proven prefix still says 30 too.
  const uint64_t word = h->wpos.load();
  h->wpos.store(core::make_word(core::word_slot(word), core::word_seq(word), core::kOffBusy));
  h->bytes_produced.store(30);
  CHECK(rig.cons->bytes_produced() == 30);  // was 60, and stayed 60 (never shrinks)
  CHECK(core::View(rig.buf).committed_bytes() == 30);
  // The switch goes on as a real one would: the total is then right, once.
  h->bytes_produced.store(0);
  h->wpos.store(word);
  REQUIRE(rig.prod->flush() == 0);
  REQUIRE(rig.write("bbbb") == 0);
  CHECK(rig.cons->bytes_produced() == 34);
  CHECK(core::View(rig.buf).committed_bytes() == 34);
}

// ---- A daemon restart: a new consumer resumes from the shared consumer record ---------------

namespace {

// What a new daemon reading the same buffer would read: a resumed consumer, drained.
std::string resumed_drain(Rig& rig, core::BufferStats* st = nullptr) {
  rig.cons = std::make_unique<core::Consumer>(rig.buf);
  rig.cons->resume();
  std::string got = rig.drain(7);
  if (st) *st = rig.cons->stats();
  return got;
}

}  // namespace

TEST_CASE("a resumed consumer reads on exactly where the last one stopped, mid sub-buffer too") {
  Rig rig(32, 8);
  std::string want;
  for (int i = 0; i < 30; ++i) {
    const std::string rec = "r" + std::to_string(i) + ";";
    REQUIRE(rig.write(rec) == 0);
    want += rec;
  }
  // Whole sub-buffers and part of the next, in odd-sized reads.
  char tmp[45];
  REQUIRE(rig.cons->read(tmp, sizeof tmp) == 45);
  const auto before = rig.cons->stats();
  REQUIRE(before.subbufs_consumed >= 1);
  core::BufferStats after;
  const std::string rest = resumed_drain(rig, &after);
  CHECK(std::string(tmp, 45) + rest == want);
  // Counters carry on, the books balance, nothing was delivered twice.
  CHECK(after.bytes_consumed == want.size());
  CHECK(after.redelivered_bytes == 0);
  CHECK(after.corrupt == 0);
  CHECK(test::balanced(after));
}

TEST_CASE("bytes of a reply in flight are delivered again after a restart, and counted") {
  Rig rig(32, 8);
  REQUIRE(rig.write("first;") == 0);
  REQUIRE(rig.write("second;") == 0);
  char tmp[64];
  REQUIRE(rig.cons->read(tmp, 6) == 6);  // "first;" reached its reader
  rig.cons->hold();                       // a reply leaves ...
  REQUIRE(rig.cons->read(tmp, sizeof tmp) == 7);
  // ... and the daemon dies before it is known to have gone out: no release().
  core::BufferStats st;
  CHECK(resumed_drain(rig, &st) == "second;");
  CHECK(st.redelivered_bytes == 7);
  CHECK(st.bytes_consumed == 13);  // counted once: the first delivery was never recorded
  CHECK(test::balanced(st));

  SUBCASE("once released, nothing comes twice") {
    REQUIRE(rig.write("third;") == 0);
    rig.cons->hold();
    REQUIRE(rig.cons->read(tmp, sizeof tmp) == 6);
    rig.cons->release();
    CHECK(resumed_drain(rig, &st).empty());
    CHECK(st.redelivered_bytes == 7);  // carries on, nothing added
  }
}

TEST_CASE("a held position keeps a no-overwrite writer off the bytes in flight") {
  Rig rig(16, 2);
  REQUIRE(rig.write("aaaaaaaaaaaaaaaa") == 0);
  REQUIRE(rig.write("bbbbbbbbbbbbbbbb") == 0);
  CHECK(rig.write("c") == -ENOSPC);  // full
  char tmp[16];
  rig.cons->hold();
  REQUIRE(rig.cons->read(tmp, sizeof tmp) == 16);
  CHECK(rig.write("c") == -ENOSPC);  // the reply is not out: still full for the writer
  rig.cons->release();
  CHECK(rig.write("c") == 0);
}

TEST_CASE("a consumer record that lies is counted corrupt and read from the buffer as it is") {
  Rig rig(32, 4);
  REQUIRE(rig.write("keep;") == 0);
  core::ShmHeader* h = rig.buf.header();
  const uint64_t seq = h->record_seq.load();
  core::ConsumerRecord& r = h->records[seq & 1];
  SUBCASE("consumed beyond what was produced") { r.consumed.store(core::consumed_tag(0, 1000)); }
  SUBCASE("an offset past the sub-buffer") { r.read_off.store(0xffffffffu); }
  SUBCASE("a position past what was produced") { r.pos_bytes.store(uint64_t{1} << 40); }
  SUBCASE("an odd generation") { r.gen.store(1); }
  core::BufferStats st;
  const std::string got = resumed_drain(rig, &st);
  CHECK(st.corrupt == 1);
  CHECK(got == "keep;");  // started over at the oldest data the buffer holds
  CHECK(test::balanced(st));
}

TEST_CASE("a record torn by a consumer killed mid-write is never used: the previous one is") {
  Rig rig(32, 4);
  REQUIRE(rig.write("one;") == 0);
  char tmp[4];
  REQUIRE(rig.cons->read(tmp, 4) == 4);
  REQUIRE(rig.write("two;") == 0);
  // The next write_record half done: the record not in use gets garbage, record_seq stays.
  core::ShmHeader* h = rig.buf.header();
  const uint64_t seq = h->record_seq.load();
  h->records[(seq + 1) & 1].consumed.store(~uint64_t{0});
  h->records[(seq + 1) & 1].read_off.store(12345);
  core::BufferStats st;
  CHECK(resumed_drain(rig, &st) == "two;");
  CHECK(st.corrupt == 0);
}

TEST_CASE("bytes a page cache took and no reader was shown to get are counted lost after a "
          "restart, as a close would count them") {
  Rig rig(32, 8);
  REQUIRE(rig.write("spliced;") == 0);
  char tmp[64];
  REQUIRE(rig.cons->read(tmp, sizeof tmp) == 8);  // into a page cache
  rig.cons->note_unproven(8);
  rig.cons->note_unproven(-3);  // the reader was shown to get 3 of them
  core::BufferStats st;
  CHECK(resumed_drain(rig, &st).empty());
  CHECK(st.lost_readahead_bytes == 5);
  CHECK(st.bytes_consumed == 3);
  CHECK(test::balanced(st));
}
