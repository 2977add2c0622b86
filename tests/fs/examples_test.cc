// The example programs (examples/*.c, what a relay user would write) against a real mount: each
// runs as its own process, and what it wrote is checked through the files.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>

#include "mount.h"

using namespace relayfs::test;

namespace {

std::string example(const char* name) {
  const char* dir = std::getenv("RELAYFS_EXAMPLES");
  REQUIRE_MESSAGE(dir != nullptr, "RELAYFS_EXAMPLES must name the built examples");
  return std::string(dir) + "/" + name;
}

// Waits (up to 10 s) for a file to appear.
std::string wait_for(const std::string& path) {
  return "for i in $(seq 200); do [ -e '" + path + "' ] && break; sleep 0.05; done; ";
}

struct PerCpuRecord {  // examples/percpu_producer.c's struct record
  uint32_t cpu;
  uint32_t magic;
  uint64_t seq;
  char text[16];
};
static_assert(sizeof(PerCpuRecord) == 32);

}  // namespace

TEST_CASE("percpu_producer and poll_consumer: every CPU's records, once, in order, none lost") {
  Mount m;
  const std::string out = m.dir + "-poll.out";
  constexpr uint64_t kCount = 20000;
  // The producer blocks on a full buffer, the consumer drains all files until each ends.
  const std::string rc = capture(
      "( '" + example("percpu_producer") + "' '" + m.dir + "' pc " + std::to_string(kCount) +
      " > '" + out + ".prod'; echo $? > '" + out + ".prodrc' ) & " + wait_for(m.path("pc0")) +
      "timeout 60 '" + example("poll_consumer") + "' '" + m.dir + "' pc > '" + out +
      "'; echo $?; wait");
  CHECK(rc == "0\n");
  CHECK(slurp(out + ".prodrc") == "0\n");
  const std::string prod = slurp(out + ".prod");
  CHECK(prod.find("failed 0 lost_full 0") != std::string::npos);
  const std::string data = slurp(out);
  REQUIRE(data.size() % sizeof(PerCpuRecord) == 0);
  std::map<uint32_t, uint64_t> next;  // per CPU: the next sequence number expected
  uint64_t bad = 0;
  for (size_t at = 0; at < data.size(); at += sizeof(PerCpuRecord)) {
    PerCpuRecord r;
    std::memcpy(&r, data.data() + at, sizeof r);
    if (r.magic != 0x52454c41 || r.seq != next[r.cpu]) ++bad;
    next[r.cpu] = r.seq + 1;
  }
  CHECK(bad == 0);
  CHECK(next.size() == std::max(1u, std::thread::hardware_concurrency()));
  for (auto& [cpu, n] : next) CHECK(n == kCount);
  std::remove(out.c_str());
  std::remove((out + ".prod").c_str());
  std::remove((out + ".prodrc").c_str());
}

TEST_CASE("reserve_commit: every record built in place arrives whole") {
  // -o blocking: an empty read waits for data instead of returning 0 ("nothing now", the
  // kernel's semantics), so cat ends only when the producer closes the channel.
  Mount m({"-o", "blocking"});
  const std::string out = m.dir + "-rc";
  // The buffer holds 32 KiB and the producer blocks when it is full: cat reads meanwhile.
  const std::string got = capture("( '" + example("reserve_commit") + "' '" + m.dir +
                                  "' rc 5000; echo $? > '" + out + ".rc' ) & " +
                                  wait_for(m.path("rc0")) + "timeout 60 cat '" + m.path("rc0") +
                                  "'; wait");
  CHECK(slurp(out + ".rc") == "0\n");
  std::remove((out + ".rc").c_str());
  std::string want;
  for (int i = 0; i < 5000; ++i) {
    const int pad = i % 40;
    want += "event " + std::to_string(i) + ": payload of " + std::to_string(pad) + " bytes " +
            std::string(static_cast<size_t>(pad), 'x') + "\n";
  }
  CHECK(got == want);
}

TEST_CASE("flight_recorder: a read on demand returns the newest events, consecutive") {
  Mount m;
  const std::string base = m.dir + "-fr";
  // Start it, wait until it has written everything, read on demand, then stop it.
  const std::string got = capture("'" + example("flight_recorder") + "' '" + m.dir + "' fr 100000 > '" + base +
                                  ".out' 2> '" + base + ".err' & p=$!; for i in $(seq 400); do grep -q ready '" +
                                  base + ".out' && break; sleep 0.05; done; timeout 10 cat '" + m.path("fr0") +
                                  "'; kill -TERM $p; wait $p; echo \"exit $?\"");
  std::istringstream in(got);
  std::string line;
  long first = -1, last = -1, gaps = 0;
  std::string exit_line;
  while (std::getline(in, line)) {
    if (line.rfind("exit ", 0) == 0) {
      exit_line = line;
      continue;
    }
    const long n = line.rfind("event ", 0) == 0 ? std::atol(line.c_str() + 6) : -2;
    if (first < 0) first = n;
    if (last >= 0 && n != last + 1) ++gaps;
    last = n;
  }
  CHECK(exit_line == "exit 0");
  CHECK(last == 99999);  // the newest event is there
  CHECK(first > 0);      // the oldest were overwritten: a 16 KiB buffer holds far fewer
  CHECK(gaps == 0);
  CHECK(slurp(base + ".err").find("100000 events written") != std::string::npos);
  std::remove((base + ".out").c_str());
  std::remove((base + ".err").c_str());
}

TEST_CASE("relayfs-demo and relayfs-mmap-reader: --help, usage errors, and the demo end to end") {
  const std::string demo = std::getenv("RELAYFS_DEMO");
  const std::string reader = std::getenv("RELAYFS_MMAP_READER");
  for (const std::string& prog : {demo, reader}) {
    CAPTURE(prog);
    const std::string help = capture("'" + prog + "' --help; echo rc=$?");
    CHECK(help.find("usage: ") == 0);
    CHECK(help.find("rc=0") != std::string::npos);
  }
  CHECK(capture("'" + demo + "' -x 2>&1; echo rc=$?").find("rc=2") != std::string::npos);
  CHECK(capture("'" + reader + "' 2>&1; echo rc=$?").find("rc=2") != std::string::npos);
  // Ten records, then a flush and close: cat of the merged view gets all ten, then end of file.
  Mount m({"-o", "blocking"});
  const std::string out = capture("'" + demo + "' -r 1000 -c 10 -n d '" + m.dir +
                                  "' 2>/dev/null; cat '" + m.path("d") + "'");
  CHECK(std::count(out.begin(), out.end(), '\n') == 10);
}
