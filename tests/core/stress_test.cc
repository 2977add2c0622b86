// Several writer threads write tagged records of random sizes while a reader consumes, first from
// another thread of the same process, then from another process than the writers (which map the
// buffer through its fd, as the producer library will). Every record read must be intact and read
// once; in no-overwrite mode every record written must be read, and in both modes every record not
// written must be counted as lost, exactly.
//
// RELAYFS_STRESS_SCALE multiplies the number of records (default 1: about 10^6 records).
#include <doctest/doctest.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "core/rseq.h"
#include "harness.h"

using namespace relayfs;
using test::Mode;

namespace {

constexpr uint32_t kWriters = 4;
constexpr uint32_t kMaxRecord = 300;
constexpr uint16_t kMagic = 0xbeef;

struct RecHeader {
  uint32_t len;  // whole record, trailer included
  uint16_t writer;
  uint16_t magic;
  uint64_t seq;
};
constexpr uint32_t kMinRecord = sizeof(RecHeader) + 4;

uint32_t checksum(const uint8_t* p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 16777619u;
  return h;
}

void fill_record(uint8_t* out, uint32_t len, uint16_t writer, uint64_t seq) {
  RecHeader h{len, writer, kMagic, seq};
  std::memcpy(out, &h, sizeof h);
  for (uint32_t i = sizeof h; i < len - 4; ++i)
    out[i] = static_cast<uint8_t>(writer * 31 + seq * 7 + i);
  const uint32_t c = checksum(out, len - 4);
  std::memcpy(out + len - 4, &c, 4);
}

uint64_t records_per_writer() {
  const char* s = std::getenv("RELAYFS_STRESS_SCALE");
  const double scale = s ? std::atof(s) : 1.0;
  return static_cast<uint64_t>(250000 * (scale > 0 ? scale : 1.0));
}

// What the writers report: per writer, which sequence numbers were accepted, and the failures.
struct WriterReport {
  uint64_t attempted;
  uint64_t ok;
  uint64_t failed;  // -ENOSPC or -EMSGSIZE: must equal the lost counters
  uint64_t other_errors;
  uint8_t accepted[1];  // bitmap, records_per_writer() bits; allocated beyond the struct
};

// Rounded to a cache line: keeps every report aligned (UBSan) and off its neighbours' lines.
size_t report_size(uint64_t per_writer) {
  return (sizeof(WriterReport) + per_writer / 8 + 1 + 63) / 64 * 64;
}

// Records the outcome of a writer's attempt to write record `seq`.
void note(WriterReport* rep, uint64_t seq, int rc) {
  ++rep->attempted;
  if (rc == 0) {
    ++rep->ok;
    rep->accepted[seq / 8] |= static_cast<uint8_t>(1u << (seq % 8));
  } else if (rc == -ENOSPC || rc == -EMSGSIZE) {
    ++rep->failed;
  } else {
    ++rep->other_errors;
  }
}

// Runs the writers on `prod`, filling reports (an array of kWriters, each report_size bytes).
void run_writers(core::Producer& prod, char* reports, uint64_t per_writer) {
  std::vector<std::thread> threads;
  for (uint32_t w = 0; w < kWriters; ++w) {
    threads.emplace_back([&, w] {
      auto* rep = reinterpret_cast<WriterReport*>(reports + w * report_size(per_writer));
      std::mt19937_64 rng(w * 7919 + 1);
      uint8_t rec[kMaxRecord];
      for (uint64_t seq = 0; seq < per_writer; ++seq) {
        const uint32_t len =
            kMinRecord + static_cast<uint32_t>(rng() % (kMaxRecord - kMinRecord + 1));
        int rc;
        if (seq % 5 == 0) {  // zero-copy path
          core::Reservation r;
          rc = prod.reserve(len, &r);
          if (rc == 0) {
            fill_record(reinterpret_cast<uint8_t*>(r.ptr), len, static_cast<uint16_t>(w), seq);
            prod.commit(r);
          }
        } else {
          fill_record(rec, len, static_cast<uint16_t>(w), seq);
          rc = prod.write(rec, len);
        }
        note(rep, seq, rc);
      }
    });
  }
  for (auto& t : threads) t.join();
  prod.flush();
}

// Parses the stream of records a reader gets, checking each one and that none repeats.
struct Checker {
  explicit Checker(uint64_t per_writer)
      : per_writer(per_writer),
        seen(kWriters, std::vector<uint8_t>(per_writer, 0)),
        last(kWriters, -1) {}

  uint64_t per_writer;
  std::vector<std::vector<uint8_t>> seen;
  std::vector<int64_t> last;
  std::vector<uint8_t> pending;
  uint64_t records = 0;
  uint64_t bad = 0;
  uint64_t consumed_bytes = 0;

  // Feeds one read's bytes. Returns false at the first bad record.
  bool feed(const char* p, size_t n) {
    pending.insert(pending.end(), p, p + n);
    size_t at = 0;
    while (pending.size() - at >= sizeof(RecHeader)) {
      RecHeader h;
      std::memcpy(&h, &pending[at], sizeof h);
      if (h.magic != kMagic || h.len < kMinRecord || h.len > kMaxRecord || h.writer >= kWriters ||
          h.seq >= per_writer)
        return fail("bad header");
      if (pending.size() - at < h.len) break;
      uint32_t c;
      std::memcpy(&c, &pending[at + h.len - 4], 4);
      if (c != checksum(&pending[at], h.len - 4)) {
        std::vector<uint8_t> want(h.len);
        fill_record(want.data(), h.len, h.writer, h.seq);
        uint32_t first = 0;
        while (first < h.len && want[first] == pending[at + first]) ++first;
        uint32_t lastd = h.len;
        while (lastd > 0 && want[lastd - 1] == pending[at + lastd - 1]) --lastd;
        MESSAGE("torn: writer " << h.writer << " seq " << h.seq << " len " << h.len
                                << " differs in [" << first << "," << lastd << ") stream offset "
                                << (consumed_bytes + at) << " got byte " << int(pending[at + first])
                                << " want " << int(want[first]));
        return fail("torn record");
      }
      if (seen[h.writer][h.seq]++) return fail("record read twice");
      if (static_cast<int64_t>(h.seq) <= last[h.writer]) return fail("out of order");
      last[h.writer] = static_cast<int64_t>(h.seq);
      ++records;
      at += h.len;
    }
    consumed_bytes += at;
    pending.erase(pending.begin(), pending.begin() + static_cast<long>(at));
    return true;
  }
  bool fail(const char* why) {
    ++bad;
    MESSAGE("stream check failed after " << records << " records: " << std::string(why));
    return false;
  }
};

struct Outcome {
  uint64_t read = 0, ok = 0, failed = 0, other = 0, lost = 0, overruns = 0;
  bool subset = true;       // every record read was accepted by a writer
  bool complete = true;     // every accepted record was read
  bool whole_reads = true;  // every read ended on a record boundary
};

// Reads until `done()` and the buffer is drained; then checks the stream against the reports.
Outcome read_and_check(core::Consumer& cons, Mode mode, const std::function<bool()>& done,
                       const char* reports, uint64_t per_writer,
                       const std::function<const core::BufferStats()>& stats) {
  Checker chk(per_writer);
  std::mt19937_64 rng(5);
  std::vector<char> buf(1 << 20);
  Outcome o;
  bool finished = false;
  while (true) {
    // Overwrite readers read big, so that every read ends on a record boundary (a record cut
    // between two reads could be overwritten before its second half is read).
    const size_t count =
        mode == Mode::kOverwrite ? buf.size() : 1 + rng() % (rng() % 2 ? 64 : 65536);
    const ssize_t n = cons.read(buf.data(), count);
    REQUIRE(n >= 0);
    if (n > 0) {
      REQUIRE(chk.feed(buf.data(), static_cast<size_t>(n)));
      if (mode == Mode::kOverwrite && !chk.pending.empty()) o.whole_reads = false;
      continue;
    }
    if (finished) break;
    if (done())
      finished = true;  // one more pass after the writers finished
    else
      std::this_thread::yield();
  }
  REQUIRE(chk.bad == 0);
  CHECK(chk.pending.empty());
  o.read = chk.records;
  for (uint32_t w = 0; w < kWriters; ++w) {
    const auto* rep = reinterpret_cast<const WriterReport*>(reports + w * report_size(per_writer));
    o.ok += rep->ok;
    o.failed += rep->failed;
    o.other += rep->other_errors;
    for (uint64_t s = 0; s < per_writer; ++s) {
      const bool acc = rep->accepted[s / 8] & (1u << (s % 8));
      if (chk.seen[w][s] && !acc) o.subset = false;
      if (acc && !chk.seen[w][s]) o.complete = false;
    }
  }
  const core::BufferStats st = stats();
  o.lost = st.lost_full + st.lost_too_big + st.lost_wrap;
  o.overruns = st.overruns;
  return o;
}

void check_outcome(const Outcome& o, Mode mode, uint64_t per_writer) {
  MESSAGE("records: attempted " << kWriters * per_writer << ", written " << o.ok << ", read "
                                << o.read << ", lost (counted) " << o.lost
                                << ", overrun sub-buffers " << o.overruns);
  CHECK(o.other == 0);
  CHECK(o.ok + o.failed == kWriters * per_writer);
  CHECK(o.failed == o.lost);  // every refused record is counted, exactly
  CHECK(o.subset);
  CHECK(o.read > 0);
  if (mode == Mode::kNoOverwrite) {
    CHECK(o.complete);
    CHECK(o.read == o.ok);  // written = read, and attempted = read + lost
    CHECK(o.read + o.lost == kWriters * per_writer);
  } else {
    CHECK(o.whole_reads);
    CHECK(o.read <= o.ok);
  }
}

// A shared, zeroed area for the writers' reports, visible to a forked child too.
struct Reports {
  explicit Reports(uint64_t per_writer) : len(kWriters * report_size(per_writer)) {
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    mem = static_cast<char*>(p);
  }
  ~Reports() { ::munmap(mem, len); }
  size_t len;
  char* mem;
};

constexpr uint32_t kSubbufSize = 4096;
constexpr uint32_t kSubbufs = 8;

}  // namespace

TEST_CASE("writer threads and a reader thread: every record intact, once, or counted lost") {
  Mode mode = Mode::kNoOverwrite;
  SUBCASE("no-overwrite") {
    mode = Mode::kNoOverwrite;
  }
  SUBCASE("overwrite") {
    mode = Mode::kOverwrite;
  }
  const uint64_t per_writer = records_per_writer();
  Reports reports(per_writer);
  test::SpecHook hook{mode, 0};
  test::Rig rig(kSubbufSize, kSubbufs, hook.hooks());
  std::atomic<bool> writers_done{false};
  std::thread writers([&] {
    run_writers(*rig.prod, reports.mem, per_writer);
    writers_done.store(true, std::memory_order_release);
  });
  // A failed REQUIRE below throws: the writers must still be joined first.
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{writers};
  const Outcome o = read_and_check(
      *rig.cons, mode, [&] { return writers_done.load(std::memory_order_acquire); }, reports.mem,
      per_writer, [&] { return rig.cons->stats(); });
  check_outcome(o, mode, per_writer);
}

TEST_CASE("writers in another process: every record intact, once, or counted lost") {
  Mode mode = Mode::kNoOverwrite;
  SUBCASE("no-overwrite") {
    mode = Mode::kNoOverwrite;
  }
  SUBCASE("overwrite") {
    mode = Mode::kOverwrite;
  }
  const uint64_t per_writer = records_per_writer();
  Reports reports(per_writer);
  core::Geometry g;
  REQUIRE(core::make_geometry(kSubbufSize, kSubbufs, &g) == 0);
  core::Buffer buf;  // created here, as the daemon creates buffers
  REQUIRE(core::Buffer::create(g, "relayfs-stress", &buf) == 0);
  core::Consumer cons(buf);

  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The producer process: maps the buffer anew from its fd and writes from several threads.
    core::Buffer mine;
    if (core::Buffer::attach(core::UniqueFd(::dup(buf.fd())), g, PROT_READ | PROT_WRITE, true,
                             &mine) != 0)
      ::_exit(3);
    test::SpecHook hook{mode, 0};
    core::Producer prod(mine, hook.hooks());
    run_writers(prod, reports.mem, per_writer);
    ::_exit(0);
  }
  int status = -1;
  bool exited = false;
  const Outcome o = read_and_check(
      cons, mode,
      [&] {
        if (!exited && ::waitpid(child, &status, WNOHANG) == child) exited = true;
        return exited;
      },
      reports.mem, per_writer, [&] { return cons.stats(); });
  REQUIRE(exited);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  check_outcome(o, mode, per_writer);
}

// Per-CPU buffers with the rseq fast path (Producer::bind_cpu): writers write into the buffer of
// the CPU they run on, as relay_write does, while another thread keeps moving them between CPUs
// and flushes every buffer from wherever it runs (the remote side of claim_word). Every record
// must still be intact and read once, every accepted record read, and every refusal counted.
TEST_CASE("per-CPU buffers bound to their CPUs: migrating writers and a remote flusher") {
  bool blocking = false;
  SUBCASE("full buffers drop and count") {
    blocking = false;
  }
  SUBCASE("blocking: writers sleep on a full buffer and may wake on another CPU") {
    blocking = true;
  }
  const unsigned ncpu = std::max(1u, std::thread::hardware_concurrency());
#ifdef RELAYFS_HAVE_RSEQ
  REQUIRE(core::rseq::available());
#endif
  const uint64_t per_writer = records_per_writer() / 2;
  Reports reports(per_writer);
  std::vector<std::unique_ptr<test::Rig>> rigs;
  for (unsigned c = 0; c < ncpu; ++c) {
    rigs.push_back(std::make_unique<test::Rig>(kSubbufSize, kSubbufs));
    // Without rseq (TSan, other CPUs) the test still runs, on the CAS path.
    CHECK(rigs.back()->prod->bind_cpu(c) == core::rseq::available());
    rigs.back()->prod->set_blocking(blocking, 10'000'000'000);
  }
  std::atomic<bool> stop_mover{false};
  std::atomic<uint64_t> other_cpu{0}, flushes{0};
  std::vector<std::atomic<pid_t>> tids(kWriters);
  std::atomic<unsigned> started{0}, finished{0};
  std::vector<std::thread> writers;
  for (uint32_t w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      tids[w].store(static_cast<pid_t>(::gettid()), std::memory_order_relaxed);
      started.fetch_add(1, std::memory_order_release);
      auto* rep = reinterpret_cast<WriterReport*>(reports.mem + w * report_size(per_writer));
      std::mt19937_64 rng(w + 17);
      uint8_t rec[kMaxRecord];
      for (uint64_t seq = 0; seq < per_writer; ++seq) {
        const uint32_t len =
            kMinRecord + static_cast<uint32_t>(rng() % (kMaxRecord - kMinRecord + 1));
        fill_record(rec, len, static_cast<uint16_t>(w), seq);
        int rc;
        do {  // relay_write's loop: the buffer of the CPU we are on, again if we moved
          const unsigned cpu = static_cast<unsigned>(::sched_getcpu());
          rc = rigs[cpu % ncpu]->prod->write(rec, len);
          if (rc == core::kOtherCpu) other_cpu.fetch_add(1, std::memory_order_relaxed);
        } while (rc == core::kOtherCpu);
        note(rep, seq, rc);
      }
      // release: the reader sees this writer's report complete once it counts it finished.
      finished.fetch_add(1, std::memory_order_release);
    });
  }
  while (started.load(std::memory_order_acquire) != kWriters) std::this_thread::yield();
  // Moves each writer to the next CPU every 200 us, and flushes from wherever it runs.
  std::thread mover([&] {
    for (unsigned round = 0; !stop_mover.load(std::memory_order_relaxed); ++round) {
      for (uint32_t w = 0; w < kWriters; ++w) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((w + round) % ncpu, &set);
        // Fails harmlessly once the writer has exited.
        ::sched_setaffinity(tids[w].load(std::memory_order_relaxed), sizeof set, &set);
      }
      if (round % 4 == 0)
        for (auto& r : rigs)
          if (r->prod->flush() == 0) flushes.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  // Also on a failed REQUIRE: the reader is gone then, and writers blocked on a full buffer
  // would wait for it forever; closing the buffers ends their writes with -EPIPE.
  struct Joiner {
    std::vector<std::thread>& ws;
    std::thread& m;
    std::atomic<bool>& stop;
    std::vector<std::unique_ptr<test::Rig>>& rigs;
    ~Joiner() {
      for (auto& r : rigs) {
        r->prod->close();
        r->prod->abandon();
      }
      for (auto& t : ws)
        if (t.joinable()) t.join();
      stop.store(true, std::memory_order_relaxed);
      if (m.joinable()) m.join();
    }
  } joiner{writers, mover, stop_mover, rigs};

  // One checker per buffer (a writer's records are in order within each buffer), then the
  // buffers together: no record in two of them, none missing.
  std::vector<Checker> checkers(ncpu, Checker(per_writer));
  std::vector<char> tmp(1 << 16);
  for (bool last = false;;) {
    size_t got = 0;
    for (unsigned c = 0; c < ncpu; ++c) {
      const ssize_t n = rigs[c]->cons->read(tmp.data(), tmp.size());
      REQUIRE(n >= 0);
      if (n > 0) REQUIRE(checkers[c].feed(tmp.data(), static_cast<size_t>(n)));
      got += static_cast<size_t>(n);
    }
    if (got != 0) continue;
    if (last) break;
    if (finished.load(std::memory_order_acquire) == kWriters) {
      for (auto& r : rigs) r->prod->flush();  // the last partial sub-buffers
      last = true;
    } else {
      std::this_thread::yield();
    }
  }
  uint64_t ok = 0, failed = 0, other = 0, read = 0, lost = 0, twice = 0, missing = 0, extra = 0;
  for (auto& chk : checkers) {
    CHECK(chk.pending.empty());
    read += chk.records;
  }
  for (auto& r : rigs) {
    const core::BufferStats st = r->cons->stats();
    lost += st.lost_full + st.lost_too_big + st.lost_wrap;
  }
  for (uint32_t w = 0; w < kWriters; ++w) {
    const auto* rep =
        reinterpret_cast<const WriterReport*>(reports.mem + w * report_size(per_writer));
    ok += rep->ok;
    failed += rep->failed;
    other += rep->other_errors;
    for (uint64_t s = 0; s < per_writer; ++s) {
      unsigned n = 0;
      for (auto& chk : checkers) n += chk.seen[w][s];
      const bool acc = rep->accepted[s / 8] & (1u << (s % 8));
      twice += n > 1;
      missing += acc && n == 0;
      extra += !acc && n != 0;
    }
  }
  MESSAGE(std::string(blocking ? "rseq per-CPU, blocking: " : "rseq per-CPU: ") << ncpu << " buffers, written " << ok << ", read " << read
                           << ", lost (counted) " << lost << ", writes retried on another CPU "
                           << other_cpu.load() << ", flushes " << flushes.load());
  CHECK(other == 0);
  CHECK(ok + failed == kWriters * per_writer);
  CHECK(failed == lost);
  CHECK(twice == 0);
  CHECK(missing == 0);
  CHECK(extra == 0);
  CHECK(read == ok);
  CHECK(flushes.load() > 0);
  if (blocking) CHECK(failed == 0);
}
