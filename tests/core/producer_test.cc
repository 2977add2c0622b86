// The producer side: hooks, loss accounting, flush, reset, close, deliver, the doorbell.
#include "core/producer.h"

#include <doctest/doctest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "harness.h"

using namespace relayfs;
using test::Mode;
using test::Rig;
using test::SpecHook;

namespace {

// Counts the producer's wake-up rings.
struct RingCount {
  int rings = 0;
  static void wake(void* ctx, core::Producer&) { ++static_cast<RingCount*>(ctx)->rings; }
  core::ProducerHooks hooks() {
    core::ProducerHooks hk;
    hk.wakeup = &RingCount::wake;
    hk.ctx = this;
    return hk;
  }
};

}  // namespace

TEST_CASE("open runs subbuf_start once, with a null prev_subbuf") {
  SpecHook hook{Mode::kNoOverwrite, 4};
  Rig rig(64, 4, hook.hooks());
  CHECK(hook.calls == 1);
  CHECK(hook.calls_with_null_prev == 1);
  // The reserved header is data: the reader sees it before any record.
  REQUIRE(rig.write("x") == 0);
  CHECK(rig.drain().size() == 5);
}

TEST_CASE("a full no-overwrite buffer drops records and counts them as lost_full") {
  Rig rig(16, 2);
  const std::string rec(8, 'a');
  int ok = 0;
  for (int i = 0; i < 10; ++i)
    if (rig.write(rec) == 0) ++ok;
  // Two sub-buffers of two records each; the switch into a third is refused.
  CHECK(ok == 4);
  CHECK(rig.prod->buf_full());
  CHECK(rig.write(rec) == -ENOSPC);
  const auto st = rig.cons->stats();
  CHECK(st.lost_full == 7);
  CHECK(st.lost_too_big == 0);
  CHECK(rig.drain() == std::string(32, 'a'));
  CHECK_FALSE(rig.prod->buf_full());
  CHECK(rig.write("b") == 0);  // the refused switch is retried and now succeeds
  CHECK(rig.drain() == "b");
}

TEST_CASE("a refused switch is retried with the same prev_subbuf and prev_padding") {
  struct Spy {
    std::vector<std::pair<void*, uint32_t>> seen;
    static bool start(void* ctx, core::Producer& p, void*, void* prev, uint32_t pad) {
      static_cast<Spy*>(ctx)->seen.emplace_back(prev, pad);
      return !p.buf_full();
    }
  } spy;
  core::ProducerHooks hk;
  hk.subbuf_start = &Spy::start;
  hk.ctx = &spy;
  Rig rig(16, 1, hk);
  REQUIRE(rig.write(std::string(10, 'a')) == 0);
  CHECK(rig.write(std::string(10, 'b')) == -ENOSPC);  // closes sub-buffer 0 (padding 6), refused
  CHECK(rig.write(std::string(3, 'c')) == -ENOSPC);   // retried: same arguments
  REQUIRE(spy.seen.size() == 3);
  CHECK(spy.seen[0].first == nullptr);
  CHECK(spy.seen[1] == spy.seen[2]);
  CHECK(spy.seen[1].first == rig.prod->subbuf_data(0));
  CHECK(spy.seen[1].second == 6);
}

TEST_CASE("records larger than a sub-buffer are counted as too big and cause no switch") {
  Rig rig(32, 4);
  REQUIRE(rig.write("abc") == 0);
  CHECK(rig.write(std::string(33, 'x')) == -EMSGSIZE);
  CHECK(rig.write(std::string(1000, 'x')) == -EMSGSIZE);
  const auto st = rig.cons->stats();
  CHECK(st.lost_too_big == 2);
  CHECK(st.subbufs_produced == 0);
  CHECK(rig.write(std::string(29, 'd')) == 0);  // still fits beside "abc": no switch happened
  CHECK(rig.drain() == "abc" + std::string(29, 'd'));
}

TEST_CASE("a record that fits a sub-buffer but not beside its header is too big") {
  SpecHook hook{Mode::kNoOverwrite, 4};
  Rig rig(32, 4, hook.hooks());
  CHECK(rig.write(std::string(30, 'x')) == -EMSGSIZE);  // switches, then cannot fit 4 + 30
  CHECK(rig.cons->stats().lost_too_big == 1);
  CHECK(rig.write(std::string(28, 'y')) == 0);
}

TEST_CASE("zero-length writes and reservations are refused with EINVAL") {
  Rig rig(32, 2);
  core::Reservation r;
  CHECK(rig.prod->write("", 0) == -EINVAL);
  CHECK(rig.prod->reserve(0, &r) == -EINVAL);
  const auto st = rig.cons->stats();
  CHECK(st.lost_full + st.lost_too_big + st.lost_wrap == 0);
}

TEST_CASE("flush turns a partly filled sub-buffer into a produced one") {
  Rig rig(64, 4);
  REQUIRE(rig.write("hello") == 0);
  CHECK(rig.cons->stats().subbufs_produced == 0);
  REQUIRE(rig.prod->flush() == 0);
  CHECK(rig.cons->stats().subbufs_produced == 1);
  CHECK(rig.cons->stats().bytes_produced == 5);
  SUBCASE("an empty sub-buffer is produced too, as in the kernel") {
    REQUIRE(rig.prod->flush() == 0);
    CHECK(rig.cons->stats().subbufs_produced == 2);
  }
  CHECK(rig.drain() == "hello");
}

TEST_CASE("reset discards unread data and begins sub-buffer 0 again") {
  SpecHook hook{Mode::kNoOverwrite, 0};
  Rig rig(16, 2, hook.hooks());
  for (int i = 0; i < 8; ++i) rig.write("12345678");
  const auto before = rig.cons->stats();
  REQUIRE(before.lost_full > 0);
  rig.prod->reset();
  CHECK(hook.calls_with_null_prev == 2);
  auto st = rig.cons->stats();
  CHECK(st.subbufs_produced == 0);
  CHECK(st.lost_full == before.lost_full);            // losses stay visible
  CHECK(st.bytes_produced >= before.bytes_produced);  // the file size never shrinks
  CHECK(rig.drain().empty());
  REQUIRE(rig.write("after") == 0);
  CHECK(rig.drain() == "after");
  CHECK(rig.cons->stats().subbufs_consumed == 0);
}

// Regression: reset() read the offset of the sub-buffer being written straight from the position
// word, so after a close (kOffClosed, whose offset is close_off) it counted none of that
// sub-buffer's bytes. The new generation then seemed to start before what the reader had already
// read: a false corruption, and the unread rest of it missing from lost_reset_bytes.
TEST_CASE("reset after close counts the closed sub-buffer's bytes: no corruption, the books balance") {
  Rig rig(16, 4);
  REQUIRE(rig.write("aaaaaaaa") == 0);  // sub-buffer 0, still open
  std::vector<char> tmp(3);
  REQUIRE(rig.cons->read(tmp.data(), tmp.size()) == 3);
  rig.prod->close();  // e.g. relayctl close, or the daemon gone; then relayctl reset or relay_reset
  rig.prod->reset();
  CHECK(rig.drain().empty());
  const auto st = rig.cons->stats();
  CHECK(st.corrupt == 0);
  CHECK(st.lost_reset_bytes == 5);  // what the reader had not read of "aaaaaaaa"
  CHECK(st.bytes_produced == 8);
  CHECK(test::balanced(st));
}

TEST_CASE("close refuses later writes and keeps committed data readable") {
  Rig rig(64, 2);
  REQUIRE(rig.write("one") == 0);
  REQUIRE(rig.prod->flush() == 0);
  REQUIRE(rig.write("two") == 0);
  rig.prod->close();
  CHECK(rig.cons->producer_closed());
  CHECK(rig.write("three") == -EPIPE);
  CHECK(rig.prod->flush() == -EPIPE);
  rig.cons->finalize();
  CHECK_FALSE(rig.cons->drained());
  CHECK(rig.drain() == "onetwo");
  CHECK(rig.cons->drained());
}

TEST_CASE("a record committed after close is still readable") {
  Rig rig(64, 2);
  core::Reservation r;
  REQUIRE(rig.prod->reserve(4, &r) == 0);
  rig.prod->close();
  CHECK(rig.drain().empty());
  std::memcpy(r.ptr, "late", 4);
  rig.prod->commit(r);
  CHECK(rig.drain() == "late");
}

TEST_CASE("reservations committed in reverse order after close are read whole, or counted lost") {
  // close() records where the last reservation ended (close_off): the finalized consumer proves
  // the tail against it and counts whatever is reserved beyond the committed prefix. An offset
  // short of the reserved end would lose the second record without counting it.
  Rig rig(64, 2);
  core::Reservation r1, r2;
  REQUIRE(rig.prod->reserve(5, &r1) == 0);
  REQUIRE(rig.prod->reserve(7, &r2) == 0);
  std::memcpy(r1.ptr, "first", 5);
  std::memcpy(r2.ptr, "second!", 7);
  rig.prod->close();
  SUBCASE("both committed, the second first") {
    rig.prod->commit(r2);
    rig.prod->commit(r1);
    rig.cons->finalize();  // the producer is gone, as the daemon sees it
    CHECK(rig.drain() == "firstsecond!");
    const auto st = rig.cons->stats();
    CHECK(st.bytes_produced == 12);
    CHECK(st.bytes_consumed == 12);
    CHECK(st.lost_uncommitted == 0);
    CHECK(rig.cons->drained());
  }
  SUBCASE("only the first committed: the second's bytes count as lost_uncommitted") {
    rig.prod->commit(r1);
    rig.cons->finalize();
    CHECK(rig.drain() == "first");
    const auto st = rig.cons->stats();
    CHECK(st.bytes_consumed == 5);
    CHECK(st.lost_uncommitted == 7);
    CHECK(st.bytes_produced == st.bytes_consumed + st.lost_uncommitted);
    CHECK(rig.drain().empty());
    CHECK(rig.cons->stats().lost_uncommitted == 7);  // counted once
    CHECK(rig.cons->drained());
  }
}

TEST_CASE("deliver fires once per sub-buffer when every reservation is committed") {
  struct Count {
    std::vector<uint32_t> slots;
    static void deliver(void* ctx, core::Producer&, uint32_t slot, void*) {
      static_cast<Count*>(ctx)->slots.push_back(slot);
    }
  } count;
  core::ProducerHooks hk;
  hk.deliver = &Count::deliver;
  hk.ctx = &count;
  Rig rig(16, 4, hk);
  core::Reservation a, b;
  REQUIRE(rig.prod->reserve(6, &a) == 0);
  REQUIRE(rig.prod->reserve(6, &b) == 0);
  rig.prod->commit(b);                // out of order
  REQUIRE(rig.write("xxxxxx") == 0);  // switches: sub-buffer 0 closed with a in flight
  CHECK(count.slots.empty());
  rig.prod->commit(a);
  REQUIRE(count.slots.size() == 1);
  CHECK(count.slots[0] == 0);
  REQUIRE(rig.write(std::string(10, 'y')) == 0);  // fills sub-buffer 1 exactly
  REQUIRE(count.slots.size() == 2);
  CHECK(count.slots[1] == 1);
}

TEST_CASE("buf_full fires once when the buffer becomes full") {
  struct Count {
    int full = 0;
    static void buf_full(void* ctx, core::Producer&, uint32_t, void*) {
      ++static_cast<Count*>(ctx)->full;
    }
  } count;
  core::ProducerHooks hk;
  hk.buf_full = &Count::buf_full;
  hk.ctx = &count;
  Rig rig(8, 2, hk);
  for (int i = 0; i < 10; ++i) rig.write("abcdefgh");
  CHECK(count.full == 1);
  rig.drain();
  for (int i = 0; i < 10; ++i) rig.write("abcdefgh");
  CHECK(count.full == 2);
}

TEST_CASE("the wake-up rings only after a reader armed the doorbell, once per arming") {
  RingCount count;
  core::ProducerHooks hk = count.hooks();
  Rig rig(64, 4, hk);
  for (int i = 0; i < 10; ++i) REQUIRE(rig.write("abc") == 0);
  CHECK(count.rings == 0);
  rig.cons->arm_doorbell();
  rig.write("d");
  rig.write("e");
  CHECK(count.rings == 1);
  rig.cons->arm_doorbell();
  rig.prod->flush();  // a sub-buffer boundary rings too
  CHECK(count.rings == 2);
  rig.cons->arm_doorbell();
  rig.prod->close();
  CHECK(count.rings == 3);
}

TEST_CASE("a write from inside subbuf_start is dropped instead of deadlocking") {
  struct Reentrant {
    int inner_rc = 1;
    static bool start(void* ctx, core::Producer& p, void*, void* prev, uint32_t) {
      if (prev) static_cast<Reentrant*>(ctx)->inner_rc = p.write("z", 1);
      return true;
    }
  } re;
  core::ProducerHooks hk;
  hk.subbuf_start = &Reentrant::start;
  hk.ctx = &re;
  Rig rig(8, 2, hk);
  REQUIRE(rig.write("12345678") == 0);
  REQUIRE(rig.write("9") == 0);  // switch: the hook's own write must not hang
  CHECK(re.inner_rc == -ENOSPC);
  CHECK(rig.cons->stats().lost_full == 1);
}

TEST_CASE("subbuf_start may switch another buffer and still not deadlock on its own") {
  // What relay_flush from subbuf_start does on a two-CPU channel: the hook switches the other
  // buffer (a nested switch), then touches its own, whose switch this thread holds.
  struct Nested {
    core::Producer* other = nullptr;
    int other_rc = 1, flush_rc = 1, write_rc = 1;
    static bool start(void* ctx, core::Producer& p, void*, void* prev, uint32_t) {
      auto* n = static_cast<Nested*>(ctx);
      if (prev && n->other) {
        n->other_rc = n->other->flush();
        n->flush_rc = p.flush();
        n->write_rc = p.write("z", 1);
        n->other = nullptr;  // once
      }
      return true;
    }
  } nested;
  Rig other(8, 2);
  core::ProducerHooks hk;
  hk.subbuf_start = &Nested::start;
  hk.ctx = &nested;
  Rig rig(8, 2, hk);
  nested.other = other.prod.get();
  REQUIRE(rig.write("12345678") == 0);
  REQUIRE(rig.write("9") == 0);  // the switch runs the hook
  CHECK(nested.other_rc == 0);
  CHECK(nested.flush_rc == -EDEADLK);
  CHECK(nested.write_rc == -ENOSPC);
  CHECK(rig.cons->stats().lost_full == 1);
  CHECK(other.cons->stats().subbufs_produced == 1);
}

TEST_CASE("overwrite mode never refuses a write and keeps the newest data") {
  SpecHook hook{Mode::kOverwrite, 0};
  Rig rig(8, 4, hook.hooks());
  for (int i = 0; i < 100; ++i) {
    char rec[8];
    std::snprintf(rec, sizeof rec, "%07d", i);
    REQUIRE(rig.prod->write(rec, 8) == 0);
  }
  const auto st = rig.cons->stats();
  CHECK(st.lost_full == 0);
  // Each record fills one sub-buffer. Record 99 sits in the current sub-buffer, which reuses the
  // slot of record 95, so the reader resumes at 96: three closed sub-buffers and the current one.
  const std::string got = rig.drain();
  CHECK(got == "0000096" + std::string(1, '\0') + "0000097" + std::string(1, '\0') + "0000098" +
                   std::string(1, '\0') + "0000099" + std::string(1, '\0'));
  CHECK(rig.cons->stats().overruns == 96);
}

TEST_CASE("a sub-buffer waiter is rung at a complete sub-buffer, not at every record") {
  RingCount count;
  core::ProducerHooks hk = count.hooks();
  Rig rig(16, 4, hk);
  rig.cons->arm_doorbell(true);
  REQUIRE(rig.write("aaaa") == 0);
  REQUIRE(rig.write("bbbb") == 0);
  CHECK(count.rings == 0);
  CHECK_FALSE(rig.cons->subbuf_ready());
  // An out-of-order commit: the sub-buffer closes while a record is still being written.
  core::Reservation r;
  REQUIRE(rig.prod->reserve(8, &r) == 0);
  REQUIRE(rig.write("cccccccc") == 0);  // does not fit: closes sub-buffer 0
  CHECK(count.rings == 1);              // the switch rings: a boundary was crossed
  CHECK_FALSE(rig.cons->subbuf_ready());  // but sub-buffer 0 is not whole yet
  rig.cons->arm_doorbell(true);
  std::memset(r.ptr, 'r', 8);
  rig.prod->commit(r);
  CHECK(count.rings == 2);  // its last commit completes it
  CHECK(rig.cons->subbuf_ready());
}

TEST_CASE("blocking mode: a full buffer waits for the consumer instead of dropping") {
  Rig rig(64, 2);
  rig.prod->set_blocking(true, -1);
  const std::string rec(16, 'x');
  std::atomic<bool> done{false};
  std::string got;
  std::thread reader([&] {
    std::vector<char> tmp(40);  // slow, small reads
    while (!done.load() || got.size() < 2000 * rec.size()) {
      const ssize_t n = rig.cons->read(tmp.data(), tmp.size());
      if (n > 0) got.append(tmp.data(), static_cast<size_t>(n));
      else std::this_thread::sleep_for(std::chrono::microseconds(50));
      if (got.size() >= 2000 * rec.size()) break;
    }
  });
  int failed = 0;
  for (int i = 0; i < 2000; ++i) failed += rig.write(rec) != 0;
  rig.prod->flush();
  done = true;
  reader.join();
  CHECK(failed == 0);
  CHECK(rig.cons->stats().lost_full == 0);
  CHECK(got == [&] {
    std::string all;
    for (int i = 0; i < 2000; ++i) all += rec;
    return all;
  }());
}

TEST_CASE("blocking mode: without a reader a write gives up after its timeout and is counted") {
  Rig rig(32, 2);
  rig.prod->set_blocking(true, 20'000'000);  // 20 ms
  const std::string rec(16, 'y');
  for (int i = 0; i < 4; ++i) REQUIRE(rig.write(rec) == 0);  // fills both sub-buffers
  CHECK(rig.write(rec) == -ETIMEDOUT);
  CHECK(rig.cons->stats().lost_full == 1);
  // Once the reader frees a sub-buffer, writing goes on.
  CHECK(rig.drain().size() == 64);
  CHECK(rig.write(rec) == 0);
}

TEST_CASE("blocking mode: an abandoned producer stops waiting") {
  Rig rig(32, 1);
  rig.prod->set_blocking(true, -1);
  REQUIRE(rig.write(std::string(32, 'z')) == 0);
  std::thread t([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    rig.prod->abandon();
  });
  CHECK(rig.write("more") == -ETIMEDOUT);
  t.join();
}

TEST_CASE("blocking mode waits only for a full buffer: a refusing callback drops at once") {
  struct Refuse {
    int calls = 0;
    static bool start(void* ctx, core::Producer&, void*, void* prev, uint32_t) {
      ++static_cast<Refuse*>(ctx)->calls;
      return prev == nullptr;  // begins sub-buffer 0, refuses every later switch
    }
  } refuse;
  core::ProducerHooks hk;
  hk.subbuf_start = &Refuse::start;
  hk.ctx = &refuse;
  Rig rig(32, 4, hk);
  rig.prod->set_blocking(true, -1);  // no limit: a wait would never end
  REQUIRE(rig.write(std::string(32, 'a')) == 0);
  CHECK(rig.write("b") == -ENOSPC);  // the buffer is not full: nothing to wait for
  CHECK(rig.cons->stats().lost_full == 1);
  CHECK(refuse.calls == 2);
}

TEST_CASE("blocking mode: a thread holding an uncommitted reservation does not wait for itself") {
  Rig rig(32, 1);
  rig.prod->set_blocking(true, -1);
  core::Reservation r;
  REQUIRE(rig.prod->reserve_held(16, &r) == 0);  // as relay_reserve takes it
  REQUIRE(rig.write(std::string(16, 'a')) == 0);
  CHECK(rig.write("b") == -ENOSPC);  // full, and only this thread's commit could free it
  std::memset(r.ptr, 'r', 16);
  REQUIRE(rig.prod->commit_at(r.ptr, 16));  // as relay_commit gives it back
  CHECK(rig.drain() == std::string(16, 'r') + std::string(16, 'a'));
}

namespace {

// A reader that looks at the buffer while a switch is held, as the daemon may at any moment: it
// finds nothing it can read yet, arms the doorbell (what the daemon does before it sleeps), and
// counts the wake-ups it gets afterwards.
struct LookWhileBusy {
  core::Consumer* cons = nullptr;
  bool refuse = false;
  int seen_while_busy = -1;
  int rings = 0;
  void look() {
    seen_while_busy = cons->data_available() ? 1 : 0;
    cons->arm_doorbell(false);
  }
  static void wake(void* ctx, core::Producer&) { ++static_cast<LookWhileBusy*>(ctx)->rings; }
  static void full(void* ctx, core::Producer&, uint32_t, void*) {
    auto* s = static_cast<LookWhileBusy*>(ctx);
    if (s->cons) s->look();
  }
  static bool start(void* ctx, core::Producer& p, void*, void*, uint32_t) {
    auto* s = static_cast<LookWhileBusy*>(ctx);
    if (s->cons && s->refuse) {
      s->look();
      return false;
    }
    return !p.buf_full();
  }
};

}  // namespace

// While a closing switch is held, the reader of a full buffer cannot tell whether its oldest
// sub-buffer is being reused, so it sleeps. The switch is then refused: nothing later would wake
// the reader (the buffer is full, so no commit comes, and later refusals skip the switch), and the
// sub-buffer it could read sat unread for good. The release of the switch must ring.
TEST_CASE("a reader that sleeps while a refused switch is held is woken when it is released") {
  LookWhileBusy s;
  core::ProducerHooks hk;
  hk.wakeup = &LookWhileBusy::wake;
  hk.ctx = &s;
  bool retried = false;
  SUBCASE("closing switch refused (default rule, buf_full callback running)") {
    hk.buf_full = &LookWhileBusy::full;
  }
  SUBCASE("retried switch refused by the subbuf_start callback") {
    hk.subbuf_start = &LookWhileBusy::start;
    retried = true;
  }
  Rig rig(64, 2, hk);
  const std::string rec(32, 'x');
  for (int i = 0; i < 4; ++i) REQUIRE(rig.write(rec) == 0);  // sub-buffers 0 and 1 full
  if (retried) {
    CHECK(rig.write(rec) == -ENOSPC);  // the buffer is stopped; the next write retries the switch
    s.refuse = true;
  }
  s.cons = rig.cons.get();
  CHECK(rig.write(rec) == -ENOSPC);
  CHECK(s.seen_while_busy == 0);  // the reader could not read while the switch was held
  CHECK(s.rings == 1);
  CHECK(rig.cons->data_available());
}
