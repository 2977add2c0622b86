// The relay spec's harder promises about the data, through a real mount and the producer
// library: overwrite ("flight recorder") mode read while it is written, and concurrent writers on
// every CPU in no-overwrite mode, checked record by record. (Readers blocked in read or poll while
// the channel is flushed, reset and closed: wakeup_test.cc.)
// Every test mounts its own tree and takes it down, even when it fails. No assertion depends on
// timing: sleeps only give a thread the chance to block, and every wait has a deadline after
// which the test fails (and kills the daemon, so no reader stays stuck).
#include <doctest/doctest.h>
#include <pthread.h>
#include <relayfs/relay.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <random>

#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

namespace {

// ---- Self-checking records ----------------------------------------------------------------------
// [u32 length][u32 writer id][u64 sequence][payload, 8..200 bytes][u32 checksum][u8 0xff]. The
// payload's length and bytes are functions of (id, sequence), and the checksum (FNV-1a) covers
// what precedes it, so a record is whole only if every byte is the one its writer wrote.
// The final 0xff matters for cut records (see Stream): a record that lost its last k bytes and is
// followed by the next record's first k bytes must not pass for whole. Without it, one cut in 256
// that is short by one byte would (the next record's first byte would stand for the checksum's
// last). The first 8 bytes of a record are never 0xff (lengths up to 221, writer ids), so such a
// record fails on its last byte.
constexpr size_t kHead = 16;
constexpr size_t kTail = 5;
constexpr unsigned char kEnd = 0xff;
constexpr size_t kMinPayload = 8;
constexpr size_t kMaxPayload = 200;
constexpr size_t kMinRec = kHead + kMinPayload + kTail;  // 29
constexpr size_t kMaxRec = kHead + kMaxPayload + kTail;  // 221

uint64_t mix(uint64_t x) {  // splitmix64's finalizer
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t rec_key(uint32_t id, uint64_t seq) { return mix((uint64_t{id} << 48) ^ seq); }

size_t rec_len(uint32_t id, uint64_t seq) {
  return kHead + kMinPayload + rec_key(id, seq) % (kMaxPayload - kMinPayload + 1) + kTail;
}

unsigned char payload_byte(uint64_t key, size_t i) {
  return static_cast<unsigned char>((key >> ((i & 7) * 8)) + i * 13);
}

uint32_t fnv1a(const unsigned char* p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 16777619u;
  return h;
}

// Builds record (id, seq) at out (room for kMaxRec bytes); returns its length.
size_t make_record(uint32_t id, uint64_t seq, unsigned char* out) {
  const size_t len = rec_len(id, seq);
  const auto len32 = static_cast<uint32_t>(len);
  std::memcpy(out, &len32, 4);
  std::memcpy(out + 4, &id, 4);
  std::memcpy(out + 8, &seq, 8);
  const uint64_t key = rec_key(id, seq);
  for (size_t i = 0; i < len - kHead - kTail; ++i) out[kHead + i] = payload_byte(key, i);
  const uint32_t sum = fnv1a(out, len - kTail);
  std::memcpy(out + len - kTail, &sum, 4);
  out[len - 1] = kEnd;
  return len;
}

enum class Check { kWhole, kNeedMore, kBad };
struct RecHead {
  uint32_t len = 0, id = 0;
  uint64_t seq = 0;
};

// Checks the avail bytes at p as the beginning of a record of one of n_writers: kBad as soon as
// a byte is wrong, kNeedMore if every byte so far is right but the record is not complete.
Check check_record(const unsigned char* p, size_t avail, uint32_t n_writers, RecHead* h) {
  if (avail < 4) return Check::kNeedMore;
  std::memcpy(&h->len, p, 4);
  if (h->len < kMinRec || h->len > kMaxRec) return Check::kBad;
  if (avail < 8) return Check::kNeedMore;
  std::memcpy(&h->id, p + 4, 4);
  if (h->id >= n_writers) return Check::kBad;
  if (avail < kHead) return Check::kNeedMore;
  std::memcpy(&h->seq, p + 8, 8);
  if (rec_len(h->id, h->seq) != h->len) return Check::kBad;
  const uint64_t key = rec_key(h->id, h->seq);
  const size_t payload_end = std::min<size_t>(avail, h->len - kTail);
  for (size_t i = kHead; i < payload_end; ++i)
    if (p[i] != payload_byte(key, i - kHead)) return Check::kBad;
  if (avail < h->len) return Check::kNeedMore;
  if (p[h->len - 1] != kEnd) return Check::kBad;
  uint32_t sum;
  std::memcpy(&sum, p + h->len - kTail, 4);
  return sum == fnv1a(p, h->len - kTail) ? Check::kWhole : Check::kBad;
}

// Reassembles what a reader got, read by read, and parses it into records.
//
// In overwrite mode a lapped reader resumes at the start of a newer sub-buffer (relay(7)), which
// is a record boundary; but the previous read may have ended inside a record, whose end was then
// overwritten: that record is cut, and only its beginning was returned. Such a jump can only
// land where a read began: within one read, the consumer copies spans that end at a sub-buffer's
// padding or at its committed prefix, both record boundaries, and a copy the writer raced is
// dropped, so the read then begins at the jump. A cut is therefore recognised as a record that
// fails its checks, whose bytes up to a later read start are a consistent beginning of a record,
// where a whole record (or another cut) begins. Anything else that fails is torn: a bug. Reads
// that take everything readable must end on record boundaries and parse alone (feed_whole).
struct Stream {
  Stream(uint32_t n_writers, bool may_jump, bool collect = false)
      : writers(n_writers), may_jump(may_jump), collect(collect), last(n_writers, -1),
        seen(n_writers) {}

  void feed(const char* p, size_t n) {
    ++reads;
    bytes += n;
    if (pos < buf.size() || mode != Mode::kInSync) starts.push_back(buf.size());
    buf.append(p, n);
    parse();
    compact();
  }

  // Every byte of a read must belong to whole records: for reads that took all there was.
  void feed_whole(const char* p, size_t n) {
    feed(p, n);
    if (mode != Mode::kInSync || pos != buf.size()) {
      ++unaligned_reads;
      buf.clear();
      starts.clear();
      pos = sync_from = 0;
      mode = Mode::kInSync;
    }
  }

  // The stream ended: bytes left over are part of a torn record (counted once).
  void finish() {
    if (mode == Mode::kInSync && pos != buf.size()) ++torn;
  }

  const uint32_t writers;
  const bool may_jump;
  const bool collect;
  uint64_t whole = 0, cut = 0, torn = 0, out_of_order = 0, reads = 0, bytes = 0;
  uint64_t unaligned_reads = 0, skipped = 0;
  std::vector<int64_t> last;                // per writer: the last sequence seen
  std::vector<std::vector<uint64_t>> seen;  // per writer, if collect: every sequence seen

 private:
  enum class Mode { kInSync, kLost };

  const unsigned char* at(size_t i) const {
    return reinterpret_cast<const unsigned char*>(buf.data()) + i;
  }

  void accept(const RecHead& h) {
    ++whole;
    if (static_cast<int64_t>(h.seq) <= last[h.id]) ++out_of_order;
    last[h.id] = static_cast<int64_t>(h.seq);
    if (collect) seen[h.id].push_back(h.seq);
  }

  enum class Found { kYes, kNeedMore, kNo };

  // The record at x failed its checks. Finds the chain of cut records that explains it: each a
  // consistent beginning of a record that ends where a read began, the last followed by a whole
  // record at a read start, *to. A read can be shorter than a record, so the writer may lap the
  // reader again before the record it resumed at was returned whole: hence a chain.
  Found resolve_cut(size_t x, unsigned depth, size_t* to, uint64_t* cuts) const {
    if (depth > 64) return Found::kNo;
    RecHead h;
    for (const size_t s : starts) {
      if (s <= x) continue;
      if (s - x >= kMaxRec) return Found::kNo;
      if (check_record(at(x), s - x, writers, &h) != Check::kNeedMore)
        return Found::kNo;  // not a beginning of a record up to s, nor up to any later start
      const Check c = check_record(at(s), buf.size() - s, writers, &h);
      if (c == Check::kNeedMore) return Found::kNeedMore;
      if (c == Check::kWhole) {
        *to = s;
        *cuts = 1;
        return Found::kYes;
      }
      const Found f = resolve_cut(s, depth + 1, to, cuts);
      if (f == Found::kYes) ++*cuts;
      if (f != Found::kNo) return f;
    }
    // No read start explains it yet: a later one still may, unless it would be too far.
    if (buf.size() - x >= kMaxRec || check_record(at(x), buf.size() - x, writers, &h) == Check::kBad)
      return Found::kNo;
    return Found::kNeedMore;
  }

  void parse() {
    for (;;) {
      RecHead h;
      if (mode == Mode::kInSync) {
        const Check c = check_record(at(pos), buf.size() - pos, writers, &h);
        if (c == Check::kNeedMore) return;
        if (c == Check::kWhole) {
          accept(h);
          pos += h.len;
          while (!starts.empty() && starts.front() <= pos) starts.pop_front();
          continue;
        }
        if (may_jump) {
          size_t to = 0;
          uint64_t cuts = 0;
          const Found f = resolve_cut(pos, 0, &to, &cuts);
          if (f == Found::kNeedMore) return;
          if (f == Found::kYes) {
            cut += cuts;
            skipped += to - pos;
            pos = to;
            continue;
          }
        }
        ++torn;
        sync_from = pos;
        mode = Mode::kLost;
        continue;
      }
      // Lost (torn data): count it once, and go on from the next read start where a whole record
      // begins, so that the rest of the stream is still checked.
      while (!starts.empty() && starts.front() <= sync_from) starts.pop_front();
      if (starts.empty()) return;
      const size_t s = starts.front();
      const Check c = check_record(at(s), buf.size() - s, writers, &h);
      if (c == Check::kNeedMore) return;
      if (c == Check::kBad) {
        starts.pop_front();
        continue;
      }
      skipped += s - sync_from;
      pos = s;
      mode = Mode::kInSync;
    }
  }

  void compact() {
    const size_t keep = mode == Mode::kInSync ? pos : sync_from;
    while (!starts.empty() && starts.front() <= keep) starts.pop_front();
    if (keep < (1 << 16)) return;
    buf.erase(0, keep);
    pos -= std::min(pos, keep);
    sync_from -= std::min(sync_from, keep);
    for (auto& s : starts) s -= keep;
  }

  std::string buf;
  size_t pos = 0;
  size_t sync_from = 0;
  std::deque<size_t> starts;
  Mode mode = Mode::kInSync;
};

// ---- Channels ------------------------------------------------------------------------------------

// Overwrite mode with no header: always switch.
int always_switch(rchan_buf*, void*, void*, size_t) { return 1; }

// A global channel in overwrite mode, as the spec sets it up: with always_switch.
rchan* open_overwrite(const std::string& dir, const char* base, size_t subbuf, size_t n) {
  rchan_callbacks cb{};
  cb.subbuf_start = &always_switch;
  return open_global(dir, base, subbuf, n, cb);
}

// The CPUs this process may run on.
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
  std::vector<int> cpus;
  for (int i = 0; i < CPU_SETSIZE; ++i)
    if (CPU_ISSET(i, &set)) cpus.push_back(i);
  return cpus;
}

}  // namespace

// ---- 0. The checker itself -----------------------------------------------------------------------

TEST_CASE("the test's record checker tells whole, cut and torn records apart") {
  // Records of two writers, interleaved: rec[i] is writer i % 2, sequence i / 2.
  std::vector<std::string> rec;
  for (uint64_t i = 0; i < 100; ++i) {
    unsigned char b[kMaxRec];
    const size_t n = make_record(static_cast<uint32_t>(i % 2), i / 2, b);
    rec.emplace_back(reinterpret_cast<char*>(b), n);
  }
  auto run = [&](std::initializer_list<std::string> reads, bool may_jump) {
    Stream st(2, may_jump);
    for (const std::string& r : reads) st.feed(r.data(), r.size());
    st.finish();
    return st;
  };
  auto span = [&](size_t from, size_t to) {
    std::string s;
    for (size_t i = from; i < to; ++i) s += rec[i];
    return s;
  };

  SUBCASE("whole records in reads of any size") {
    const std::string all = span(0, 100);
    Stream st(2, true);
    std::mt19937 rng(7);
    for (size_t at = 0; at < all.size();) {
      const size_t n = std::min(all.size() - at, std::uniform_int_distribution<size_t>(1, 300)(rng));
      st.feed(all.data() + at, n);
      at += n;
    }
    st.finish();
    CHECK(st.whole == 100);
    CHECK(st.torn == 0);
    CHECK(st.cut == 0);
    CHECK(st.out_of_order == 0);
  }
  SUBCASE("a read ends inside a record and the next resumes at a later record: a cut") {
    for (size_t keep : {size_t{1}, size_t{4}, size_t{17}, rec[10].size() - 1}) {
      CAPTURE(keep);
      const std::string head = span(0, 10) + rec[10].substr(0, keep);
      const Stream jump = run({head, span(20, 30)}, true);
      CHECK(jump.whole == 20);
      CHECK(jump.cut == 1);
      CHECK(jump.torn == 0);
      CHECK(jump.out_of_order == 0);
      CHECK(run({head, span(20, 30)}, false).torn == 1);  // where no jump may happen: torn
    }
  }
  SUBCASE("two jumps in a row, the record between them cut too") {
    const Stream st =
        run({span(0, 5) + rec[5].substr(0, 50), rec[10].substr(0, 3), span(20, 25)}, true);
    CHECK(st.whole == 10);
    CHECK(st.cut == 2);
    CHECK(st.torn == 0);
  }
  SUBCASE("bytes lost inside a read, or where a read resumes inside a record: torn") {
    std::string lost = span(0, 10);
    lost.erase(rec[0].size() + rec[1].size() + 20, 1);
    CHECK(run({lost}, true).torn == 1);
    CHECK(run({span(0, 3) + rec[3].substr(0, 30), rec[3].substr(31) + span(4, 8)}, true).torn == 1);
    std::string flipped = span(0, 10);
    flipped[rec[0].size() + 9] ^= 1;  // a sequence number
    CHECK(run({flipped}, true).torn == 1);
  }
  SUBCASE("a record seen twice, or out of order") {
    CHECK(run({span(0, 6) + rec[4] + span(6, 8)}, true).out_of_order == 1);
  }
  SUBCASE("a read that takes all there is must end on a record boundary") {
    Stream st(2, true);
    const std::string a = span(0, 3) + rec[3].substr(0, 10);
    st.feed_whole(a.data(), a.size());
    CHECK(st.unaligned_reads == 1);
    const std::string b = span(3, 6);
    st.feed_whole(b.data(), b.size());
    CHECK(st.unaligned_reads == 1);
    CHECK(st.whole == 6);
  }
}

// ---- 1. Overwrite mode, read while written --------------------------------------------------------

TEST_CASE("overwrite mode read while written: whole records only, in order per writer") {
  constexpr uint32_t kWriters = 2;
  constexpr size_t kSubbuf = 4096, kSubbufs = 4;
  constexpr auto kRun = std::chrono::milliseconds(1500);
  // Two ways to read. A read larger than the whole buffer that comes back short took everything
  // readable, so it must end on a record boundary and parse alone. It can also come back full:
  // like the kernel's, a read goes on into sub-buffers the writers fill while it copies, so one
  // 256 KiB read can chase them through many laps of a 16 KiB buffer and end inside a record.
  // Only after such a read may the next one begin past a cut record. Small reads of random sizes
  // end inside records; when the writer laps the reader between two of them, the record the
  // first one began is cut (relay(7): the reader resumes at the oldest intact sub-buffer), which
  // the parser recognises.
  bool big = false;
  SUBCASE("reads larger than the buffer") { big = true; }
  SUBCASE("reads of random sizes from 1 to 512 bytes") { big = false; }

  Mount m;
  rchan* c = open_overwrite(m.dir, "fr", kSubbuf, kSubbufs);
  const int fd = ::open(m.path("fr0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);

  std::atomic<bool> stop{false}, writers_done{false};
  std::vector<std::vector<uint8_t>> ok(kWriters);  // per writer, per sequence: relay_write said 0
  std::vector<std::map<int, uint64_t>> failures(kWriters);
  std::vector<std::thread> writers;
  for (uint32_t id = 0; id < kWriters; ++id)
    writers.emplace_back([&, id] {
      unsigned char rec[kMaxRec];
      auto& mine = ok[id];
      mine.reserve(1 << 22);
      for (uint64_t seq = 0; !stop.load(std::memory_order_relaxed); ++seq) {
        const size_t len = make_record(id, seq, rec);
        const bool written = relay_write(c, rec, len) == 0;
        if (!written) ++failures[id][errno];
        mine.push_back(written);
      }
    });

  Stream stream(kWriters, true, true);
  int read_errno = 0;
  uint64_t full_reads = 0;  // big reads that filled their whole buffer
  const unsigned seed = std::random_device{}();
  std::thread reader([&] {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<size_t> small(1, 512);
    constexpr size_t kBig = 256 << 10;  // 16 buffers' worth: a read takes all there is
    std::vector<char> b(kBig);
    for (;;) {
      const bool last_round = writers_done.load();
      const size_t want = big ? kBig : small(rng);
      const ssize_t n = ::read(fd, b.data(), want);
      if (n < 0) {
        read_errno = errno;
        break;
      }
      if (n == 0) {
        if (last_round) break;  // writers done and drained
        std::this_thread::yield();
        continue;
      }
      if (big && static_cast<size_t>(n) < want)
        stream.feed_whole(b.data(), static_cast<size_t>(n));
      else if (big) {
        ++full_reads;
        stream.feed(b.data(), static_cast<size_t>(n));
      } else
        stream.feed(b.data(), static_cast<size_t>(n));
    }
  });

  std::this_thread::sleep_for(kRun);
  stop = true;
  for (auto& t : writers) t.join();
  writers_done = true;
  reader.join();
  ::close(fd);
  stream.finish();
  relay_stats counters{};
  CHECK(relay_buf_stats(c->buf[0], &counters) == 0);
  CHECK(relay_close(c) == 0);

  uint64_t attempted = 0, written = 0, not_written_but_read = 0, failed_writes = 0;
  std::string failed;
  for (uint32_t id = 0; id < kWriters; ++id) {
    attempted += ok[id].size();
    written += static_cast<uint64_t>(std::count(ok[id].begin(), ok[id].end(), 1));
    for (auto [e, n] : failures[id]) {
      failed += std::string(failed.empty() ? " -" : ",") + " writer " + std::to_string(id) +
                ": " + std::to_string(n) + " (" + std::strerror(e) + ")";
      failed_writes += n;
    }
  }
  // relay(7): nothing is lost without a counter that says so. (Which counter: see the test case
  // "overwrite mode: a write refused ..." below.)
  CHECK(written + failed_writes == attempted);
  CHECK(counters.lost_wrap + counters.lost_full == failed_writes);
  // Every record read is one whose relay_write succeeded: a sequence the writer never attempted,
  // or one it was told was dropped, is a bug.
  for (uint32_t id = 0; id < kWriters; ++id)
    for (uint64_t s : stream.seen[id])
      if (s >= ok[id].size() || !ok[id][s]) ++not_written_but_read;
  const std::string how = big ? "reads larger than the buffer" : "small reads";
  MESSAGE("overwrite, " << how << " (seed " << seed << "): records attempted " << attempted
                        << ", written " << written << ", failed writes " << failed_writes << failed
                        << "; read " << stream.reads << " times (" << full_reads << " filled), "
                        << stream.bytes << " bytes: whole records " << stream.whole << ", torn "
                        << stream.torn << ", cut by an overrun " << stream.cut << " ("
                        << stream.skipped << " bytes), out of order " << stream.out_of_order
                        << ", reads not ending on a record " << stream.unaligned_reads
                        << ", overwritten (never read) " << (written - stream.whole)
                        << "; counters: lost_wrap " << counters.lost_wrap << ", lost_full "
                        << counters.lost_full << ", overruns " << counters.overruns);
  CHECK(read_errno == 0);
  CHECK(stream.torn == 0);
  CHECK(stream.out_of_order == 0);
  CHECK(stream.unaligned_reads == 0);
  CHECK(not_written_but_read == 0);
  CHECK(stream.whole > 0);
  CHECK(stream.whole < written);  // the writers lapped the reader: some records were overwritten
  // A record is cut only where a read ended inside it: in a big read, only a full one.
  if (big) CHECK(stream.cut <= full_reads);
}

namespace {
std::atomic<int> g_buf_full_calls{0};
}

// Regression: the producer classified such a refusal as lost_wrap only if relay_buf_full() was
// false, which a lagging or absent reader makes true in overwrite mode; so it counted lost_full
// and fired buf_full.
TEST_CASE("overwrite mode: a write refused because the next sub-buffer is still being committed "
          "counts as lost_wrap, not as a full buffer") {
  Mount m;
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global;
  cb.subbuf_start = &always_switch;
  cb.buf_full = [](rchan_buf*, unsigned, void*) { ++g_buf_full_calls; };
  g_buf_full_calls = 0;
  // The callback is the spec's overwrite one; the flag declares the mode from the start (see
  // relay.h: undeclared, the first lap could not tell a wrap from a full buffer).
  const relay_options opts{RELAY_OVERWRITE, 0, nullptr};
  rchan* c = relay_open_opts("wrap", m.dir.c_str(), 64, 4, &cb, nullptr, &opts);
  REQUIRE(c != nullptr);
  void* slot = relay_reserve(c, 11);  // in sub-buffer 0, committed only at the end
  REQUIRE(slot != nullptr);
  std::memcpy(slot, record(0).data(), 11);
  int failed = 0, other_errno = 0;
  for (int i = 1; i <= 40; ++i) {  // 5 records per sub-buffer: the writer comes back to slot 0
    const std::string r = record(i);
    if (relay_write(c, r.data(), r.size()) != 0) {
      ++failed;
      if (errno != ENOSPC) other_errno = errno;
    }
  }
  relay_stats st{};
  CHECK(relay_buf_stats(c->buf[0], &st) == 0);
  MESSAGE("overwrite, uncommitted record lapped: " << failed << " writes refused; lost_wrap "
                                                   << st.lost_wrap << ", lost_full "
                                                   << st.lost_full << ", buf_full callbacks "
                                                   << g_buf_full_calls.load());
  CHECK(failed > 0);
  CHECK(other_errno == 0);
  CHECK(st.lost_wrap + st.lost_full == static_cast<unsigned long long>(failed));
  CHECK(st.lost_wrap == static_cast<unsigned long long>(failed));  // relay(7): lost_wrap
  CHECK(st.lost_full == 0);            // an overwrite buffer is never full
  CHECK(g_buf_full_calls.load() == 0);  // so buf_full has nothing to report
  relay_commit(c, slot, 11);
  const std::string r = record(41);
  CHECK(relay_write(c, r.data(), r.size()) == 0);  // the slot is free again
  CHECK(relay_close(c) == 0);
}

// ---- 2. Overwrite mode: the newest data the buffer holds ------------------------------------------

TEST_CASE("overwrite mode: a reader that comes late gets the newest records the buffer holds") {
  constexpr size_t kSubbuf = 4096, kSubbufs = 4;
  constexpr size_t kPerSubbuf = kSubbuf / kRec;  // 372 records, 4 bytes of padding
  int total = 0;
  SUBCASE("20000 records") { total = 20000; }
  SUBCASE("5 buffers' worth plus 1") { total = static_cast<int>(5 * kSubbufs * kPerSubbuf) + 1; }
  SUBCASE("exactly 6 buffers' worth") { total = static_cast<int>(6 * kSubbufs * kPerSubbuf); }
  CAPTURE(total);
  Mount m;
  rchan* c = open_overwrite(m.dir, "late", kSubbuf, kSubbufs);
  write_records(c, 0, total);
  const std::string got = slurp(m.path("late0"));
  REQUIRE(got.size() >= kRec);
  REQUIRE(got.size() % kRec == 0);
  const int first = std::atoi(got.substr(4, 6).c_str());
  bool contiguous = true;
  for (size_t at = 0; at < got.size(); at += kRec)
    if (got.compare(at, kRec, record(first + static_cast<int>(at / kRec))) != 0) contiguous = false;
  CHECK(contiguous);
  CHECK(first > 0);
  CHECK(got.substr(got.size() - kRec) == record(total - 1));
  CHECK(got.size() <= kSubbufs * kSubbuf);
  CHECK(got.size() >= (kSubbufs - 1) * kSubbuf - kRec);
  // Exactly: the n-1 newest closed sub-buffers and the one being written, which holds at least
  // the last record (relay(7): the reader resumes at the oldest sub-buffer still intact).
  const size_t in_current = (static_cast<size_t>(total) - 1) % kPerSubbuf + 1;
  CHECK(got.size() / kRec == (kSubbufs - 1) * kPerSubbuf + in_current);
  MESSAGE("overwrite, no reader: " << total << " records written (" << total * kRec
                                   << " bytes), read back " << got.size() / kRec
                                   << " records (" << got.size() << " bytes) from record "
                                   << first << " to " << total - 1);
  CHECK(relay_close(c) == 0);
}

// ---- 3. No-overwrite mode, a writer on every CPU ---------------------------------------------------

TEST_CASE("no-overwrite global channel, a pinned writer on every CPU: nothing lost unannounced") {
  const std::vector<int> cpus = allowed_cpus();
  const auto writers = static_cast<uint32_t>(cpus.size());
  constexpr uint64_t kAttempts = 60000;  // per writer: ~7 MB each, into a 32 KiB buffer
  Mount m;
  rchan* c = open_global(m.dir, "cpu", 4096, 8);
  const int fd = ::open(m.path("cpu0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);

  std::vector<std::vector<uint8_t>> ok(writers);
  std::vector<uint64_t> enospc(writers), other_errors(writers), elsewhere(writers);
  std::vector<uint64_t> bytes_ok(writers);
  std::vector<int> pin_rc(writers, -1);
  std::atomic<unsigned> ready{0};
  std::atomic<bool> go{false}, closed{false};
  std::vector<std::thread> threads;
  for (uint32_t id = 0; id < writers; ++id)
    threads.emplace_back([&, id] {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpus[id], &set);
      pin_rc[id] = ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set);
      ++ready;
      while (!go.load()) std::this_thread::yield();
      unsigned char rec[kMaxRec];
      ok[id].reserve(kAttempts);
      for (uint64_t seq = 0; seq < kAttempts; ++seq) {
        if ((seq & 255) == 0 && ::sched_getcpu() != cpus[id]) ++elsewhere[id];
        const size_t len = make_record(id, seq, rec);
        const int rc = relay_write(c, rec, len);
        ok[id].push_back(rc == 0);
        if (rc == 0)
          bytes_ok[id] += len;
        else if (errno == ENOSPC)
          ++enospc[id];
        else
          ++other_errors[id];
      }
    });

  Stream stream(writers, false, true);
  int read_errno = 0;
  const unsigned seed = std::random_device{}();
  std::thread reader([&] {
    std::mt19937 rng(seed);
    std::uniform_int_distribution<size_t> size(1, 16384);
    std::vector<char> b(16384);
    for (;;) {
      const bool last_round = closed.load();
      const ssize_t n = ::read(fd, b.data(), size(rng));
      if (n < 0) {
        read_errno = errno;
        break;
      }
      if (n == 0) {
        if (last_round) break;  // closed and drained
        std::this_thread::yield();
        continue;
      }
      stream.feed(b.data(), static_cast<size_t>(n));
    }
  });

  while (ready.load() < writers) std::this_thread::yield();
  go = true;
  for (auto& t : threads) t.join();
  uint64_t attempted = 0, written = 0, failed = 0, bytes_written = 0;
  for (uint32_t id = 0; id < writers; ++id) {
    attempted += ok[id].size();
    written += static_cast<uint64_t>(std::count(ok[id].begin(), ok[id].end(), 1));
    failed += enospc[id] + other_errors[id];
    bytes_written += bytes_ok[id];
  }
  // st_size counts every byte produced: all of it committed by now.
  struct stat st {};
  CHECK(::fstat(fd, &st) == 0);  // no REQUIRE while the reader runs
  CHECK(static_cast<uint64_t>(st.st_size) == bytes_written);
  relay_stats counters{};
  CHECK(relay_buf_stats(c->buf[0], &counters) == 0);
  CHECK(counters.lost_full == failed);  // every refused write counted, and only those
  CHECK(counters.bytes_produced == bytes_written);
  CHECK(relay_close(c) == 0);
  closed = true;
  reader.join();
  ::close(fd);
  stream.finish();
  CHECK_FALSE(exists(m.path("cpu0")));  // closed and drained: gone

  uint64_t missing = 0, phantom = 0;
  for (uint32_t id = 0; id < writers; ++id) {
    CAPTURE(id);
    CHECK(pin_rc[id] == 0);
    CHECK(elsewhere[id] == 0);
    CHECK(other_errors[id] == 0);
    // Read once each, in order (the stream counts any sequence not above the last), and exactly
    // the records whose write succeeded.
    uint64_t ok_count = 0;
    for (uint8_t v : ok[id]) ok_count += v;
    for (uint64_t s : stream.seen[id])
      if (s >= ok[id].size() || !ok[id][s]) ++phantom;
    if (stream.seen[id].size() < ok_count) missing += ok_count - stream.seen[id].size();
  }
  MESSAGE("no-overwrite, " << writers << " pinned writers: attempted " << attempted
                           << ", written " << written << ", failed (ENOSPC) " << failed
                           << "; read " << stream.reads << " times (seed " << seed << "), "
                           << stream.bytes << " bytes: whole records " << stream.whole
                           << ", torn " << stream.torn << ", out of order "
                           << stream.out_of_order << ", missing " << missing
                           << ", read but not written " << phantom);
  CHECK(read_errno == 0);
  CHECK(stream.torn == 0);
  CHECK(stream.out_of_order == 0);
  CHECK(missing == 0);
  CHECK(phantom == 0);
  CHECK(stream.bytes == bytes_written);
  CHECK(stream.whole + failed == attempted);
  CHECK(written + failed == attempted);
  CHECK(stream.whole > 0);
}
