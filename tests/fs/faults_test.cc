// Fault tests (issue 6, "Faults"): producers killed mid-write, the daemon killed under blocked
// readers, and unmounts under load. Every process here is a real one (fork), so that what is
// checked is what a user would see: exit statuses, process states in /proc, records in files.
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/xattr.h>

#include <cinttypes>
#include <random>

#include "helpers.h"
#include "tagged.h"

using namespace relayfs::test;

namespace {

// Children report through exit statuses; these are theirs.
constexpr int kChildOk = 0;
constexpr int kChildSetupFailed = 90;

// Shared with a producer child: how many records each writer thread had committed (relay_write
// or relay_commit returned), stored after the fact, so a record below the count is committed.
struct Committed {
  std::atomic<uint64_t> count[2];
  std::atomic<uint32_t> ready;  // the channel is open
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);

std::string describe(int st) {
  if (st == -1) return "did not end in time (killed)";
  if (WIFSIGNALED(st)) return "killed by signal " + std::to_string(WTERMSIG(st));
  return "exit " + std::to_string(WEXITSTATUS(st));
}

// Reads a relay file to EOF in 1 MiB reads and checks that it holds tagged records, whole, each
// writer thread's in increasing order.
struct Stream {
  std::map<uint32_t, std::vector<uint64_t>> seqs;  // writer thread -> sequence numbers read
  uint64_t torn = 0, out_of_order = 0, gaps = 0, leftover = 0;
  uint64_t lost_uncommitted = 0, lost_full = 0;  // the file's counters at EOF
};

uint64_t xattr_num(int fd, const char* name) {
  char v[32] = {};
  return ::fgetxattr(fd, name, v, sizeof v - 1) > 0 ? std::strtoull(v, nullptr, 10) : 0;
}

Stream read_tagged(const std::string& path) {
  Stream s;
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return s;
  std::vector<char> buf(1 << 20);
  std::string pending;
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n <= 0) break;
    pending.append(buf.data(), static_cast<size_t>(n));
    size_t at = 0;
    TaggedHeader h;
    long len;
    while ((len = tagged_check(pending.data() + at, pending.size() - at, &h)) > 0) {
      auto& seqs = s.seqs[h.thread];
      const uint64_t next = seqs.empty() ? 0 : seqs.back() + 1;
      if (h.seq < next) ++s.out_of_order;  // read twice, or late
      if (h.seq > next) ++s.gaps;          // records of this writer skipped
      seqs.push_back(h.seq);
      at += static_cast<size_t>(len);
    }
    if (len < 0) {
      ++s.torn;  // a torn or foreign record
      at = pending.size();
    }
    pending.erase(0, at);
  }
  s.leftover = pending.size();
  s.lost_uncommitted = xattr_num(fd, "user.relayfs.lost_uncommitted");
  s.lost_full = xattr_num(fd, "user.relayfs.lost_full");
  ::close(fd);
  return s;
}

// The length of a writer thread's record seq: 40..4000 bytes, known to the test as well.
uint32_t kill_len(uint32_t thread, uint64_t seq) {
  uint64_t x = (seq + 1) * 0x9e3779b97f4a7c15ull ^ thread;
  x ^= x >> 31;
  return 40 + static_cast<uint32_t>(x % 3961);
}

// A writer thread of a producer child, pinned to cpu, writing tagged records of kill_len bytes,
// half through relay_write and half through relay_reserve + relay_commit, so a kill can land
// between a reservation and its commit.
void write_forever(rchan* c, unsigned cpu, uint32_t buffer, uint32_t channel,
                   std::atomic<uint64_t>* committed) {
  pin_to(cpu);
  std::vector<char> rec(4096);
  for (uint64_t seq = 0;;) {
    TaggedHeader h{};
    h.len = kill_len(cpu, seq);
    h.channel = channel;
    h.buffer = buffer;
    h.thread = cpu;
    h.seq = seq;
    tagged_make(h, rec.data());
    bool ok;
    if (seq % 2) {
      ok = relay_write(c, rec.data(), h.len) == 0;
    } else if (void* slot = relay_reserve(c, h.len)) {
      std::memcpy(slot, rec.data(), h.len);
      relay_commit(c, slot, h.len);
      ok = true;
    } else {
      ok = false;
    }
    if (ok) committed->store(++seq, std::memory_order_release);
  }
}

struct KillFigures {
  uint64_t committed = 0, read = 0;
  uint64_t mid_record = 0;  // buffers whose writers left a reservation uncommitted
  uint64_t mid_stream = 0;  // buffers that were not full at the kill (writing, not dropping)
  uint64_t buffers = 0;
  uint64_t unread_committed = 0;  // bytes of committed records skipped after an uncommitted one
};

// Kills `kills` producer processes with SIGKILL 0.1-4 ms into writing: a writer thread pinned on
// each of (up to) two CPUs, each alone on its CPU's buffer, or both on one global buffer.
// Checks every record read and returns the figures.
KillFigures kill_producers(const Mount& m, int kills, bool one_buffer) {
  const unsigned cpus = std::min(2u, ncpus());
  auto* shared = static_cast<Committed*>(
      ::mmap(nullptr, sizeof(Committed), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  REQUIRE(shared != MAP_FAILED);
  std::mt19937 rng(6);
  KillFigures f;
  for (int k = 0; k < kills; ++k) {
    for (auto& c : shared->count) c.store(0);
    shared->ready.store(0);
    const std::string base = (one_buffer ? "g" : "k") + std::to_string(k) + "_";
    const pid_t child = spawn([&] {
      // 8 MiB per buffer: the writers seldom fill it in the few ms before the kill.
      rchan_callbacks cb{};
      if (one_buffer) cb.create_buf_file = &make_global<0400>;
      rchan* c = relay_open(base.c_str(), m.dir.c_str(), 256 << 10, 32, &cb, nullptr);
      if (!c) return kChildSetupFailed;
      shared->ready.store(1);
      std::vector<std::thread> writers;
      for (unsigned t = 0; t < cpus; ++t)
        writers.emplace_back(write_forever, c, t, one_buffer ? 0 : t, static_cast<uint32_t>(k),
                             &shared->count[t]);
      for (auto& w : writers) w.join();  // never: the test kills us
      return kChildOk;
    });
    REQUIRE(wait_for([&] { return shared->ready.load() != 0; }));
    std::this_thread::sleep_for(std::chrono::microseconds(100 + rng() % 3900));
    ::kill(child, SIGKILL);
    int st = 0;
    ::waitpid(child, &st, 0);
    REQUIRE(WIFSIGNALED(st));
    const unsigned nbuf = one_buffer ? 1 : cpus;
    for (unsigned b = 0; b < nbuf; ++b) {
      Stream s = read_tagged(m.path(base + std::to_string(b)));
      INFO("kill " << k << ", buffer " << b);
      CHECK(s.torn == 0);
      CHECK(s.leftover == 0);  // no torn record at the end either
      CHECK(s.out_of_order == 0);
      uint64_t unread = 0;  // bytes of records committed and not read
      for (unsigned t = 0; t < cpus; ++t) {
        if (!one_buffer && t != b) continue;
        const uint64_t committed = shared->count[t].load(std::memory_order_acquire);
        const std::vector<uint64_t>& got = s.seqs[t];
        // A record committed between its commit and the counter's store may be read too.
        CHECK((got.empty() || got.back() <= committed));
        std::vector<bool> read(committed + 1);
        for (uint64_t q : got) read[q] = true;
        for (uint64_t q = 0; q < committed; ++q)
          if (!read[q]) unread += kill_len(t, q);
        f.committed += committed;
        f.read += got.size();
      }
      // Alone on its buffer a writer commits in order: everything committed is read. Sharing
      // one, records committed after another writer's uncommitted one cannot be proven whole:
      // skipped, but counted (with the uncommitted bytes themselves).
      if (!one_buffer) CHECK((unread == 0 && s.gaps == 0));
      CHECK(unread <= s.lost_uncommitted);
      f.unread_committed += unread;
      f.mid_record += s.lost_uncommitted > 0;
      f.mid_stream += s.lost_full == 0;
      ++f.buffers;
    }
    CHECK(wait_for([&] {  // drained and finalized: the files go
      for (unsigned b = 0; b < nbuf; ++b)
        if (exists(m.path(base + std::to_string(b)))) return false;
      return true;
    }));
  }
  ::munmap(shared, sizeof(Committed));
  return f;
}

void print_kills(const char* what, int kills, const KillFigures& f) {
  std::printf("%s: %d SIGKILLs, %" PRIu64 " records committed before them, %" PRIu64
              " read, all intact; of %" PRIu64 " buffers %" PRIu64
              " were not full at the kill and %" PRIu64
              " had a record reserved and never committed; %" PRIu64
              " bytes of committed records skipped behind one (counted in lost_uncommitted)\n",
              what, kills, f.committed, f.read, f.buffers, f.mid_stream, f.mid_record,
              f.unread_committed);
}

}  // namespace

TEST_CASE("producers killed with SIGKILL mid-write, many times: every committed record is read") {
  Mount m({"-o", "blocking"});
  constexpr int kKills = 60;
  print_kills("producer kills, a writer alone on each buffer", kKills,
              kill_producers(m, kKills, false));
  // The daemon runs on: a new channel works end to end.
  CHECK(is_mounted(m.dir));
  rchan* c = open_global(m.dir, "after");
  const std::string data = write_records(c, 0, 10);
  CHECK(relay_close(c) == 0);
  CHECK(slurp(m.path("after0")) == data);  // what was committed, then EOF
}

TEST_CASE("producers killed mid-write with two writers on one buffer: what is not read is counted") {
  Mount m({"-o", "blocking"});
  constexpr int kKills = 30;
  print_kills("producer kills, two writers on one buffer", kKills, kill_producers(m, kKills, true));
  CHECK(is_mounted(m.dir));
}

namespace {

// What a producer child saw of its daemon dying, for the test to report.
struct ProducerView {
  std::atomic<uint32_t> ready;
  std::atomic<int> write_errno;  // first relay_write failure
  std::atomic<int> close_rc, close_errno;
  std::atomic<uint64_t> written;
};

// A producer child: a live channel with a record every 2 ms and an idle one, both global; writes
// until relay_write fails or `limit` passes, then closes both. What it saw goes to *v; it exits 0
// unless it could not open its channels.
int producer(const std::string& dir, const char* live, const char* idle,
             std::chrono::milliseconds limit, ProducerView* v) {
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0444>;
  rchan* a = relay_open(live, dir.c_str(), 4096, 8, &cb, nullptr);
  rchan* b = relay_open(idle, dir.c_str(), 4096, 8, &cb, nullptr);
  if (!a || !b) return kChildSetupFailed;
  v->ready.store(1);
  const auto until = Clock::now() + limit;
  for (int i = 0; Clock::now() < until; ++i) {
    const std::string r = record(i);
    if (relay_write(a, r.data(), r.size()) != 0) {
      v->write_errno.store(errno);
      break;
    }
    v->written.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  v->close_rc.store(relay_close(a));
  v->close_errno.store(v->close_rc.load() ? errno : 0);
  relay_close(b);
  return kChildOk;
}

ProducerView* shared_view() {
  void* p = ::mmap(nullptr, sizeof(ProducerView), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  REQUIRE(p != MAP_FAILED);
  return new (p) ProducerView{};
}

std::string seen(const ProducerView& v) {
  return std::to_string(v.written.load()) + " records written; relay_write " +
         (v.write_errno.load() ? std::string("failed with ") + std::strerror(v.write_errno.load())
                               : std::string("never failed")) +
         ", relay_close returned " + std::to_string(v.close_rc.load()) +
         (v.close_rc.load() ? std::string(" (") + std::strerror(v.close_errno.load()) + ")" : "");
}

// A blocking mount with a producer child writing to its "live" channel (and holding an "idle"
// one) for `limit`, or until a write fails.
struct Loaded {
  Mount m{{"-o", "blocking"}};
  ProducerView* v = shared_view();
  pid_t pid = -1;

  explicit Loaded(std::chrono::milliseconds limit) {
    pid = spawn([&] { return producer(m.dir, "live", "idle", limit, v); });
    REQUIRE(wait_for([&] { return v->ready.load() != 0; }));
  }
  ~Loaded() { ::munmap(v, sizeof(ProducerView)); }

  // The producer ends by itself (no crash) having outlived its daemon: its writes go on into
  // the buffers nobody reads until they fill (ENOSPC, counted; never EPIPE, which is for a
  // channel really closed), and relay_close, with no daemon to ask, says the unread data went
  // with it (ENOTCONN: relay_close(3)).
  void check_saw_daemon_go(const char* what) {
    const int st = wait_child(pid, std::chrono::seconds(15));
    std::printf("%s: producer %s, %s\n", what, describe(st).c_str(), seen(*v).c_str());
    CHECK(st == 0);
    CHECK(v->write_errno.load() == ENOSPC);
    CHECK(v->close_rc.load() == -1);
    CHECK(v->close_errno.load() == ENOTCONN);
  }
};

// A reader child. Blocking: read(2) loops; polled: poll() then a non-blocking read. Exits with
// the errno that ended it (0: EOF). Counts itself in opened once its open(2) has returned.
int reader(const std::string& path, bool polled, std::atomic<uint64_t>* bytes,
           std::atomic<int>* opened) {
  const int fd = ::open(path.c_str(), O_RDONLY | (polled ? O_NONBLOCK : 0));
  if (fd < 0) return kChildSetupFailed;
  opened->fetch_add(1);
  char buf[65536];
  for (;;) {
    if (polled) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, -1) < 0) return errno;
    }
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) return 0;
    if (n < 0 && errno != EAGAIN && errno != EINTR) return errno;
    if (n > 0) bytes->fetch_add(static_cast<uint64_t>(n));
  }
}

struct Readers {
  std::vector<pid_t> pids;
  std::vector<std::string> what;
  // In shared memory: bytes read by all of them, and how many have their file open.
  struct Shared {
    std::atomic<uint64_t> bytes{0};
    std::atomic<int> opened{0};
  };
  Shared* shared;
  std::atomic<uint64_t>* bytes;

  Readers() {
    void* p = ::mmap(nullptr, sizeof *shared, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    shared = new (p) Shared;
    bytes = &shared->bytes;
  }
  ~Readers() {
    for (pid_t p : pids)
      if (p > 0) ::kill(p, SIGKILL);  // those still there if a check failed
    for (pid_t p : pids)
      if (p > 0) ::waitpid(p, nullptr, 0);
    ::munmap(shared, sizeof *shared);
  }

  void start(const std::string& path, bool polled, const std::string& name) {
    pids.push_back(spawn([=, s = shared] { return reader(path, polled, &s->bytes, &s->opened); }));
    what.push_back(name);
  }
  // True once every reader has its file open and sleeps (S): blocked in read or poll, not
  // running or in D. (A reader still in open(2) also sleeps in S, waiting for the daemon.)
  bool all_blocked() const {
    if (shared->opened.load() != static_cast<int>(pids.size())) return false;
    for (pid_t p : pids)
      if (proc_state("/proc/" + std::to_string(p)) != 'S') return false;
    return true;
  }
  // Waits for every reader to end by itself within limit, sampling states meanwhile; returns
  // the number of samples that found one in state D. Each end is described in ends.
  int wait_all(std::chrono::milliseconds limit, std::vector<std::string>* ends) {
    int d_samples = 0;
    const auto until = Clock::now() + limit;
    std::vector<int> status(pids.size(), -2);
    for (size_t left = pids.size(); left > 0 && Clock::now() < until;) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (status[i] != -2) continue;
        if (proc_state("/proc/" + std::to_string(pids[i])) == 'D') ++d_samples;
        int st;
        if (::waitpid(pids[i], &st, WNOHANG) == pids[i]) {
          status[i] = st;
          --left;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    for (size_t i = 0; i < pids.size(); ++i) {
      if (status[i] == -2) status[i] = wait_child(pids[i], std::chrono::milliseconds(0));
      const int st = status[i];
      pids[i] = -1;  // reaped
      ends->push_back(what[i] + ": " +
                      (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0 &&
                               WEXITSTATUS(st) != kChildSetupFailed
                           ? std::string("returned ") + std::strerror(WEXITSTATUS(st))
                           : describe(st)));
    }
    return d_samples;
  }
};

}  // namespace

TEST_CASE("the daemon killed with SIGKILL under blocked readers: no reader in D, clear errors, "
          "remount works") {
  Loaded l(std::chrono::seconds(10));
  Mount& m = l.m;
  Readers r;
  r.start(m.path("live0"), false, "read(2) on a live file");
  r.start(m.path("idle0"), false, "read(2) blocked on an idle file");
  r.start(m.path("idle0"), true, "poll() on an idle file");
  r.start(m.path("live0"), true, "poll() on a live file");
  // Blocked: in read or poll, waiting for the daemon (a live reader between records).
  CHECK(wait_for([&] { return r.all_blocked(); }));

  const int st = m.stop_daemon(SIGKILL);
  CHECK(WIFSIGNALED(st));
  std::vector<std::string> ends;
  const int d_samples = r.wait_all(std::chrono::seconds(5), &ends);
  for (auto& e : ends) std::printf("daemon kill: reader %s\n", e.c_str());
  for (auto& e : ends) {
    INFO(e);
    CHECK(e.find("returned") != std::string::npos);  // ended by itself, with an errno
  }
  CHECK(d_samples == 0);
  l.check_saw_daemon_go("daemon kill");

  // The dead mount: unmount it and mount again on the same directory.
  CHECK(run("fusermount3 -u -z '" + m.dir + "'") == 0);
  CHECK_FALSE(is_mounted(m.dir));
  Mount again({}, m.dir);
  rchan* c = open_global(again.dir, "again");
  const std::string data = write_records(c, 0, 5);
  CHECK(relay_close(c) == 0);
  CHECK(slurp(again.path("again0")) == data);
}

namespace {

// Waits up to limit for the mount's daemon to exit by itself (killing it after that); returns
// its wait status, or -1 if it had to be killed.
int daemon_exit(Mount& m, std::chrono::milliseconds limit) {
  const int st = wait_child(m.pid, limit);
  m.pid = -1;
  return st;
}

bool exited_zero(int st) {
  return st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

}  // namespace

TEST_CASE("fusermount3 -u under load: refused while files are open, then unmounts under a "
          "writing producer, which sees clear errors") {
  Loaded l(std::chrono::seconds(10));
  Mount& m = l.m;
  Readers r;
  r.start(m.path("live0"), false, "read(2) on a live file");
  r.start(m.path("idle0"), true, "poll() on an idle file");
  REQUIRE(wait_for([&] { return r.bytes->load() > 0; }));

  // Busy: refused, and the mount goes on serving.
  CHECK(run("fusermount3 -u '" + m.dir + "' 2>/dev/null") != 0);
  CHECK(is_mounted(m.dir));
  const uint64_t before = r.bytes->load();
  CHECK(wait_for([&] { return r.bytes->load() > before; }));

  // Readers blocked in read and poll end at a signal. A dying reader waits for the daemon to
  // answer the interrupted read and its close in a killable sleep, which /proc shows as D for
  // a moment; what counts is that each one ends.
  for (pid_t p : r.pids) ::kill(p, SIGTERM);
  std::vector<std::string> ends;
  const int d_samples = r.wait_all(std::chrono::seconds(5), &ends);
  std::printf("fusermount3 -u: %d samples found a reader in D\n", d_samples);
  for (auto& e : ends) {
    INFO(e);
    CHECK(e.find("signal 15") != std::string::npos);
  }
  // Now it unmounts while the producer writes; the daemon exits, the producer sees why.
  CHECK(run("fusermount3 -u '" + m.dir + "'") == 0);
  const int dst = daemon_exit(m, std::chrono::seconds(5));
  std::printf("fusermount3 -u: daemon %s\n", describe(dst).c_str());
  CHECK(exited_zero(dst));
  l.check_saw_daemon_go("fusermount3 -u");
}

TEST_CASE("umount -l under load: new producers are refused, and the daemon ends at once although "
          "files are open: its readers get ENOTCONN, its producer sees it go") {
  Loaded l(std::chrono::seconds(10));
  Mount& m = l.m;
  Readers r;
  r.start(m.path("live0"), false, "read(2) on a live file");
  r.start(m.path("live0"), true, "poll() on a live file");
  r.start(m.path("idle0"), false, "read(2) on an idle file");
  REQUIRE(wait_for([&] { return r.bytes->load() > 0; }));

  CHECK(run("umount -l '" + m.dir + "'") == 0);
  CHECK_FALSE(is_mounted(m.dir));
  // The directory is a plain one now: relay_open says it is not relayfs.
  errno = 0;
  CHECK(relay_open("late", m.dir.c_str(), 4096, 8, nullptr, nullptr) == nullptr);
  CHECK(errno == ENOTSUP);

  // A detached mount is its daemon's no more (src/fs/unmounted.cc): the daemon ends without
  // waiting for the readers to close, so that the next one mounted there could take its
  // producers over. Its readers see a dead daemon: ENOTCONN (a parked read too), or
  // ECONNABORTED for a request the daemon had taken and not answered when it stopped. (A reader
  // waiting for the kernel's abort of the connection may show D for a moment: printed, not
  // checked; what counts is that each one ends.)
  const int dst = daemon_exit(m, std::chrono::seconds(5));
  std::printf("umount -l: daemon %s\n", describe(dst).c_str());
  CHECK(exited_zero(dst));
  std::vector<std::string> ends;
  const int d_samples = r.wait_all(std::chrono::seconds(5), &ends);
  std::printf("umount -l: %d samples found a reader in D\n", d_samples);
  for (auto& e : ends) {
    INFO(e);
    CHECK((e.find(std::string("returned ") + std::strerror(ENOTCONN)) != std::string::npos ||
           e.find(std::string("returned ") + std::strerror(ECONNABORTED)) != std::string::npos));
  }
  l.check_saw_daemon_go("umount -l");
}
