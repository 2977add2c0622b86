// The newer relayfs features through a real mount: counters as extended attributes (read with
// getfattr) and relay_buf_stats; relay_open_opts (overwrite, blocking with a time limit); the
// deliver and buf_full callbacks; relay_printf; the merged view file BASE of a channel; and mmap
// readers (relay_reader_*). Every test mounts its own tree and takes it down, even when it fails.
// No assertion depends on how fast anything runs: sleeps only give a thread the chance to block,
// and every wait has a deadline after which the test fails.
#define DOCTEST_CONFIG_IMPLEMENT
#include <dirent.h>
#include <doctest/doctest.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <relayfs/relay.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/xattr.h>

#include <atomic>
#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "core/protocol.h"
#include "core/wire.h"
#include "mount.h"

using namespace relayfs::test;
namespace proto = relayfs::proto;

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

unsigned ncpus() {
  return static_cast<unsigned>(std::max(1L, ::sysconf(_SC_NPROCESSORS_CONF)));
}

// Numbered records, each a whole line: "rec 000042\n" (11 bytes).
constexpr size_t kRec = 11;
std::string record(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "rec %06d\n", i);
  return buf;
}

// A writer's tagged record: "c<writer> <seq>\n".
std::string tagged(unsigned writer, int seq) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "c%u %d\n", writer, seq);
  return buf;
}

// A global channel (one file, BASE0, whatever CPU writes), files of the given mode.
template <mode_t Mode>
int make_global(const char*, const char*, mode_t* mode, rchan_buf*, int* is_global) {
  *is_global = 1;
  *mode = Mode;
  return 0;
}

rchan* open_global(const std::string& dir, const char* base, size_t subbuf, size_t n,
                   rchan_callbacks cb = {}, const relay_options* opts = nullptr,
                   void* priv = nullptr) {
  if (!cb.create_buf_file) cb.create_buf_file = &make_global<0440>;
  rchan* c = relay_open_opts(base, dir.c_str(), subbuf, n, &cb, priv, opts);
  REQUIRE_MESSAGE(c != nullptr, "relay_open_opts: " << std::strerror(errno));
  return c;
}

std::string write_records(rchan* c, int from, int to) {
  std::string all;
  for (int i = from; i < to; ++i) {
    const std::string r = record(i);
    REQUIRE(relay_write(c, r.data(), r.size()) == 0);
    all += r;
  }
  return all;
}

// Waits for pred with a deadline; returns its last answer.
template <typename P>
bool wait_for(P pred, std::chrono::milliseconds limit = 5000ms) {
  const auto until = Clock::now() + limit;
  while (!pred()) {
    if (Clock::now() > until) return pred();
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

// Reads n bytes from an open relay file in reads of at most chunk bytes. The mount does not
// block, so an empty read returns 0: retried until a deadline.
std::string read_exactly(int fd, size_t n, size_t chunk) {
  std::string out;
  std::vector<char> buf(chunk);
  const auto until = Clock::now() + 10s;
  while (out.size() < n && Clock::now() < until) {
    const ssize_t k = ::read(fd, buf.data(), std::min(chunk, n - out.size()));
    REQUIRE(k >= 0);
    if (k == 0) std::this_thread::sleep_for(1ms);
    out.append(buf.data(), static_cast<size_t>(k));
  }
  return out;
}

off_t file_size(const std::string& path) {
  struct stat st;
  REQUIRE_MESSAGE(::stat(path.c_str(), &st) == 0, path << ": " << std::strerror(errno));
  return st.st_size;
}

// ---- Counters -----------------------------------------------------------------------------------

// Every attribute a relay file has (kStatNames in src/fs/ops.cc; struct relay_stats).
const char* const kAttrNames[] = {"subbuf_size",      "n_subbufs",        "mode",
                                  "blocking",         "subbufs_produced", "subbufs_consumed",
                                  "bytes_produced",   "bytes_consumed",   "lost_full",
                                  "lost_too_big",     "lost_wrap",        "overruns",
                                  "lost_uncommitted", "corrupt"};

using Attrs = std::map<std::string, std::string>;

// `getfattr -d -m - FILE`, parsed: name -> value (quotes removed).
Attrs getfattr(const std::string& path) {
  const std::string out = capture("getfattr -d -m - '" + path + "' 2>/dev/null");
  Attrs a;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    if (eq == std::string::npos) {
      a[line] = "";
      continue;
    }
    std::string v = line.substr(eq + 1);
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
    a[line.substr(0, eq)] = v;
  }
  return a;
}

std::string text(const Attrs& a, const std::string& name) {
  const auto it = a.find("user.relayfs." + name);
  REQUIRE_MESSAGE(it != a.end(), "getfattr shows no user.relayfs." << name);
  return it->second;
}

unsigned long long num(const Attrs& a, const std::string& name) {
  const std::string v = text(a, name);
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  REQUIRE_MESSAGE((!v.empty() && *end == '\0'), "user.relayfs." << name << "=\"" << v << "\"");
  return n;
}

relay_stats stats_of(rchan* c, unsigned i = 0) {
  relay_stats st{};
  REQUIRE(relay_buf_stats(c->buf[i], &st) == 0);
  return st;
}

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
}

// ---- What a buffer holds ------------------------------------------------------------------------

// The sub-buffers a single writer's records end up in, for records that always fit a sub-buffer
// and a channel without header bytes: subs[seq] is closed sub-buffer seq, cur the one being
// written.
struct Model {
  explicit Model(size_t subbuf_size) : size(subbuf_size) {}
  size_t size;
  std::vector<std::string> subs;
  std::string cur;
  bool stopped = false;  // the last switch was refused: the next success begins a sub-buffer
  void written(const std::string& r) {
    if (!stopped && cur.size() + r.size() > size) {
      subs.push_back(cur);
      cur.clear();
    }
    stopped = false;
    cur += r;
  }
  void refused() {  // the record did not fit, and the switch to a new sub-buffer was refused
    if (stopped) return;
    subs.push_back(cur);
    cur.clear();
    stopped = true;
  }
};

// ---- Threads on a given CPU ---------------------------------------------------------------------

bool pin_to(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set) == 0 &&
         ::sched_getcpu() == static_cast<int>(cpu);
}

// Writes tagged(writer, from..to-1) from a thread pinned to cpu; returns the bytes written.
std::string write_on(rchan* c, unsigned cpu, unsigned writer, int from, int to) {
  std::string out;
  bool pinned = false;
  int failed = 0;
  std::thread t([&] {
    pinned = pin_to(cpu);
    if (!pinned) return;
    for (int s = from; s < to; ++s) {
      const std::string r = tagged(writer, s);
      if (relay_write(c, r.data(), r.size()) == 0)
        out += r;
      else
        ++failed;
    }
  });
  t.join();
  REQUIRE_MESSAGE(pinned, "cannot run a thread on CPU " << cpu);
  CHECK(failed == 0);
  return out;
}

// Checks a stream of tagged records: every line whole ("c<w> <seq>"), and each writer's
// sequence numbers in order from first[w]. Returns how many records of each writer it holds.
std::vector<int> check_tagged(const std::string& s, unsigned writers, std::vector<int> first = {}) {
  std::vector<int> next = first.empty() ? std::vector<int>(writers, 0) : first;
  int bad = 0;
  size_t at = 0;
  while (at < s.size()) {
    const size_t nl = s.find('\n', at);
    if (nl == std::string::npos) {
      ++bad;
      MESSAGE("a record cut short at the end: \"" << s.substr(at) << "\"");
      break;
    }
    const std::string line = s.substr(at, nl + 1 - at);
    unsigned w = 0;
    int seq = -1;
    if (std::sscanf(line.c_str(), "c%u %d", &w, &seq) != 2 || w >= writers ||
        tagged(w, seq) != line) {
      if (++bad <= 5) MESSAGE("not a whole record: \"" << line.substr(0, line.size() - 1) << "\"");
    } else if (seq != next[w]) {
      if (++bad <= 5)
        MESSAGE("writer " << w << ": record " << seq << " where " << next[w] << " was due");
      next[w] = seq + 1;
    } else {
      ++next[w];
    }
    at = nl + 1;
  }
  CHECK(bad == 0);
  for (unsigned w = 0; w < writers && !first.empty(); ++w) next[w] -= first[w];
  return next;
}

// ---- Another user -------------------------------------------------------------------------------

constexpr uid_t kNobody = 65534;

// Runs f in a child process as uid/gid nobody; returns what f returned (an errno, 0 for success).
template <typename F>
int as_nobody(F f) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(kNobody) != 0 || ::setuid(kNobody) != 0)
      ::_exit(250);
    ::prctl(PR_SET_DUMPABLE, 1);  // so that /proc/self is its own again after setuid
    ::_exit(f());
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 251;
}

// A raw relay_reader_open request to the daemon, bypassing open(2): returns the daemon's answer
// as an errno (0: it handed out the buffer), or 200+ when the exchange itself failed.
int raw_reader_open(const std::string& control, uint64_t ino) {
  const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return 201;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, control.data() + 1, control.size() - 1);
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + control.size());
  if (::connect(s, reinterpret_cast<sockaddr*>(&addr), len) != 0) return 202;
  if (proto::send_message(s, proto::encode(proto::ReaderOpenRequest{ino}, 1)) != 0) return 203;
  proto::Received r;
  if (proto::recv_message(s, &r, 1) != 1) return 204;
  proto::ReaderOpenReply reply;
  if (proto::decode(r.payload.data(), r.payload.size(), &reply) != 0) return 205;
  ::close(s);
  return -reply.status;
}

std::string control_name(const std::string& dir) {
  char name[108];
  const ssize_t n = ::getxattr(dir.c_str(), "user.relayfs.control", name, sizeof name);
  REQUIRE(n > 1);
  return std::string(name, static_cast<size_t>(n));
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

std::atomic<int> g_mapped{0}, g_unmapped{0}, g_filp{0};
std::atomic<rchan_buf*> g_mapped_buf{nullptr};

void on_mapped(rchan_buf* buf, void* filp) {
  g_mapped_buf = buf;
  if (filp) ++g_filp;
  ++g_mapped;
}
void on_unmapped(rchan_buf*, void* filp) {
  if (filp) ++g_filp;
  ++g_unmapped;
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
  CHECK(num(a, "bytes_produced") == all.size());
  CHECK(num(a, "bytes_consumed") == kRead);
  CHECK(num(a, "subbufs_produced") ==
        (kRecords - 1) / per);  // a switch per record that did not fit
  CHECK(num(a, "subbufs_consumed") == kRead / used);
  for (const char* zero :
       {"lost_full", "lost_too_big", "lost_wrap", "overruns", "lost_uncommitted", "corrupt"}) {
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
  const relay_options o{RELAY_OVERWRITE, 0};
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
    const relay_options o{k.flags, 1000};
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
  for (unsigned flags : {0x4u, 0x80000000u, RELAY_OVERWRITE | RELAY_BLOCKING,
                         RELAY_OVERWRITE | RELAY_BLOCKING | 0x10u}) {
    CAPTURE(flags);
    const relay_options o{flags, 100};
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
  const relay_options zero{0, 0};
  c = relay_open_opts("zero", m.dir.c_str(), 4096, 4, nullptr, nullptr, &zero);
  REQUIRE(c != nullptr);
  CHECK(text(getfattr(m.path("zero0")), "blocking") == "0");
  CHECK(relay_close(c) == 0);
}

TEST_CASE("RELAY_OVERWRITE without a subbuf_start callback never fails a write") {
  Mount m;
  const relay_options o{RELAY_OVERWRITE, 0};
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
  const relay_options o{RELAY_BLOCKING, timeout_ms};
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
  const relay_options o{RELAY_BLOCKING, 50};
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
  const relay_options o{RELAY_OVERWRITE, 0};
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
  const relay_options o{RELAY_OVERWRITE, 0};
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
  const relay_options o{RELAY_OVERWRITE, 0};
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

// ================================================================================================
// 5. The merged view
// ================================================================================================

TEST_CASE(
    "the merged view gives every CPU's records once, whole and in order, read 7 bytes at a time") {
  Mount m;
  const unsigned n = ncpus();
  const relay_options o{RELAY_BLOCKING, 30000};  // small buffers, and no loss: writers wait
  rchan* c = relay_open_opts("mv", m.dir.c_str(), 512, 4, nullptr, nullptr, &o);
  REQUIRE_MESSAGE(c != nullptr, std::strerror(errno));
  REQUIRE(c->n_buffers == n);
  for (unsigned i = 0; i < n; ++i) CHECK(exists(m.path("mv" + std::to_string(i))));
  CHECK(exists(m.path("mv")));
  CHECK_FALSE(exists(m.path("mv" + std::to_string(n))));

  constexpr int kPer = 3000;
  size_t expected = 0;
  for (unsigned w = 0; w < n; ++w)
    for (int s = 0; s < kPer; ++s) expected += tagged(w, s).size();
  std::atomic<int> unpinned{0}, moved{0}, failed{0}, done{0};
  std::vector<std::thread> writers;
  for (unsigned w = 0; w < n; ++w) {
    writers.emplace_back([&, w] {
      if (!pin_to(w)) {
        ++unpinned;
        ++done;
        return;
      }
      for (int s = 0; s < kPer; ++s) {
        if (::sched_getcpu() != static_cast<int>(w)) ++moved;
        const std::string r = tagged(w, s);
        if (relay_write(c, r.data(), r.size()) != 0) ++failed;
      }
      ++done;
    });
  }
  const int fd = ::open(m.path("mv").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  std::string got;
  char buf[7];
  int idle_after_done = 0;
  const auto until = Clock::now() + 120s;
  while (got.size() < expected && Clock::now() < until && idle_after_done < 1000) {
    const ssize_t k = ::read(fd, buf, sizeof buf);
    if (k < 0) {  // no REQUIRE while the writers run
      FAIL_CHECK("read: " << std::strerror(errno));
      break;
    }
    if (k == 0) {
      if (done == static_cast<int>(n)) ++idle_after_done;
      std::this_thread::sleep_for(500us);
      continue;
    }
    got.append(buf, static_cast<size_t>(k));
  }
  for (auto& t : writers) t.join();
  ::close(fd);
  REQUIRE(unpinned == 0);
  CHECK(moved == 0);
  CHECK(failed == 0);
  CHECK(got.size() == expected);
  const std::vector<int> counts = check_tagged(got, n);
  for (unsigned w = 0; w < n; ++w) {
    CAPTURE(w);
    CHECK(counts[w] == kPer);
  }

  // Its size is the sum of the per-CPU files' sizes: every byte written, no padding.
  off_t sum = 0;
  for (unsigned i = 0; i < n; ++i) {
    const off_t s = file_size(m.path("mv" + std::to_string(i)));
    CHECK(s > 0);
    sum += s;
  }
  CHECK(file_size(m.path("mv")) == sum);
  CHECK(sum == static_cast<off_t>(expected));
  const Attrs a = getfattr(m.path("mv"));
  CHECK(num(a, "bytes_produced") == expected);
  CHECK(num(a, "bytes_consumed") == expected);
  CHECK(num(a, "lost_full") == 0);
  CHECK(relay_close(c) == 0);
  // Everything was read: the files go, the merged view with them.
  CHECK(wait_for([&] { return !exists(m.path("mv")) && !exists(m.path("mv0")); }));
}

TEST_CASE("the merged view and the per-CPU files share one read position") {
  Mount m;
  const unsigned n = ncpus();
  rchan* c = relay_open("sp", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  const unsigned last = n - 1;
  const std::string last_file = m.path("sp" + std::to_string(last));

  // Read part through the merged view: the rest, and only the rest, through the CPU's file.
  const std::string a = write_on(c, last, 0, 0, 300);
  int fd = ::open(m.path("sp").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  const std::string head = read_exactly(fd, 700, 700);
  ::close(fd);
  CHECK(head == a.substr(0, 700));
  CHECK(slurp(last_file) == a.substr(700));
  CHECK(slurp(m.path("sp")).empty());

  // And the other way round, stopping in the middle of a record.
  const std::string b = write_on(c, last, 0, 300, 600);
  fd = ::open(last_file.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  const std::string part = read_exactly(fd, 1001, 1001);
  ::close(fd);
  CHECK(part == b.substr(0, 1001));
  CHECK(slurp(m.path("sp"), 7) == b.substr(1001));
  CHECK(slurp(last_file).empty());

  // A merged read that stops mid-record finishes that record before any other CPU's bytes.
  if (n > 1) {
    const std::string x = write_on(c, last, 0, 600, 700);
    const std::string y = write_on(c, 0, 1, 0, 100);
    const std::string got = slurp(m.path("sp"), 5);
    CHECK(got.size() == x.size() + y.size());
    const std::vector<int> counts = check_tagged(got, 2, {600, 0});
    CHECK(counts[0] == 100);
    CHECK(counts[1] == 100);
  }
  CHECK(relay_close(c) == 0);
}

TEST_CASE("cat reads the merged view: every record of every CPU") {
  Mount m;
  const unsigned n = ncpus();
  rchan* c = relay_open("ct", m.dir.c_str(), 4096, 8, nullptr, nullptr);
  REQUIRE(c != nullptr);
  size_t total = 0;
  for (unsigned w = 0; w < n; ++w) total += write_on(c, w, w, 0, 1000).size();
  const std::string got = capture("cat '" + m.path("ct") + "'");
  CHECK(got.size() == total);
  const std::vector<int> counts = check_tagged(got, n);
  for (unsigned w = 0; w < n; ++w) CHECK(counts[w] == 1000);
  CHECK(capture("cat '" + m.path("ct") + "'").empty());
  CHECK(relay_close(c) == 0);
}

TEST_CASE(
    "with -o blocking, a read of the merged view waits for any CPU's record and ends at close") {
  Mount m({"-o", "blocking"});
  const unsigned n = ncpus();
  rchan* c = relay_open("bw", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  // Shared with the reader thread, which is left behind (detached) if it never returns.
  struct State {
    std::atomic<int> stage{0};  // 1: first read returned, 2: second read returned
    std::string first;
    ssize_t second = -2;
  };
  auto st = std::make_shared<State>();
  std::thread reader([st, path = m.path("bw")] {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    char buf[100];
    const ssize_t k = ::read(fd, buf, sizeof buf);
    if (k > 0) st->first.assign(buf, static_cast<size_t>(k));
    st->stage = 1;
    st->second = ::read(fd, buf, sizeof buf);
    st->stage = 2;
    ::close(fd);
  });
  std::this_thread::sleep_for(100ms);  // let it block
  CHECK(st->stage == 0);
  const std::string rec = write_on(c, n - 1, 0, 0, 1);
  CHECK(wait_for([&] { return st->stage >= 1; }));
  CHECK(st->first == rec);
  std::this_thread::sleep_for(100ms);
  CHECK(st->stage == 1);  // nothing more: it waits again
  CHECK(relay_close(c) == 0);
  const bool ended = wait_for([&] { return st->stage == 2; });
  CHECK(ended);
  if (ended) {
    reader.join();
    CHECK(st->second == 0);
  } else {
    reader.detach();  // the mount's teardown ends its read
  }
}

TEST_CASE("the merged view goes with the other files once the channel is closed and drained") {
  Mount m;
  const unsigned n = ncpus();
  auto all_gone = [&](const std::string& base) {
    if (exists(m.path(base))) return false;
    for (unsigned i = 0; i < n; ++i)
      if (exists(m.path(base + std::to_string(i)))) return false;
    return true;
  };
  auto all_there = [&](const std::string& base) {
    if (!exists(m.path(base))) return false;
    for (unsigned i = 0; i < n; ++i)
      if (!exists(m.path(base + std::to_string(i)))) return false;
    return true;
  };
  SUBCASE("nothing unread: at once") {
    rchan* c = relay_open("g1", m.dir.c_str(), 4096, 4, nullptr, nullptr);
    REQUIRE(c != nullptr);
    CHECK(all_there("g1"));
    CHECK(relay_close(c) == 0);
    CHECK(wait_for([&] { return all_gone("g1"); }));
  }
  SUBCASE("drained through the merged view") {
    rchan* c = relay_open("g2", m.dir.c_str(), 4096, 4, nullptr, nullptr);
    REQUIRE(c != nullptr);
    size_t total = 0;
    for (unsigned w = 0; w < n; ++w) total += write_on(c, w, w, 0, 50).size();
    CHECK(relay_close(c) == 0);
    CHECK(all_there("g2"));
    const std::string got = slurp(m.path("g2"));
    CHECK(got.size() == total);
    check_tagged(got, n);
    CHECK(wait_for([&] { return all_gone("g2"); }));
  }
  SUBCASE("drained through the per-CPU files") {
    rchan* c = relay_open("g3", m.dir.c_str(), 4096, 4, nullptr, nullptr);
    REQUIRE(c != nullptr);
    std::vector<std::string> wrote;
    for (unsigned w = 0; w < n; ++w) wrote.push_back(write_on(c, w, w, 0, 50));
    CHECK(relay_close(c) == 0);
    CHECK(all_there("g3"));
    for (unsigned i = 0; i < n; ++i) CHECK(slurp(m.path("g3" + std::to_string(i))) == wrote[i]);
    CHECK(wait_for([&] { return all_gone("g3"); }));
  }
}

// ================================================================================================
// 6. mmap readers
// ================================================================================================

TEST_CASE(
    "relay_reader_next hands out closed sub-buffers oldest first until consumed; poll waits for "
    "one") {
  Mount m;
  constexpr size_t kSub = 256, kN = 4;  // 23 records of 11 bytes per sub-buffer, 3 bytes padding
  rchan* c = open_global(m.dir, "mm", kSub, kN);
  Model model(kSub);
  int i = 0;
  auto put = [&]() {
    const std::string r = record(i++);
    const int rc = relay_write(c, r.data(), r.size());
    if (rc == 0) {
      model.written(r);
    } else {
      REQUIRE(errno == ENOSPC);
      model.refused();
    }
    return rc;
  };
  relay_reader* r = relay_reader_open(m.path("mm0").c_str());
  REQUIRE_MESSAGE(r != nullptr, std::strerror(errno));
  CHECK(r->subbuf_size == kSub);
  CHECK(r->n_subbufs == kN);
  CHECK(r->cpu == 0);
  CHECK(r->fd >= 0);
  REQUIRE(r->base != nullptr);
  const char* base = static_cast<const char*>(r->base);

  relay_subbuf sb{};
  CHECK(relay_reader_next(r, &sb) == 0);  // nothing written
  while (model.subs.size() < 3 || model.cur.size() < 5 * kRec) REQUIRE(put() == 0);
  REQUIRE(model.subs.size() == 3);
  pollfd ready{r->fd, POLLIN, 0};
  CHECK(::poll(&ready, 1, 0) == 1);  // whole sub-buffers are there
  CHECK((ready.revents & POLLIN) != 0);

  for (size_t k = 0; k < 3; ++k) {
    CAPTURE(k);
    REQUIRE(relay_reader_next(r, &sb) == 1);
    CHECK(sb.seq == k);
    CHECK(sb.index == k % kN);
    CHECK(sb.data == base + sb.index * kSub);
    CHECK(sb.length == model.subs[k].size());
    CHECK(sb.padding == kSub - model.subs[k].size());
    CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == model.subs[k]);
    CHECK(relay_reader_valid(r, &sb) == 1);  // no-overwrite: nothing can have lapped it
    relay_subbuf again{};
    REQUIRE(relay_reader_next(r, &again) == 1);  // not consumed: the same one again
    CHECK(again.seq == sb.seq);
    CHECK(again.data == sb.data);
    REQUIRE(relay_reader_consumed(r, 1) == 0);
  }
  // Only the partially filled sub-buffer is left: never handed out.
  CHECK(relay_reader_next(r, &sb) == 0);
  // Released by the daemon (relay_reader_consumed returns once they are): its counters say so.
  CHECK(wait_for([&] {
    relay_stats st{};
    return relay_reader_stats(r, &st) == 0 && st.subbufs_consumed == 3;
  }));
  pollfd p{r->fd, POLLIN, 0};
  CHECK(::poll(&p, 1, 0) == 0);

  // A poller waits: the writer completing the current sub-buffer wakes it.
  std::atomic<bool> returned{false};
  int prc = -1;
  short revents = 0;
  std::thread poller([&] {
    pollfd q{r->fd, POLLIN, 0};
    prc = ::poll(&q, 1, 5000);
    revents = q.revents;
    returned = true;
  });
  std::this_thread::sleep_for(100ms);  // let it block (if it does not, the check below fails)
  CHECK_FALSE(returned.load());
  int put_failed = 0;  // no REQUIRE while the poller runs
  while (model.subs.size() < 4 && !put_failed) put_failed = put();
  poller.join();
  REQUIRE(put_failed == 0);
  CHECK(prc == 1);
  CHECK((revents & POLLIN) != 0);
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 3);
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == model.subs[3]);

  // Keep it unconsumed and fill the buffer until the writer is refused.
  int refused = 0;
  for (int guard = 0; guard < 1000 && !refused; ++guard) refused = put() != 0;
  REQUIRE(refused);
  CHECK(relay_buf_full(c->buf[0]) == 1);
  REQUIRE(model.subs.size() == 3 + kN);
  // The oldest unconsumed sub-buffer is still the one it was, and intact.
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 3);
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == model.subs[3]);
  CHECK(relay_reader_valid(r, &sb) == 1);

  // Consuming it frees room: when relay_reader_consumed returns, the writer writes again.
  REQUIRE(relay_reader_consumed(r, 1) == 0);
  CHECK(put() == 0);
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 4);
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == model.subs[4]);
  relay_stats st{};
  REQUIRE(relay_reader_stats(r, &st) == 0);
  CHECK(st.subbuf_size == kSub);
  CHECK(st.n_subbufs == kN);
  CHECK(st.subbufs_produced == model.subs.size());
  CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE(
    "buf_mapped fires for the first reader of a buffer, buf_unmapped when the last one goes") {
  g_mapped = 0;
  g_unmapped = 0;
  g_filp = 0;
  g_mapped_buf = nullptr;
  Mount m;
  rchan_callbacks cb{};
  cb.buf_mapped = &on_mapped;
  cb.buf_unmapped = &on_unmapped;
  rchan* c = open_global(m.dir, "bm", 4096, 4, cb);
  const std::string file = m.path("bm0");
  SUBCASE("an mmap reader alone") {
    relay_reader* r = relay_reader_open(file.c_str());
    REQUIRE(r != nullptr);
    CHECK(wait_for([] { return g_mapped == 1; }));
    CHECK(g_mapped_buf.load() == c->buf[0]);
    CHECK(g_unmapped == 0);
    CHECK(relay_reader_close(r) == 0);
    CHECK(wait_for([] { return g_unmapped == 1; }));
    CHECK(g_mapped == 1);
  }
  SUBCASE("after a read(2) reader, and outliving it") {
    const int fd = ::open(file.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    CHECK(wait_for([] { return g_mapped == 1; }));
    relay_reader* r = relay_reader_open(file.c_str());
    REQUIRE(r != nullptr);
    ::close(fd);
    std::this_thread::sleep_for(200ms);  // gives wrong events the time to arrive
    CHECK(g_mapped == 1);
    CHECK(g_unmapped == 0);
    CHECK(relay_reader_close(r) == 0);
    CHECK(wait_for([] { return g_unmapped == 1; }));
    CHECK(g_mapped == 1);
  }
  SUBCASE("the merged view is not a buffer's file") {
    const int fd = ::open(m.path("bm").c_str(), O_RDONLY);
    REQUIRE(fd >= 0);
    std::this_thread::sleep_for(200ms);
    CHECK(g_mapped == 0);
    ::close(fd);
  }
  CHECK(g_filp == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("an mmap reader's mapping is read-only") {
  Mount m;
  rchan* c = open_global(m.dir, "ro", 4096, 4);
  write_records(c, 0, 10);
  relay_reader* r = relay_reader_open(m.path("ro0").c_str());
  REQUIRE(r != nullptr);
  const long page = ::sysconf(_SC_PAGESIZE);
  REQUIRE(reinterpret_cast<uintptr_t>(r->base) % static_cast<uintptr_t>(page) == 0);
  errno = 0;
  CHECK(::mprotect(const_cast<void*>(r->base), r->n_subbufs * r->subbuf_size,
                   PROT_READ | PROT_WRITE) == -1);
  CHECK(errno == EACCES);
  CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("relay_reader_open refuses the merged view and files outside relayfs") {
  Mount m;
  rchan* c = open_global(m.dir, "rf", 4096, 4);
  errno = 0;
  CHECK(relay_reader_open(m.path("rf").c_str()) == nullptr);
  CHECK(errno == EINVAL);
  errno = 0;
  CHECK(relay_reader_open(m.path("missing0").c_str()) == nullptr);
  CHECK(errno == ENOENT);
  char tmpl[] = "/tmp/relayfs-notrelay-XXXXXX";
  const int tfd = ::mkstemp(tmpl);
  REQUIRE(tfd >= 0);
  ::close(tfd);
  errno = 0;
  relay_reader* r = relay_reader_open(tmpl);
  const int err = errno;
  ::unlink(tmpl);
  CHECK(r == nullptr);
  CHECK((err == ENOTSUP || err == ENOENT));
  errno = 0;
  CHECK(relay_reader_open("/nonexistent/relayfs/file0") == nullptr);
  CHECK(errno == ENOENT);
  // The real one works.
  r = relay_reader_open(m.path("rf0").c_str());
  CHECK(r != nullptr);
  if (r) CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
  // A per-CPU file maps that CPU's buffer.
  c = relay_open("pc", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  const unsigned last = c->n_buffers - 1;
  r = relay_reader_open(m.path("pc" + std::to_string(last)).c_str());
  REQUIRE(r != nullptr);
  CHECK(r->cpu == last);
  CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("relay_reader_open checks read permission, in the kernel and in the daemon") {
  if (::getuid() != 0) {
    MESSAGE("skipped: needs root to become another user");
    return;
  }
  Mount m({"-o", "allow_other"});
  struct stat root;
  REQUIRE(::stat(m.dir.c_str(), &root) == 0);
  REQUIRE((root.st_mode & S_IXOTH) != 0);  // nobody may search the mount's root
  rchan_callbacks secret_cb{}, public_cb{};
  secret_cb.create_buf_file = &make_global<0400>;
  public_cb.create_buf_file = &make_global<0444>;
  rchan* sec = open_global(m.dir, "sec", 4096, 4, secret_cb);
  rchan* pub = open_global(m.dir, "pub", 4096, 4, public_cb);
  write_records(sec, 0, 10);
  write_records(pub, 0, 10);
  REQUIRE(relay_flush(pub) == 0);
  struct stat st;
  REQUIRE(::stat(m.path("sec0").c_str(), &st) == 0);
  REQUIRE((st.st_mode & 07777) == 0400);
  REQUIRE(st.st_uid == 0);
  const uint64_t sec_ino = st.st_ino;
  REQUIRE(::stat(m.path("pub0").c_str(), &st) == 0);
  const uint64_t pub_ino = st.st_ino;
  const std::string sec0 = m.path("sec0"), pub0 = m.path("pub0");

  CHECK(as_nobody([&] {
          relay_reader* r = relay_reader_open(sec0.c_str());
          if (!r) return errno;
          relay_reader_close(r);
          return 0;
        }) == EACCES);
  // The other user does get a file it may read: the refusal above is about the file's mode.
  CHECK(as_nobody([&] {
          relay_reader* r = relay_reader_open(pub0.c_str());
          if (!r) return errno;
          relay_subbuf sb{};
          const int rc = relay_reader_next(r, &sb) == 1 && sb.length == 10 * kRec ? 0 : 99;
          relay_reader_close(r);
          return rc;
        }) == 0);
  // The daemon checks by itself: a raw request, without open(2), gets the same answers.
  const std::string control = control_name(m.dir);
  CHECK(as_nobody([&] { return raw_reader_open(control, sec_ino); }) == EACCES);
  CHECK(as_nobody([&] { return raw_reader_open(control, pub_ino); }) == 0);
  // The buffer descriptor a reader holds cannot be reopened for writing either.
  CHECK(as_nobody([&] {
          relay_reader* r = relay_reader_open(pub0.c_str());
          if (!r) return errno;
          int writable = 97, memfds = 0;  // 97: /proc/self/fd could not be listed
          if (DIR* d = ::opendir("/proc/self/fd")) {
            writable = 0;
            while (dirent* e = ::readdir(d)) {
              const std::string link = std::string("/proc/self/fd/") + e->d_name;
              char target[256] = {};
              if (::readlink(link.c_str(), target, sizeof target - 1) <= 0) continue;
              if (std::strstr(target, "memfd:") == nullptr) continue;
              ++memfds;
              const int w = ::open(link.c_str(), O_RDWR);
              if (w >= 0) {
                writable = 98;
                ::close(w);
              }
            }
            ::closedir(d);
          }
          relay_reader_close(r);
          return writable ? writable : memfds ? 0 : 96;  // 96: no buffer descriptor found
        }) == 0);
  CHECK(relay_close(sec) == 0);
  CHECK(relay_close(pub) == 0);
}

TEST_CASE("without allow_other, another user cannot map a relay file through the daemon either") {
  if (::getuid() != 0) {
    MESSAGE("skipped: needs root to become another user");
    return;
  }
  Mount m;
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0444>;
  rchan* c = open_global(m.dir, "na", 4096, 4, cb);
  write_records(c, 0, 10);
  struct stat st;
  REQUIRE(::stat(m.path("na0").c_str(), &st) == 0);
  const uint64_t ino = st.st_ino;
  const std::string file = m.path("na0");
  // open(2) refuses: the mount is its owner's alone.
  CHECK(as_nobody([&] { return ::open(file.c_str(), O_RDONLY) < 0 ? errno : 0; }) == EACCES);
  // So must the daemon, which hands out the same data.
  const std::string control = control_name(m.dir);
  CHECK(as_nobody([&] { return raw_reader_open(control, ino); }) == EACCES);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("mmap readers and read(2) readers of a buffer share one position") {
  Mount m;
  constexpr size_t kSub = 256;
  rchan* c = open_global(m.dir, "sh", kSub, 8);
  Model model(kSub);
  int i = 0;
  while (model.subs.size() < 5) {
    const std::string rec = record(i++);
    REQUIRE(relay_write(c, rec.data(), rec.size()) == 0);
    model.written(rec);
  }
  relay_reader* r = relay_reader_open(m.path("sh0").c_str());
  REQUIRE(r != nullptr);
  relay_subbuf sb{};
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 0);
  // read(2) takes sub-buffers 0 and 1: the mmap reader goes on with 2.
  const int fd = ::open(m.path("sh0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  const size_t two = model.subs[0].size() + model.subs[1].size();
  CHECK(read_exactly(fd, two, two) == model.subs[0] + model.subs[1]);
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 2);
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == model.subs[2]);
  // The mmap reader consumes 2: read(2) goes on with 3.
  REQUIRE(relay_reader_consumed(r, 1) == 0);
  relay_stats st{};
  CHECK(wait_for([&] { return relay_reader_stats(r, &st) == 0 && st.subbufs_consumed == 3; }));
  CHECK(read_exactly(fd, model.subs[3].size(), 4096) == model.subs[3]);
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 4);
  ::close(fd);
  CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("after relay_reset an mmap reader starts again at the new data") {
  Mount m;
  constexpr size_t kSub = 256;
  rchan* c = open_global(m.dir, "rs", kSub, 4);
  relay_reader* r = relay_reader_open(m.path("rs0").c_str());
  REQUIRE(r != nullptr);
  write_records(c, 0, 50);  // sub-buffers 0 and 1 closed
  relay_subbuf sb{};
  REQUIRE(relay_reader_next(r, &sb) == 1);
  REQUIRE(relay_reader_consumed(r, 1) == 0);
  relay_stats st{};
  CHECK(wait_for([&] { return relay_reader_stats(r, &st) == 0 && st.subbufs_consumed == 1; }));
  REQUIRE(relay_reset(c) == 0);
  Model model(kSub);
  for (int i = 1000; model.subs.empty(); ++i) {
    const std::string rec = record(i);
    REQUIRE(relay_write(c, rec.data(), rec.size()) == 0);
    model.written(rec);
  }
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 0);
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == model.subs[0]);
  REQUIRE(relay_reader_consumed(r, 1) == 0);
  CHECK(wait_for([&] { return relay_reader_stats(r, &st) == 0 && st.subbufs_consumed == 1; }));
  // read(2) goes on after what the mmap reader consumed.
  CHECK(slurp(m.path("rs0")) == model.cur);
  CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE(
    "overwrite mode: relay_reader_valid tells a lapped sub-buffer; relay_reader_next skips to an "
    "intact one") {
  Mount m;
  constexpr size_t kSub = 256, kN = 4;
  const relay_options o{RELAY_OVERWRITE, 0};
  rchan* c = open_global(m.dir, "ov", kSub, kN, {}, &o);
  relay_reader* r = relay_reader_open(m.path("ov0").c_str());
  REQUIRE(r != nullptr);
  Model model(kSub);
  int i = 0;
  auto put_until = [&](size_t closed) {
    while (model.subs.size() < closed) {
      const std::string rec = record(i++);
      REQUIRE(relay_write(c, rec.data(), rec.size()) == 0);
      model.written(rec);
    }
  };
  put_until(1);
  relay_subbuf sb{};
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 0);
  const std::string copy(static_cast<const char*>(sb.data), sb.length);
  CHECK(copy == model.subs[0]);
  CHECK(relay_reader_valid(r, &sb) == 1);
  put_until(kN - 1);  // sub-buffer kN - 1 being written: slot 0 not reused yet
  CHECK(relay_reader_valid(r, &sb) == 1);
  put_until(3 * kN);  // lapped, several times
  CHECK(relay_reader_valid(r, &sb) == 0);
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) != copy);

  // next skips what was lapped: the oldest sub-buffer that can still be whole.
  relay_subbuf nb{};
  REQUIRE(relay_reader_next(r, &nb) == 1);
  const unsigned long long produced = stats_of(c).subbufs_produced;
  CHECK(produced == model.subs.size());
  CHECK(nb.seq > 0);
  CHECK(nb.seq + kN > produced);
  REQUIRE(nb.seq < model.subs.size());
  CHECK(std::string(static_cast<const char*>(nb.data), nb.length) == model.subs[nb.seq]);
  CHECK(relay_reader_valid(r, &nb) == 1);  // nothing was written since
  // The skipped ones are counted as overruns.
  REQUIRE(relay_reader_consumed(r, 1) == 0);
  relay_stats st{};
  CHECK(wait_for([&] { return relay_reader_stats(r, &st) == 0 && st.subbufs_consumed > nb.seq; }));
  CHECK(st.overruns == nb.seq);
  CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
}

int main(int argc, char** argv) {
  if (!fuse_available()) {
    std::fprintf(stderr, "SKIP: /dev/fuse or fusermount3 is missing\n");
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
