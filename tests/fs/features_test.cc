// The newer relayfs features through a real mount: counters as extended attributes (read with
// getfattr) and relay_buf_stats; relay_open_opts (overwrite, blocking with a time limit); the
// deliver and buf_full callbacks; and relay_printf. (The merged view file BASE of a channel:
// merged_test.cc; mmap readers, relay_reader_*: reader_test.cc.) Every test mounts its own tree
// and takes it down, even when it fails. No assertion depends on how fast anything runs: sleeps
// only give a thread the chance to block, and every wait has a deadline after which the test
// fails.
#include <doctest/doctest.h>
#include <relayfs/relay.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <thread>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

using namespace std::chrono_literals;

// ---- Counters -----------------------------------------------------------------------------------

// Every attribute a relay file has (proto/names.h; struct relay_stats).
const char* const kAttrNames[] = {
    "subbuf_size",          "n_subbufs",          "mode",               "blocking",
    "subbufs_produced",     "subbufs_consumed",   "bytes_produced",     "bytes_consumed",
    "bytes_unread",         "lost_full",          "lost_too_big",       "lost_wrap",
    "overruns",             "lost_uncommitted",   "lost_overrun_bytes", "lost_reset_bytes",
    "lost_readahead_bytes", "lost_expired_bytes", "corrupt",            "redelivered_bytes",
    "channel"};

// The producer's view (relay_buf_stats) and the daemon's (the attributes) agree on everything.
void check_same(const relay_stats& st, const Attrs& a) {
  CHECK(num(a, "subbuf_size") == st.subbuf_size);
  CHECK(num(a, "n_subbufs") == st.n_subbufs);
  CHECK(num(a, "subbufs_produced") == st.subbufs_produced);
  CHECK(num(a, "subbufs_consumed") == st.subbufs_consumed);
  CHECK(num(a, "bytes_produced") == st.bytes_produced);
  CHECK(num(a, "bytes_consumed") == st.bytes_consumed);
  CHECK(num(a, "lost_full") == st.lost_full);
  CHECK(num(a, "lost_too_big") == st.lost_too_big);
  CHECK(num(a, "lost_wrap") == st.lost_wrap);
  CHECK(num(a, "overruns") == st.overruns);
  CHECK(num(a, "lost_uncommitted") == st.lost_uncommitted);
  CHECK(num(a, "lost_overrun_bytes") == st.lost_overrun_bytes);
  CHECK(num(a, "lost_reset_bytes") == st.lost_reset_bytes);
  CHECK(num(a, "lost_readahead_bytes") == st.lost_readahead_bytes);
  CHECK(num(a, "lost_expired_bytes") == st.lost_expired_bytes);
  CHECK(num(a, "bytes_unread") == st.bytes_unread);
}

// ---- Callback recorders -------------------------------------------------------------------------

// What deliver / buf_full saw: through the channel's private_data.
struct Calls {
  std::mutex mu;
  std::vector<unsigned> idx;
  std::vector<std::string> head;  // the first bytes of the sub-buffer, at call time
  std::vector<rchan_buf*> bufs;
  std::vector<std::thread::id> threads;
  size_t head_len = kRec;
  size_t count() {
    std::lock_guard lk(mu);
    return idx.size();
  }
};

void record_call(rchan_buf* buf, unsigned idx, void* subbuf) {
  auto* calls = static_cast<Calls*>(buf->chan->private_data);
  std::lock_guard lk(calls->mu);
  calls->idx.push_back(idx);
  calls->head.emplace_back(static_cast<const char*>(subbuf), calls->head_len);
  calls->bufs.push_back(buf);
  calls->threads.push_back(std::this_thread::get_id());
}

int switch_unless_full(rchan_buf* buf, void*, void*, size_t) {
  return relay_buf_full(buf) ? 0 : 1;
}

int vprintf_record(rchan* c, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int vprintf_record(rchan* c, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const int n = relay_vprintf(c, fmt, ap);
  va_end(ap);
  return n;
}

}  // namespace

// ================================================================================================
// 1. Counters: extended attributes and relay_buf_stats
// ================================================================================================

TEST_CASE(
    "getfattr lists every counter; they match what was written and read; relay_buf_stats agrees") {
  Mount m;
  constexpr size_t kSub = 4096, kN = 8;
  constexpr int kRecords = 1000;
  constexpr size_t kRead = 5000;
  const size_t per = kSub / kRec;  // records per sub-buffer
  const size_t used = per * kRec;  // bytes of a closed sub-buffer, padding excluded
  rchan* c = open_global(m.dir, "xa", kSub, kN);
  const std::string all = write_records(c, 0, kRecords);
  const int fd = ::open(m.path("xa0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  CHECK(read_exactly(fd, kRead, kRead) == all.substr(0, kRead));

  const Attrs a = getfattr(m.path("xa0"));
  std::set<std::string> names;
  for (auto& [name, value] : a) names.insert(name);
  std::set<std::string> want;
  for (const char* n : kAttrNames) want.insert(std::string("user.relayfs.") + n);
  CHECK(names == want);

  CHECK(num(a, "subbuf_size") == kSub);
  CHECK(num(a, "n_subbufs") == kN);
  CHECK(text(a, "mode") == "no-overwrite");
  CHECK(text(a, "blocking") == "0");
  CHECK(text(a, "channel") == "xa");
  CHECK(text(getfattr(m.path("xa")), "channel") == "xa");  // the merged view
  CHECK(num(a, "bytes_produced") == all.size());
  CHECK(num(a, "bytes_consumed") == kRead);
  CHECK(num(a, "subbufs_produced") ==
        (kRecords - 1) / per);  // a switch per record that did not fit
  CHECK(num(a, "subbufs_consumed") == kRead / used);
  CHECK(num(a, "bytes_unread") == all.size() - kRead);
  for (const char* zero :
       {"lost_full", "lost_too_big", "lost_wrap", "overruns", "lost_uncommitted",
        "lost_overrun_bytes", "lost_reset_bytes", "lost_readahead_bytes", "lost_expired_bytes",
        "corrupt"}) {
    CAPTURE(zero);
    CHECK(num(a, zero) == 0);
  }
  check_same(stats_of(c), a);
  CHECK(file_size(m.path("xa0")) == static_cast<off_t>(all.size()));

  // The merged view's counters are the sum over its buffers: here, the one buffer.
  const Attrs merged = getfattr(m.path("xa"));
  CHECK(num(merged, "bytes_produced") == all.size());
  CHECK(num(merged, "bytes_consumed") == kRead);
  CHECK(text(merged, "mode") == "no-overwrite");

  // Reading on moves the consumer-side counters, on both sides.
  CHECK(read_exactly(fd, all.size() - kRead, 4096) == all.substr(kRead));
  const Attrs after = getfattr(m.path("xa0"));
  CHECK(num(after, "bytes_consumed") == all.size());
  CHECK(num(after, "subbufs_consumed") == (kRecords - 1) / per);
  check_same(stats_of(c), after);
  ::close(fd);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("relay_open allocates and maps every page: the first lap's writes take no page fault") {
  // As the kernel's relay_open allocates a channel's buffers whole. A fault costs a producer a
  // few microseconds (one a page, 2048 a lap of an 8 MiB buffer, the first time round), and the
  // first lap would pay them inside relay_write.
  Mount m;
  constexpr size_t kSubbuf = 64 << 10, kSubbufs = 8;
  rchan* c = relay_open("pop", m.dir.c_str(), kSubbuf, kSubbufs, nullptr, nullptr);
  REQUIRE(c != nullptr);
  // A thread of its own, pinned to CPU 0, writes seven of the eight sub-buffers of that CPU's
  // buffer: 112 pages, each written for the first time.
  bool pinned = false;
  int failed = 0;
  long faults = -1;
  std::thread([&] {
    if (!(pinned = pin_to(0))) return;
    const std::string rec(1024, 'p');
    rusage before{}, after{};
    if (::getrusage(RUSAGE_THREAD, &before) != 0) return;
    for (size_t i = 0; i < 7 * kSubbuf / rec.size(); ++i)
      failed += relay_write(c, rec.data(), rec.size()) != 0;
    if (::getrusage(RUSAGE_THREAD, &after) == 0) faults = after.ru_minflt - before.ru_minflt;
  }).join();
  REQUIRE(pinned);
  CHECK(failed == 0);
  // Without the population every page written faults once (112 here; consumer_test's case for
  // Buffer::populate shows both). Not counted under a sanitizer, whose shadow memory faults on
  // those writes itself (15 under ASan).
  CHECK(faults >= 0);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  CHECK(faults < 8);
#endif
  CHECK(relay_close(c) == 0);
}

namespace {

// While set, this program's madvise refuses MADV_POPULATE_WRITE with ENOMEM, as the kernel does
// when it cannot allocate the pages. No real limit reaches that answer here: a memory cgroup's
// limit OOM-kills the process instead (doc/performance.md). The library's madvise call binds to
// the definition below, which the executable exports because librelayfs refers to the symbol.
std::atomic<bool> refuse_populate{false};

// A process's descriptors and its relayfs memfd mappings: what a failed relay_open must not leave.
struct Held {
  size_t fds = 0, maps = 0;
};
Held held_now() {
  Held h;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* e = ::readdir(d)) h.fds += e->d_name[0] != '.';
    ::closedir(d);
  }
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) h.maps += line.find("/memfd:") != line.npos;
  return h;
}

}  // namespace

extern "C" int madvise(void* addr, size_t len, int advice) noexcept {
  // Relaxed: the test sets and clears the flag on the thread that calls relay_open.
  if (advice == MADV_POPULATE_WRITE && refuse_populate.load(std::memory_order_relaxed)) {
    errno = ENOMEM;
    return -1;
  }
  return static_cast<int>(::syscall(SYS_madvise, addr, len, advice));
}

TEST_CASE("relay_open whose buffers cannot be allocated fails with ENOMEM, and leaves nothing") {
  // As the kernel's relay_open fails when it cannot allocate a buffer: the error is the open's,
  // never a later write's.
  Mount m;
  const Held before = held_now();
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0440>;
  refuse_populate.store(true, std::memory_order_relaxed);
  errno = 0;
  rchan* c = relay_open("nomem", m.dir.c_str(), 4096, 4, &cb, nullptr);
  const int err = errno;
  refuse_populate.store(false, std::memory_order_relaxed);
  CHECK_MESSAGE(c == nullptr, "relay_open succeeded although its buffer was not allocated");
  CHECK_MESSAGE(err == ENOMEM, "relay_open failed with " << std::strerror(err) << ", not ENOMEM");
  if (c) relay_close(c);
  // Nothing kept by the producer: no descriptor, no mapping of the buffer.
  const Held after = held_now();
  CHECK(after.fds == before.fds);
  CHECK(after.maps == before.maps);
  // The daemon made the channel before the producer failed to take it: the connection's end
  // finalizes it, and, empty, it goes. The same name then opens and carries records.
  CHECK(wait_for([&] { return !exists(m.path("nomem0")); }));
  rchan* again = open_global(m.dir, "nomem");
  const std::string want = write_records(again, 0, 3);
  CHECK(slurp(m.path("nomem0")) == want);
  CHECK(relay_close(again) == 0);
}

TEST_CASE("lost_full and lost_too_big count exactly the records relay_write refused") {
  Mount m;
  rchan* c = open_global(m.dir, "lf", 64, 2);  // 2 sub-buffers of 5 records
  int enospc = 0, written = 0;
  for (int i = 0; i < 17; ++i) {
    const std::string r = record(i);
    errno = 0;
    if (relay_write(c, r.data(), r.size()) == 0) {
      ++written;
    } else {
      CHECK(errno == ENOSPC);
      ++enospc;
    }
  }
  CHECK(written == 10);
  const std::string big(65, 'x');
  errno = 0;
  CHECK(relay_write(c, big.data(), big.size()) == -1);
  CHECK(errno == EMSGSIZE);

  const Attrs a = getfattr(m.path("lf0"));
  CHECK(num(a, "lost_full") == static_cast<unsigned long long>(enospc));
  CHECK(num(a, "lost_too_big") == 1);
  CHECK(num(a, "lost_wrap") == 0);
  CHECK(num(a, "bytes_produced") == 10 * kRec);
  CHECK(num(a, "subbufs_produced") == 2);
  check_same(stats_of(c), a);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("overruns count what a lapped reader of an overwrite channel missed") {
  Mount m;
  const relay_options o{RELAY_OVERWRITE, 0, nullptr};
  rchan* c = open_global(m.dir, "ow", 64, 4, {}, &o);  // 4 sub-buffers of 5 records
  constexpr int kRecords = 100;
  std::string all;
  for (int i = 0; i < kRecords; ++i) {
    const std::string r = record(i);
    REQUIRE(relay_write(c, r.data(), r.size()) == 0);
    all += r;
  }
  // Nothing read yet: the file's size and bytes_produced count every byte written, including
  // the sub-buffer being written, however far the writer lapped the reader.
  const Attrs before = getfattr(m.path("ow0"));
  CHECK(text(before, "mode") == "overwrite");
  CHECK(stats_of(c).bytes_produced == all.size());
  CHECK(num(before, "bytes_produced") == all.size());
  CHECK(file_size(m.path("ow0")) == static_cast<off_t>(all.size()));

  const std::string got = slurp(m.path("ow0"));
  // Whole records, consecutive, ending with the last one written.
  REQUIRE(!got.empty());
  REQUIRE(got.size() % kRec == 0);
  CHECK(all.find(got) != std::string::npos);
  CHECK(got.substr(got.size() - kRec) == record(kRecords - 1));
  const Attrs a = getfattr(m.path("ow0"));
  CHECK(num(a, "overruns") > 0);
  // Sub-buffers of 5 records: what was skipped, in sub-buffers, is what overruns says.
  CHECK(num(a, "overruns") == (all.size() - got.size()) / (5 * kRec));
  CHECK(num(a, "lost_full") == 0);
  CHECK(num(a, "bytes_consumed") == got.size());
  check_same(stats_of(c), a);
  CHECK(relay_close(c) == 0);
}

TEST_CASE(
    "the mode attribute says overwrite, no-overwrite or subbuf_start, and blocking says 0 or 1") {
  Mount m;
  struct Case {
    const char* base;
    bool hook;
    unsigned flags;
    const char* mode;
    const char* blocking;
  };
  const Case cases[] = {
      {"plain", false, 0, "no-overwrite", "0"},
      {"flag", false, RELAY_OVERWRITE, "overwrite", "0"},
      {"hook", true, 0, "subbuf_start", "0"},
      {"both", true, RELAY_OVERWRITE, "overwrite", "0"},
      {"blk", false, RELAY_BLOCKING, "no-overwrite", "1"},
  };
  for (const Case& k : cases) {
    CAPTURE(k.base);
    rchan_callbacks cb{};
    if (k.hook) cb.subbuf_start = &switch_unless_full;
    const relay_options o{k.flags, 1000, nullptr};
    rchan* c = open_global(m.dir, k.base, 4096, 4, cb, &o);
    for (const std::string& f : {std::string(k.base) + "0", std::string(k.base)}) {
      CAPTURE(f);
      const Attrs a = getfattr(m.path(f));
      CHECK(text(a, "mode") == k.mode);
      CHECK(text(a, "blocking") == k.blocking);
    }
    CHECK(relay_close(c) == 0);
  }
}

TEST_CASE("getxattr of an unknown relayfs attribute gives ENODATA") {
  Mount m;
  rchan* c = open_global(m.dir, "ux", 4096, 4);
  write_records(c, 0, 3);
  char buf[64];
  for (const char* name : {"user.relayfs.x", "user.relayfs.", "user.relayfs.modex",
                           "user.relayfs.control", "user.other"}) {
    CAPTURE(name);
    errno = 0;
    CHECK(::getxattr(m.path("ux0").c_str(), name, buf, sizeof buf) == -1);
    CHECK(errno == ENODATA);
    errno = 0;
    CHECK(::getxattr(m.path("ux").c_str(), name, buf, sizeof buf) == -1);
    CHECK(errno == ENODATA);
  }
  // A known one, for contrast, with the size query first.
  const ssize_t n = ::getxattr(m.path("ux0").c_str(), "user.relayfs.bytes_produced", nullptr, 0);
  REQUIRE(n > 0);
  REQUIRE(::getxattr(m.path("ux0").c_str(), "user.relayfs.bytes_produced", buf, sizeof buf) == n);
  CHECK(std::string(buf, static_cast<size_t>(n)) == std::to_string(3 * kRec));
  CHECK(relay_close(c) == 0);
}

// ================================================================================================
// 2. relay_open_opts
// ================================================================================================

TEST_CASE("relay_open_opts refuses unknown flags and overwrite with blocking") {
  Mount m;
  for (unsigned flags : {0x8u, 0x80000000u, RELAY_OVERWRITE | RELAY_BLOCKING,
                         RELAY_OVERWRITE | RELAY_BLOCKING | 0x10u}) {
    CAPTURE(flags);
    const relay_options o{flags, 100, nullptr};
    errno = 0;
    CHECK(relay_open_opts("bad", m.dir.c_str(), 4096, 4, nullptr, nullptr, &o) == nullptr);
    CHECK(errno == EINVAL);
    CHECK_FALSE(exists(m.path("bad0")));
    CHECK_FALSE(exists(m.path("bad")));
  }
  // No options, or no flags: relay_open.
  rchan* c = relay_open_opts("none", m.dir.c_str(), 4096, 4, nullptr, nullptr, nullptr);
  REQUIRE(c != nullptr);
  CHECK(text(getfattr(m.path("none0")), "mode") == "no-overwrite");
  CHECK(relay_close(c) == 0);
  const relay_options zero{0, 0, nullptr};
  c = relay_open_opts("zero", m.dir.c_str(), 4096, 4, nullptr, nullptr, &zero);
  REQUIRE(c != nullptr);
  CHECK(text(getfattr(m.path("zero0")), "blocking") == "0");
  CHECK(relay_close(c) == 0);
}

TEST_CASE("RELAY_OVERWRITE without a subbuf_start callback never fails a write") {
  Mount m;
  const relay_options o{RELAY_OVERWRITE, 0, nullptr};
  SUBCASE("global") {
    rchan* c = open_global(m.dir, "og", 64, 4, {}, &o);
    int failed = 0;
    for (int i = 0; i < 10000; ++i) {
      const std::string r = record(i);
      failed += relay_write(c, r.data(), r.size()) != 0;
    }
    CHECK(failed == 0);
    const relay_stats st = stats_of(c);
    CHECK(st.lost_full == 0);
    CHECK(st.lost_wrap == 0);
    CHECK(st.bytes_produced == 10000 * kRec);
    CHECK(relay_close(c) == 0);
  }
  SUBCASE("per-CPU, with a small sub-buffer") {
    rchan* c = relay_open_opts("op", m.dir.c_str(), 16, 2, nullptr, nullptr, &o);
    REQUIRE(c != nullptr);
    int failed = 0;
    for (int i = 0; i < 5000; ++i) {
      const std::string r = record(i);
      failed += relay_write(c, r.data(), r.size()) != 0;
    }
    CHECK(failed == 0);
    unsigned long long lost = 0;
    for (unsigned i = 0; i < c->n_buffers; ++i) lost += stats_of(c, i).lost_full;
    CHECK(lost == 0);
    CHECK(relay_close(c) == 0);
  }
}

TEST_CASE("RELAY_BLOCKING with a slow reader loses nothing over a stream many times the buffer") {
  Mount m;
  int timeout_ms = -1;
  SUBCASE("no time limit") {
    timeout_ms = -1;
  }
  SUBCASE("a generous time limit") {
    timeout_ms = 30000;
  }
  CAPTURE(timeout_ms);
  const relay_options o{RELAY_BLOCKING, timeout_ms, nullptr};
  rchan* c = open_global(m.dir, "bl", 1024, 4, {}, &o);  // 4 KiB of buffer
  constexpr int kRecords = 20000;                        // 220000 bytes: 53 buffers' worth
  constexpr size_t kTotal = kRecords * kRec;
  std::string got;
  int read_error = 0;
  std::thread reader([&] {
    const int fd = ::open(m.path("bl0").c_str(), O_RDONLY);
    if (fd < 0) {
      read_error = errno;
      return;
    }
    char buf[100];
    const auto until = Clock::now() + 120s;
    while (got.size() < kTotal && Clock::now() < until) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0) {
        read_error = errno;
        break;
      }
      got.append(buf, static_cast<size_t>(n));
      std::this_thread::sleep_for(200us);  // slow: the writer fills the buffer and must wait
    }
    ::close(fd);
  });
  std::string all;
  int failed = 0, first_errno = 0;
  for (int i = 0; i < kRecords; ++i) {
    const std::string r = record(i);
    if (relay_write(c, r.data(), r.size()) != 0) {
      if (!failed++) first_errno = errno;
    } else {
      all += r;
    }
  }
  reader.join();
  CHECK(read_error == 0);
  CHECK(failed == 0);
  CHECK(first_errno == 0);
  CHECK(got.size() == kTotal);
  CHECK(got == all);
  const Attrs a = getfattr(m.path("bl0"));
  CHECK(num(a, "lost_full") == 0);
  CHECK(num(a, "bytes_produced") == kTotal);
  CHECK(num(a, "bytes_consumed") == kTotal);
  CHECK(stats_of(c).lost_full == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("RELAY_BLOCKING without a reader: the write that finds the buffer full times out") {
  Mount m;
  const relay_options o{RELAY_BLOCKING, 50, nullptr};
  rchan* c = open_global(m.dir, "bt", 64, 2, {}, &o);  // 2 sub-buffers of 5 records
  const std::string want = write_records(c, 0, 10);
  const std::string r = record(10);
  const auto t0 = Clock::now();
  errno = 0;
  CHECK(relay_write(c, r.data(), r.size()) == -1);
  CHECK(errno == ETIMEDOUT);
  // Only a lower bound: it must have waited for its time limit before giving up.
  CHECK(Clock::now() - t0 >= 50ms);
  CHECK(stats_of(c).lost_full == 1);
  CHECK(num(getfattr(m.path("bt0")), "lost_full") == 1);
  // A record too big for any sub-buffer does not wait: dropped at once.
  const std::string big(65, 'x');
  errno = 0;
  CHECK(relay_write(c, big.data(), big.size()) == -1);
  CHECK(errno == EMSGSIZE);
  // A reader makes room: the next write succeeds, and nothing more is counted lost.
  CHECK(slurp(m.path("bt0")) == want);
  CHECK(relay_write(c, r.data(), r.size()) == 0);
  const Attrs a = getfattr(m.path("bt0"));
  CHECK(num(a, "lost_full") == 1);
  CHECK(num(a, "lost_too_big") == 1);
  check_same(stats_of(c), a);
  CHECK(slurp(m.path("bt0")) == r);
  CHECK(relay_close(c) == 0);
}

// ================================================================================================
// 3. deliver and buf_full
// ================================================================================================

TEST_CASE("deliver fires once per completed sub-buffer, with its index and contents") {
  Mount m;
  Calls calls;
  rchan_callbacks cb{};
  cb.deliver = &record_call;
  const relay_options o{RELAY_OVERWRITE, 0, nullptr};
  rchan* c = open_global(m.dir, "dv", 64, 4, cb, &o, &calls);  // 5 records per sub-buffer
  CHECK(calls.count() == 0);
  write_records(c, 0, 5);
  CHECK(calls.count() == 0);  // sub-buffer 0 is full of records but still open
  write_records(c, 5, 6);     // the switch closes it: complete
  CHECK(calls.count() == 1);
  write_records(c, 6, 1000);
  const relay_stats st = stats_of(c);
  REQUIRE(calls.count() == st.subbufs_produced);
  CHECK(st.subbufs_produced == 999 / 5);
  for (size_t k = 0; k < calls.idx.size(); ++k) {
    CAPTURE(k);
    CHECK(calls.idx[k] == k % 4);
    CHECK(calls.head[k] == record(static_cast<int>(5 * k)));
    CHECK(calls.bufs[k] == c->buf[0]);
    CHECK(calls.threads[k] == std::this_thread::get_id());  // in the writing thread
  }
  // relay_flush completes the current one too.
  REQUIRE(relay_flush(c) == 0);
  CHECK(calls.count() == st.subbufs_produced + 1);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("with relay_reserve/relay_commit out of order, deliver waits for the last commit") {
  Mount m;
  Calls calls;
  rchan_callbacks cb{};
  cb.deliver = &record_call;
  rchan* c = open_global(m.dir, "rc", 64, 4, cb, nullptr, &calls);
  calls.head_len = 20;
  char* slot[4];
  for (int i = 0; i < 4; ++i) {
    slot[i] = static_cast<char*>(relay_reserve(c, 20));
    REQUIRE(slot[i] != nullptr);
    std::memset(slot[i], 'a' + i, 20);
  }
  // Three slots in sub-buffer 0 (60 bytes); the fourth did not fit and closed it.
  CHECK(slot[1] == slot[0] + 20);
  CHECK(slot[2] == slot[0] + 40);
  CHECK(stats_of(c).subbufs_produced == 1);
  CHECK(calls.count() == 0);
  relay_commit(c, slot[2], 20);
  CHECK(calls.count() == 0);
  relay_commit(c, slot[0], 20);
  CHECK(calls.count() == 0);
  relay_commit(c, slot[3], 20);  // sub-buffer 1 is still open: not complete
  CHECK(calls.count() == 0);
  relay_commit(c, slot[1], 20);  // the last commit of sub-buffer 0
  REQUIRE(calls.count() == 1);
  CHECK(calls.idx[0] == 0);
  CHECK(calls.head[0] == std::string(20, 'a'));
  REQUIRE(relay_flush(c) == 0);
  REQUIRE(calls.count() == 2);
  CHECK(calls.idx[1] == 1);
  CHECK(calls.head[1] == std::string(20, 'd'));
  CHECK(slurp(m.path("rc0")) ==
        std::string(20, 'a') + std::string(20, 'b') + std::string(20, 'c') + std::string(20, 'd'));
  CHECK(relay_close(c) == 0);
}

TEST_CASE(
    "buf_full fires once each time a no-overwrite buffer fills, and never in overwrite mode") {
  Mount m;
  Calls calls;
  rchan_callbacks cb{};
  cb.buf_full = &record_call;
  rchan* c = open_global(m.dir, "bf", 64, 2, cb, nullptr, &calls);  // 2 sub-buffers of 5 records
  std::string want = write_records(c, 0, 10);
  CHECK(calls.count() == 0);
  std::string r = record(10);
  CHECK(relay_write(c, r.data(), r.size()) == -1);
  REQUIRE(calls.count() == 1);
  CHECK(calls.idx[0] == 1);  // the sub-buffer that was being closed
  CHECK(calls.head[0] == record(5));
  CHECK(calls.bufs[0] == c->buf[0]);
  for (int i = 0; i < 5; ++i) CHECK(relay_write(c, r.data(), r.size()) == -1);
  CHECK(calls.count() == 1);  // still the same fill
  // Read everything: room again; filling it again is a second call.
  CHECK(slurp(m.path("bf0")) == want);
  want = write_records(c, 20, 30);
  CHECK(calls.count() == 1);
  r = record(30);
  CHECK(relay_write(c, r.data(), r.size()) == -1);
  REQUIRE(calls.count() == 2);
  CHECK(calls.idx[1] == 1);
  CHECK(calls.head[1] == record(25));
  CHECK(relay_close(c) == 0);

  Calls over;
  const relay_options o{RELAY_OVERWRITE, 0, nullptr};
  c = open_global(m.dir, "bo", 64, 2, cb, &o, &over);
  write_records(c, 0, 100);
  CHECK(over.count() == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE(
    "in overwrite mode, concurrent writers that lap each other never see buf_full or lost_full") {
  Mount m;
  Calls calls;
  rchan_callbacks cb{};
  cb.buf_full = &record_call;
  const relay_options o{RELAY_OVERWRITE, 0, nullptr};
  rchan* c = open_global(m.dir, "cw", 64, 2, cb, &o, &calls);  // tiny: writers lap each other
  constexpr int kWriters = 2, kPer = 200000;
  std::atomic<long> failed{0}, other_errno{0};
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w)
    writers.emplace_back([&, w] {
      if (!pin_to(static_cast<unsigned>(w) % ncpus())) return;
      for (int i = 0; i < kPer; ++i) {
        const std::string r = record(i);
        if (relay_write(c, r.data(), r.size()) != 0) {
          ++failed;
          if (errno != ENOSPC) ++other_errno;
        }
      }
    });
  for (auto& t : writers) t.join();
  const relay_stats st = stats_of(c);
  MESSAGE("failed writes: " << failed.load() << ", lost_wrap " << st.lost_wrap);
  CHECK(other_errno == 0);
  // A write can only fail here because the next sub-buffer was still being written on its last
  // lap (lost_wrap): an overwrite buffer is never full.
  CHECK(st.lost_full == 0);
  CHECK(st.lost_wrap == static_cast<unsigned long long>(failed.load()));
  CHECK(calls.count() == 0);
  CHECK(relay_close(c) == 0);
}

// ================================================================================================
// 4. relay_printf
// ================================================================================================

TEST_CASE("relay_printf writes one formatted record and returns its length") {
  Mount m;
  rchan* c = open_global(m.dir, "pf", 4096, 4);
  std::string want;
  CHECK(relay_printf(c, "x=%d %s\n", 42, "abc") == 9);
  want += "x=42 abc\n";
  CHECK(vprintf_record(c, "%05u|%c\n", 7u, 'z') == 8);
  want += "00007|z\n";
  // Around the library's 256-byte stack buffer, and well past it.
  for (size_t len : {254, 255, 256, 257, 300, 1000, 4096}) {
    CAPTURE(len);
    std::string s(len - 1, static_cast<char>('a' + len % 26));
    s += '\n';
    CHECK(relay_printf(c, "%s", s.c_str()) == static_cast<int>(len));
    want += s;
  }
  CHECK(relay_printf(c, "%s", "") == 0);  // an empty text writes nothing
  const unsigned long long before = stats_of(c).bytes_produced;
  CHECK(before == want.size());
  // Too long for a sub-buffer: refused and counted, nothing written.
  const std::string big(4097, 'q');
  errno = 0;
  CHECK(relay_printf(c, "%s", big.c_str()) == -1);
  CHECK(errno == EMSGSIZE);
  errno = 0;
  CHECK(relay_printf(c, "%s!", std::string(4096, 'q').c_str()) == -1);
  CHECK(errno == EMSGSIZE);
  const relay_stats st = stats_of(c);
  CHECK(st.lost_too_big == 2);
  CHECK(st.bytes_produced == before);
  // Each record was written whole: the stream is exactly the texts.
  CHECK(slurp(m.path("pf0")) == want);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("relay_printf into a full no-overwrite buffer returns -1 with ENOSPC") {
  Mount m;
  rchan* c = open_global(m.dir, "pn", 64, 2);
  int ok = 0;
  for (int i = 0; i < 10; ++i) ok += relay_printf(c, "rec %06d\n", i) == static_cast<int>(kRec);
  CHECK(ok == 10);
  errno = 0;
  CHECK(relay_printf(c, "rec %06d\n", 10) == -1);
  CHECK(errno == ENOSPC);
  CHECK(stats_of(c).lost_full == 1);
  CHECK(relay_close(c) == 0);
}
