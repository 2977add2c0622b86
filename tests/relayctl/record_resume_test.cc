// relayctl record across daemon restarts (issue 15): the daemon is killed while a producer writes
// and relayctl records; relayctl says so and exits 1; relayfs is mounted again at the same place,
// the producer reattaches, and `relayctl record --resume` goes on in the same OUTDIR. At the end
// every record the producer committed is in the output files exactly once, in order: no gap, no
// overlap. Real mounts, a real producer process, relayctl as a process.
#include <sys/mman.h>

#include <cinttypes>
#include <map>
#include <set>

#include "fs/tagged.h"
#include "proto/record_state.h"
#include "relayctl/tool.h"

using namespace relayfs::test;
using namespace std::chrono_literals;

namespace {

constexpr int kChildSetupFailed = 90;

// Shared with the producer child (MAP_SHARED).
struct Shared {
  std::atomic<uint32_t> ready;
  std::atomic<uint32_t> stop;     // stop writing, then close
  std::atomic<uint64_t> written;  // records committed: seq 0 .. written-1
  std::atomic<uint64_t> failed;   // relay_write failures
  std::atomic<int> close_rc;
};

Shared* shared_map() {
  void* p = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
  REQUIRE(p != MAP_FAILED);
  return new (p) Shared{};
}

// The producer child: per-CPU channel `base`, blocking (a record waits for the next daemon
// rather than being dropped), tagged records of varied lengths, steadily, until told to stop;
// then it closes the channel.
int producer(const std::string& dir, const char* base, Shared* sh) {
  relay_options o{};
  o.flags = RELAY_BLOCKING;
  // No limit. A restart has no bound here: on this 2-CPU VM with two busy loops beside the
  // test, kernel workers starved (dmesg: workqueue lockup), a SIGKILLed daemon's io_uring teardown
  // took 72 s and umount's RCU grace period 58 s, and a 60 s limit failed writes that only waited.
  // A writer that never wakes still fails the test: wait_child gives up on it.
  o.block_timeout_ms = -1;
  rchan* c = relay_open_opts(base, dir.c_str(), 4096, 8, nullptr, nullptr, &o);
  if (!c) {
    std::fprintf(stderr, "producer: relay_open: %s\n", std::strerror(errno));
    return kChildSetupFailed;
  }
  sh->ready.store(1);
  char rec[256];
  uint64_t seq = 0;
  for (uint64_t n = 0; !sh->stop.load(); ++n) {
    TaggedHeader h{};
    h.len = static_cast<uint32_t>(sizeof(TaggedHeader) + (seq * 37) % 160);
    h.seq = seq;
    tagged_make(h, rec);
    if (relay_write(c, rec, h.len) == 0)
      sh->written.store(++seq);
    else
      sh->failed.fetch_add(1);
    if (n % 4 == 3) std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
  sh->close_rc.store(relay_close(c));
  return 0;
}

std::string buffer_file(const std::string& dir, const char* base, unsigned cpu) {
  return dir + "/" + base + std::to_string(cpu);
}

// Bytes in the output files so far.
size_t recorded(const std::string& outdir, const char* base) {
  size_t n = 0;
  for (unsigned cpu = 0; cpu < ncpus(); ++cpu) n += read_file(buffer_file(outdir, base, cpu)).size();
  return n;
}

// Every buffer file of the channel is there (the producer reattached to the new daemon).
bool reattached(const std::string& dir, const char* base) {
  for (unsigned cpu = 0; cpu < ncpus(); ++cpu)
    if (!exists(buffer_file(dir, base, cpu))) return false;
  return true;
}

// The index describes each output: its subbuf, tail and unindexed lines of the buffer follow
// one another from offset 0 to the file's end. Returns the bytes the resume lines say the
// daemons delivered again and were passed over.
uint64_t check_index(const std::string& index, unsigned cpu, size_t file_size) {
  uint64_t off = 0, redelivered = 0;
  std::istringstream in(index);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string kind, seq, rest;
    unsigned b;
    uint64_t at, len;
    if (!(f >> kind >> b >> seq >> at >> len) || b != cpu) continue;
    if (kind == "resume") {
      CHECK(at == off);  // a run goes on where the file ends
      while (f >> rest) {
        if (rest.rfind("redelivered=", 0) == 0) redelivered += std::stoull(rest.substr(12));
        CHECK(rest.rfind("missing=", 0) != 0);  // nothing between the runs was lost
      }
      continue;
    }
    if (kind != "subbuf" && kind != "tail" && kind != "unindexed") continue;
    CAPTURE(line);
    CHECK(at == off);
    off += len;
  }
  CHECK(off == file_size);
  return redelivered;
}

// The recording holds every record the producer committed exactly once: each file a run of
// whole, intact records, in the order they were written, and all files together every sequence
// number from 0 to written - 1 once. Returns the bytes redelivered and passed over.
uint64_t check_recording(const std::string& outdir, const char* base, uint64_t written) {
  std::map<uint64_t, unsigned> seen;
  const std::string index = read_file(outdir + "/" + base + ".index");
  uint64_t redelivered = 0;
  for (unsigned cpu = 0; cpu < ncpus(); ++cpu) {
    CAPTURE(cpu);
    const std::string data = read_file(buffer_file(outdir, base, cpu));
    size_t at = 0;
    bool any = false;
    uint64_t last = 0;
    TaggedHeader h;
    long len;
    while ((len = tagged_check(data.data() + at, data.size() - at, &h)) > 0) {
      if (any) CHECK(h.seq > last);  // in order, and never twice in a row
      any = true;
      last = h.seq;
      ++seen[h.seq];
      at += static_cast<size_t>(len);
    }
    CHECK(at == data.size());  // whole records only: nothing torn, nothing foreign
    redelivered += check_index(index, cpu, data.size());
    // The state says where the output ends.
    const std::string st = read_file(buffer_file(outdir, base, cpu) + ".state");
    relayfs::proto::RecordState s;
    if (!st.empty()) {
      REQUIRE(relayfs::proto::parse_record_state(st.data(), st.size(), &s) == 0);
      CHECK(s.exact);
      CHECK(s.offset == data.size());
      CHECK(s.buffer == cpu);
    }
  }
  uint64_t dups = 0, missing = 0;
  for (uint64_t i = 0; i < written; ++i) {
    auto it = seen.find(i);
    if (it == seen.end())
      ++missing;
    else if (it->second > 1)
      dups += it->second - 1;
  }
  CHECK(missing == 0);  // no gap
  CHECK(dups == 0);     // no overlap
  CHECK(seen.size() == written);
  CHECK((seen.empty() || seen.rbegin()->first == written - 1));
  return redelivered;
}

// Waits for the recording relayctl `pid` to end after its daemon died: exit status 1, saying so.
void expect_daemon_gone(pid_t pid, const std::string& err_file) {
  CHECK(wait_exit(pid) == 1);
  const std::string err = read_file(err_file);
  CAPTURE(err);
  CHECK(err.find("the relayfs daemon went away") != std::string::npos);
  CHECK(err.find("--resume") != std::string::npos);
}

// A relayfs that can be killed and mounted again, the producer child writing into channel
// "rec" there, and an OUTDIR for the recording.
struct Rig {
  Rig() : sh(shared_map()) {
    prod = spawn([this] { return producer(fs.dir, "rec", sh); });
    REQUIRE(wait_for([&] { return sh->ready.load() == 1; }, 20s));
  }
  ~Rig() {
    if (alive(prod)) wait_child(prod, 0s);  // a test that failed midway: killed, not left
    ::munmap(sh, sizeof(Shared));
  }

  // relayctl record [--resume] in the background.
  pid_t record(bool resume) {
    std::vector<std::string> args{"record", "-q", path, outdir};
    if (resume) args.insert(args.begin() + 2, "--resume");
    return spawn_relayctl(args, err);
  }
  // After the dead daemon's mount was taken away: a new daemon at the same place, and the
  // producer back on it.
  void remount() {
    fs.remount();
    REQUIRE(wait_for([&] { return reattached(fs.dir, "rec"); }, 20s));
  }
  // Lets the recording rec take some more, stops and closes the producer, and waits for rec to
  // end with the channel; then checks the recording. Returns the bytes passed over.
  uint64_t finish(pid_t rec) {
    const size_t before = recorded(outdir, "rec");
    CHECK(wait_for([&] { return recorded(outdir, "rec") > before + 20000; }, 20s));
    sh->stop.store(1);
    CHECK(wait_child(prod, 30s) == 0);
    CHECK(sh->close_rc.load() == 0);
    CHECK(wait_exit(rec, 30s) == 0);  // the channel closed and drained
    CHECK(read_file(err).empty());
    CHECK(sh->failed.load() == 0);
    return check_recording(outdir, "rec", sh->written.load());
  }

  Remountable fs{{}};
  TempDir out;
  const std::string outdir = out.path("rec"), err = out.path("err");
  const std::string path = fs.dir + "/rec";
  Shared* sh;
  pid_t prod = -1;
};

}  // namespace

TEST_CASE("record --resume: the daemon dies with a sub-buffer on disk but not consumed, three "
          "times; the recording holds every record exactly once") {
  // Each daemon kills itself once a recording kept two extents and the third reached the output
  // and its state but was not consumed (fault record_crash): the next daemon delivers it again.
  auto faults = std::make_unique<TestFaults>("record_crash");
  Rig rig;
  constexpr int kCrashes = 3;
  for (int round = 0; round < kCrashes; ++round) {
    CAPTURE(round);
    // --resume from the start: in an empty OUTDIR it starts the recording.
    const pid_t rec = rig.record(true);
    REQUIRE(wait_for([&] { return !alive(rig.fs.m->pid); }, 30s));  // the daemon died by itself
    expect_daemon_gone(rec, rig.err);
    rig.fs.crash();  // reaps it, takes the dead mount away
    if (round == kCrashes - 1) faults.reset();  // the last daemon lives
    rig.remount();
  }
  const uint64_t redelivered = rig.finish(rig.record(true));
  CHECK(redelivered > 0);  // the daemons did deliver again what was on disk: it was passed over
  std::printf("record_crash x%d: %" PRIu64 " records, %" PRIu64 " bytes delivered again and "
              "passed over\n",
              kCrashes, rig.sh->written.load(), redelivered);
}

TEST_CASE("record --resume: the daemon SIGKILLed mid-recording four times, and a stop; no gap "
          "and no overlap in the output") {
  Rig rig;
  // The first run is a plain recording; a restarted one goes on with --resume.
  pid_t rec = rig.record(false);
  for (int round = 0; round < 5; ++round) {
    CAPTURE(round);
    const size_t before = recorded(rig.outdir, "rec");
    // Mid-recording: after some more sub-buffers reached the disk, at a moment that varies.
    REQUIRE(wait_for([&] { return recorded(rig.outdir, "rec") > before + 20000 + 7000 * round; },
                     30s));
    std::this_thread::sleep_for(std::chrono::milliseconds(3 * round));
    if (round == 2) {
      // A stop between two crashes: a resume goes on after it as well.
      ::kill(rec, SIGINT);
      CHECK(wait_exit(rec) == 0);
    } else {
      rig.fs.crash();
      expect_daemon_gone(rec, rig.err);
      rig.remount();
    }
    rec = rig.record(true);
  }
  const uint64_t redelivered = rig.finish(rec);
  std::printf("SIGKILL x4 and a stop: %" PRIu64 " records, %" PRIu64 " bytes delivered again "
              "and passed over\n",
              rig.sh->written.load(), redelivered);
}
