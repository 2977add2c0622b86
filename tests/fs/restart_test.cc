// Daemon restarts (issue 15): producers write through a crash, a lazy unmount and a remount of
// relayfs, reattach by themselves, and nothing they committed is lost or read twice without a
// counter saying so. Real mounts, real producer processes, real readers.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/sysinfo.h>

#include <cinttypes>
#include <sys/xattr.h>

#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "helpers.h"
#include "tagged.h"

using namespace relayfs::test;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kChildSetupFailed = 90;

uint64_t xattr_num(const std::string& path, const char* name) {
  char v[32] = {};
  return ::getxattr(path.c_str(), name, v, sizeof v - 1) > 0 ? std::strtoull(v, nullptr, 10) : 0;
}

// A relayfs at a fixed place that can be killed and mounted again there.
struct Remountable {
  explicit Remountable(std::vector<std::string> o) : opts(std::move(o)) {
    m = std::make_unique<Mount>(opts);
    dir = m->dir;
  }
  // SIGKILL, then the dead mount taken away (as an administrator, or a unit's ExecStartPre,
  // would) and a new daemon mounted at the same place.
  void crash_and_remount() {
    crash();
    remount();
  }
  void crash() {
    REQUIRE(m->pid > 0);
    ::kill(m->pid, SIGKILL);
    int st;
    ::waitpid(m->pid, &st, 0);
    m->pid = -1;
    m.reset();  // unmounts (lazily) and removes the mount point
  }
  void remount() {
    ::mkdir(dir.c_str(), 0755);
    m = std::make_unique<Mount>(opts, dir);
  }
  std::vector<std::string> opts;
  std::unique_ptr<Mount> m;
  std::string dir;
};

// Shared with the producer children (MAP_SHARED).
struct Shared {
  std::atomic<uint32_t> ready;
  std::atomic<uint32_t> stop;   // stop writing
  std::atomic<uint32_t> close;  // then close
  struct P {
    std::atomic<uint64_t> written;  // records committed: seq 0 .. written-1
    std::atomic<uint64_t> failed;   // relay_write failures (dropped, counted in lost_full)
    std::atomic<int> fail_errno;    // the last failure's errno
    std::atomic<int> close_rc;
    std::atomic<uint32_t> done;
  } p[16];
};

Shared* shared_map() {
  void* p = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
  REQUIRE(p != MAP_FAILED);
  return new (p) Shared{};
}

uint32_t rec_len(uint64_t seq) {
  return static_cast<uint32_t>(sizeof(TaggedHeader) + (seq * 37) % 160);
}

// A producer child: channel "p<i>" (per CPU), tagged records until told to stop.
int producer(const std::string& dir, int i, bool blocking, Shared* sh) {
  relay_options o{};
  if (blocking) {
    o.flags = RELAY_BLOCKING;
    o.block_timeout_ms = 60000;  // far above any remount here: a failure is a real one
  }
  const std::string base = "p" + std::to_string(i) + "c";
  rchan* c = relay_open_opts(base.c_str(), dir.c_str(), 16384, 16, nullptr, nullptr, &o);
  if (!c) {
    std::fprintf(stderr, "producer %d: relay_open: %s\n", i, std::strerror(errno));
    return kChildSetupFailed;
  }
  sh->ready.fetch_add(1);
  auto& me = sh->p[i];
  char rec[256];
  uint64_t seq = 0;
  for (uint64_t n = 0; !sh->stop.load(); ++n) {
    TaggedHeader h{};
    h.len = rec_len(seq);
    h.producer = static_cast<uint32_t>(i);
    h.channel = static_cast<uint32_t>(i);
    h.seq = seq;
    tagged_make(h, rec);
    if (relay_write(c, rec, h.len) == 0) {
      me.written.store(++seq);
    } else {
      me.failed.fetch_add(1);
      me.fail_errno.store(errno);
    }
    if (n % 8 == 7) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  while (!sh->close.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  me.close_rc.store(relay_close(c));
  me.done.store(1);
  return 0;
}

// What readers got of each producer: sequence numbers, how often each, torn records.
struct Seen {
  std::mutex mu;
  std::map<uint32_t, std::map<uint64_t, uint32_t>> seqs;  // producer -> seq -> times read
  std::map<uint32_t, uint64_t> dup_bytes;
  uint64_t torn = 0, reopens = 0;
};

// A reader of one relay file, as a user's would be: reopens it by name after the daemon died,
// until end of file. 1 MiB reads: at least a whole buffer, so a read never ends mid-record.
void reader(const std::string& path, Seen* seen, std::atomic<bool>* give_up) {
  std::vector<char> buf(1 << 20);
  while (!give_up->load()) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    bool eof = false;
    for (;;) {
      const ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n == 0) eof = true;
      if (n <= 0) break;
      std::lock_guard lk(seen->mu);
      size_t at = 0;
      TaggedHeader h;
      long len;
      while ((len = tagged_check(buf.data() + at, static_cast<size_t>(n) - at, &h)) > 0) {
        if (++seen->seqs[h.producer][h.seq] > 1) seen->dup_bytes[h.producer] += h.len;
        at += static_cast<size_t>(len);
      }
      if (at != static_cast<size_t>(n)) ++seen->torn;
    }
    ::close(fd);
    if (eof) return;
    std::lock_guard lk(seen->mu);
    ++seen->reopens;
  }
}

}  // namespace

TEST_CASE("the daemon SIGKILLed 10 times under 16 producers and readers: every record read, "
          "duplicates counted, blocking writers never fail") {
  constexpr int kProducers = 16;
  constexpr int kRounds = 10;
  const int ncpu = get_nprocs_conf();
  Remountable fs({"-o", "blocking"});
  Shared* sh = shared_map();
  std::vector<pid_t> pids;
  for (int i = 0; i < kProducers; ++i)
    pids.push_back(spawn([&, i] { return producer(fs.dir, i, i % 2 == 0, sh); }));
  REQUIRE(wait_for([&] { return sh->ready.load() == kProducers; }, std::chrono::seconds(20)));

  Seen seen;
  std::atomic<bool> give_up{false};
  std::vector<std::thread> readers;
  for (int i = 0; i < kProducers; ++i)
    for (int cpu = 0; cpu < ncpu; ++cpu)
      readers.emplace_back(reader, fs.dir + "/p" + std::to_string(i) + "c" + std::to_string(cpu), &seen,
                           &give_up);
  for (int round = 0; round < kRounds; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    fs.crash();
    // Every other time long enough without a daemon for buffers to fill: dropping producers
    // drop and count, blocking ones wait.
    if (round % 2) std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    fs.remount();
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  sh->stop.store(1);

  // Every producer back on the new daemon, and every committed record read.
  auto written = [&](int i) { return sh->p[i].written.load(); };
  auto caught_up = [&] {
    std::lock_guard lk(seen.mu);
    for (int i = 0; i < kProducers; ++i)
      if (seen.seqs[static_cast<uint32_t>(i)].size() < written(i)) return false;
    return true;
  };
  const bool all_read = wait_for(caught_up, std::chrono::seconds(60));
  // The counters, before the channels close and their files go.
  std::map<int, uint64_t> redelivered, lost_full;
  for (int i = 0; i < kProducers; ++i)
    for (int cpu = 0; cpu < ncpu; ++cpu) {
      const std::string f = fs.dir + "/p" + std::to_string(i) + "c" + std::to_string(cpu);
      redelivered[i] += xattr_num(f, "user.relayfs.redelivered_bytes");
      lost_full[i] += xattr_num(f, "user.relayfs.lost_full");
    }
  sh->close.store(1);
  for (pid_t p : pids) CHECK(wait_child(p, std::chrono::seconds(30)) == 0);
  if (!all_read) give_up.store(true);
  for (auto& t : readers) t.join();

  CHECK(all_read);
  uint64_t total = 0, dups = 0, drops = 0;
  for (int i = 0; i < kProducers; ++i) {
    CAPTURE(i);
    const auto& got = seen.seqs[static_cast<uint32_t>(i)];
    total += written(i);
    dups += seen.dup_bytes[static_cast<uint32_t>(i)];
    drops += sh->p[i].failed.load();
    // Exactly the committed records, each at least once ...
    CHECK(got.size() == written(i));
    CHECK((got.empty() || got.rbegin()->first == written(i) - 1));
    // ... and more than once only within what the daemons counted as delivered again.
    CHECK(seen.dup_bytes[static_cast<uint32_t>(i)] <= redelivered[i]);
    CHECK(sh->p[i].close_rc.load() == 0);
    if (i % 2 == 0) {
      CHECK(sh->p[i].failed.load() == 0);  // blocking: waited, never failed
    } else {
      // Dropping: every failure is a full buffer, counted where the reader can see it.
      CHECK(sh->p[i].failed.load() == lost_full[i]);
      if (sh->p[i].failed.load()) CHECK(sh->p[i].fail_errno.load() == ENOSPC);
    }
  }
  CHECK(seen.torn == 0);
  std::printf("crash x%d: %" PRIu64 " records committed by %d producers, %s; %" PRIu64
              " dropped (dropping producers); %" PRIu64 " bytes read twice; %" PRIu64
              " reader reopens\n",
              kRounds, total, kProducers, all_read ? "all read" : "NOT all read", drops, dups,
              seen.reopens);
  ::munmap(sh, sizeof(Shared));
}
