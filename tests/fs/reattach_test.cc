// Reattaching producers from the edges (issue 15): kAdopt requests a producer library would never
// send, sent raw to the control socket, are refused one by one while a neighbour channel keeps
// every record; a producer whose relayfs never comes back keeps writing through a minute of
// mount-table churn without gaining a thread or a descriptor; a daemon killed while a relay_open
// waits for its reply; and an overwrite channel that laps itself while no daemon reads it. Real
// mounts and real producer processes; the restart itself is tested in restart_test.cc.
#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <cinttypes>
#include <memory>
#include <set>

#include "core/buffer.h"
#include "core/geometry.h"
#include "core/layout.h"
#include "core/producer.h"
#include "helpers.h"

using namespace relayfs::test;
namespace core = relayfs::core;
namespace proto = relayfs::proto;

namespace {

constexpr int kChildSetupFailed = 90;

// ---- A daemon that can be killed and mounted again at the same place ---------------------------

struct Restartable {
  explicit Restartable(std::vector<std::string> o = {}) : opts(std::move(o)) {
    m = std::make_unique<Mount>(opts);
    dir = m->dir;
  }
  // SIGKILL, and the dead mount taken away; the mount point stays, a plain directory.
  void crash() {
    REQUIRE(m->pid > 0);
    m->stop_daemon(SIGKILL);
    m.reset();  // unmounts lazily and removes the mount point
    ::mkdir(dir.c_str(), 0755);
  }
  void remount() { m = std::make_unique<Mount>(opts, dir); }
  std::vector<std::string> opts;
  std::unique_ptr<Mount> m;
  std::string dir;
};

// Shared with a producer child (MAP_SHARED), which reports through it.
struct Shared {
  std::atomic<uint32_t> ready, go, stop, close, done;
  std::atomic<uint64_t> written, failed;  // relay_write successes and failures
  std::atomic<int> fail_errno;
  std::atomic<uint64_t> final_from, final_to;  // test 4: the last batch, [from, to)
  std::atomic<int> open_errno;                 // test 3: relay_open's errno, 0 if it opened
  std::atomic<int64_t> open_ms;                // how long relay_open took
  std::atomic<int> close_rc, close_errno;
  std::atomic<int64_t> close_ms;  // how long relay_close took
};

Shared* shared_map() {
  void* p = ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
  REQUIRE(p != MAP_FAILED);
  return new (p) Shared{};
}

int64_t ms_since(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// relay_close, timed, into sh.
void close_timed(rchan* c, Shared* sh) {
  const auto t0 = Clock::now();
  errno = 0;
  sh->close_rc.store(relay_close(c));
  sh->close_errno.store(errno);
  sh->close_ms.store(ms_since(t0));
}

// Numbered records wide enough for a producer that writes flat out for minutes: "r%014llu\n".
constexpr size_t kWide = 16;
std::string wide(uint64_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "r%014llu\n", static_cast<unsigned long long>(i));
  return buf;
}

// The records in s, in order; false if s is not made of whole ones.
bool parse_wide(const std::string& s, std::vector<uint64_t>* out) {
  if (s.size() % kWide != 0) return false;
  for (size_t at = 0; at < s.size(); at += kWide) {
    if (s[at] != 'r' || s[at + kWide - 1] != '\n') return false;
    out->push_back(std::strtoull(s.c_str() + at + 1, nullptr, 10));
  }
  return true;
}

// Entries in /proc/PID/SUB ("task": threads, "fd": open descriptors); -1 if it is gone.
int proc_count(pid_t pid, const char* sub) {
  DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/" + sub).c_str());
  if (!d) return -1;
  int n = 0;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') ++n;
  ::closedir(d);
  return n;
}

// Voluntary context switches of pid's threads other than its main thread: how often they slept
// and were woken.
long long side_thread_wakeups(pid_t pid) {
  const std::string task = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(task.c_str());
  if (!d) return -1;
  long long n = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.' || std::to_string(pid) == e->d_name) continue;
    std::ifstream in(task + "/" + e->d_name + "/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0) n += std::stoll(line.substr(24));
  }
  ::closedir(d);
  return n;
}

// ---- Raw kAdopt ---------------------------------------------------------------------------------

core::Geometry geometry(uint32_t subbuf, uint32_t n) {
  core::Geometry g;
  REQUIRE(core::make_geometry(subbuf, n, &g) == 0);
  return g;
}

// A buffer as a producer makes one for the daemon to adopt: a sealed memfd with a good header.
// No REQUIRE: also for child processes; !valid() on failure.
core::Buffer fresh_buffer(uint32_t subbuf, uint32_t n) {
  core::Geometry g;
  core::Buffer b;
  if (core::make_geometry(subbuf, n, &g) == 0) core::Buffer::create(g, "hostile", &b);
  return b;
}

// The kAdopt of a global channel `base` in directory parent_ino with geometry subbuf x n, adopt
// buffers said.
proto::OpenRequest adopt_req(uint64_t parent_ino, const std::string& base, uint32_t adopt,
                             uint32_t subbuf = 4096, uint32_t n = 4,
                             uint32_t flags = proto::kFlagGlobal) {
  proto::OpenRequest r{parent_ino, subbuf, n, 0444, flags, base};
  r.adopt = adopt;
  return r;
}

// The daemon's answer to msg on connection s as an errno (0: granted), as control_answer gives
// it, past the buf_mapped / buf_unmapped events of channels s owns: a reader of an adopted
// channel's file sends the owner those. No REQUIRE: also for child processes.
int answer(int s, const std::vector<char>& msg, const std::vector<int>& fds = {}) {
  if (proto::send_message(s, msg, fds.data(), fds.size()) != 0) return 201;
  for (;;) {
    proto::Received r;
    if (proto::recv_message(s, &r, proto::kMaxFds) != 1) return 202;
    const auto type = static_cast<proto::Type>(r.header.type);
    if (type == proto::Type::kMapped || type == proto::Type::kUnmapped) continue;
    if (type == proto::Type::kOpenReply) {
      proto::OpenReply o;
      return proto::decode(r.payload.data(), r.payload.size(), &o) == 0 ? -o.status : 203;
    }
    proto::Status st;  // kError
    return proto::decode(r.payload.data(), r.payload.size(), &st) == 0 ? -st.status : 203;
  }
}

// The daemon's answer to a kAdopt on connection s as an errno (0: adopted, owned by s).
// With a fresh eventfd after fds, as the doorbell a producer brings along (protocol.h).
int raw_adopt(int s, const proto::OpenRequest& req, const std::vector<int>& fds, uint32_t seq) {
  core::UniqueFd doorbell(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  REQUIRE(doorbell);
  std::vector<int> all = fds;
  all.push_back(doorbell.get());
  return answer(s, proto::encode(req, seq), all);
}

// A global overwrite channel (files BASE0 and BASE, mode 0444). No REQUIRE: for producer
// children; nullptr on failure.
rchan* open_overwrite(const std::string& dir, const char* base, size_t subbuf, size_t n) {
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0444>;
  relay_options o{};
  o.flags = RELAY_OVERWRITE;  // writes never fail for want of a reader
  return relay_open_opts(base, dir.c_str(), subbuf, n, &cb, nullptr, &o);
}

// A read-only descriptor of fd's file, as /proc/self/fd/N gives one.
core::UniqueFd reopen_ro(int fd) {
  core::UniqueFd ro(::open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(ro);
  return ro;
}

}  // namespace

// ---- 1. Hostile reattach ------------------------------------------------------------------------

TEST_CASE("hostile kAdopt requests get a clear error, the daemon serves on, a neighbour loses "
          "nothing, and a well-formed one is adopted") {
  Mount m;
  REQUIRE(::mkdir(m.path("app").c_str(), 0755) == 0);
  const std::string app = m.path("app");
  const uint64_t dir = ino_of(app);
  Bystander keep(app, "keep");
  keep.write_more();
  const auto before = entries(app);
  const int daemon_fds = proc_count(m.pid, "fd");
  const int s = connect_control(m.dir);
  uint32_t seq = 1;
  const auto g4 = geometry(4096, 4);
  const uint64_t size4 = core::Layout::of(g4).total_size;
  // After each refusal: the connection, the daemon and the neighbour as they were.
  // A name of its own for each request: one wrongly taken must not make the next EEXIST.
  auto name = [&](const char* base) { return std::string(base) + "-" + std::to_string(seq); };
  auto refused = [&](int err, const proto::OpenRequest& req, const std::vector<int>& fds) {
    CAPTURE(req.base_filename);
    CHECK(raw_adopt(s, req, fds, seq++) == err);
    CHECK(entries(app) == before);
    keep.write_more();
  };

  SUBCASE("(a) descriptors of the wrong size or kind: EINVAL") {
    core::Buffer big = fresh_buffer(4096, 8);  // sealed, good header, another geometry's size
    REQUIRE(big.valid());
    refused(EINVAL, adopt_req(dir, name("a"), 1), {big.fd()});
    // A sealed memfd smaller than the geometry, one larger, one of the right size unsealed.
    for (uint64_t size : {uint64_t{4096}, size4 + 4096, size4}) {
      CAPTURE(size);
      core::UniqueFd fd(::memfd_create("hostile", MFD_CLOEXEC | MFD_ALLOW_SEALING));
      REQUIRE(fd);
      REQUIRE(::ftruncate(fd.get(), static_cast<off_t>(size)) == 0);
      if (size != size4)
        REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) == 0);
      refused(EINVAL, adopt_req(dir, name("a"), 1), {fd.get()});
    }
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);  // no regular file at all
    refused(EINVAL, adopt_req(dir, name("a"), 1), {p[0]});
    ::close(p[0]);
    ::close(p[1]);
  }

  SUBCASE("(b) a sealed memfd of the right size whose header lies: EINVAL") {
    auto lie = [&](const char* what, auto&& edit) {
      CAPTURE(std::string(what));
      core::Buffer b = fresh_buffer(4096, 4);
      REQUIRE(b.valid());
      edit(*b.header());
      refused(EINVAL, adopt_req(dir, name("b"), 1), {b.fd()});
    };
    lie("magic", [](core::ShmHeader& h) { h.magic ^= 1; });
    lie("version", [](core::ShmHeader& h) { h.version = core::kShmVersion - 1; });
    lie("version", [](core::ShmHeader& h) { h.version = core::kShmVersion + 1; });
    // The same total size, another geometry.
    lie("subbuf_size", [](core::ShmHeader& h) { h.subbuf_size = 8192; });
    lie("n_subbufs", [](core::ShmHeader& h) { h.n_subbufs = 2; });
    lie("data_offset", [](core::ShmHeader& h) { h.data_offset += 4096; });
    // A memfd never initialised: all zeros.
    core::UniqueFd zero(::memfd_create("hostile", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(::ftruncate(zero.get(), static_cast<off_t>(size4)) == 0);
    REQUIRE(::fcntl(zero.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
    refused(EINVAL, adopt_req(dir, name("b"), 1), {zero.get()});
  }

  SUBCASE("(c) fewer or more descriptors than buffers, or one buffer twice: EINVAL") {
    core::Buffer b0 = fresh_buffer(4096, 4), b1 = fresh_buffer(4096, 4);
    REQUIRE((b0.valid() && b1.valid()));
    refused(EINVAL, adopt_req(dir, name("c"), 1), {});                   // says 1, brings none
    refused(EINVAL, adopt_req(dir, name("c"), 1), {b0.fd(), b1.fd()});   // says 1, brings 2
    refused(EINVAL, adopt_req(dir, name("c"), 2), {b0.fd(), b1.fd()});   // a global channel has 1
    // Per CPU: one buffer per possible CPU, each a different file.
    const unsigned n = ncpus();
    std::vector<core::Buffer> per(n + 1);
    std::vector<int> fds;
    for (auto& b : per) {
      b = fresh_buffer(4096, 4);
      REQUIRE(b.valid());
      fds.push_back(b.fd());
    }
    std::vector<int> fewer(fds.begin(), fds.begin() + n - 1), more = fds;
    refused(EINVAL, adopt_req(dir, name("c"), n, 4096, 4, 0), fewer);
    refused(EINVAL, adopt_req(dir, name("c"), n, 4096, 4, 0), more);
    refused(EINVAL, adopt_req(dir, name("c"), n - 1, 4096, 4, 0), fewer);  // what it brings, too few
    refused(EINVAL, adopt_req(dir, name("c"), n + 1, 4096, 4, 0), more);
    if (n >= 2) {
      std::vector<int> twice(fds.begin(), fds.begin() + n);
      twice[1] = twice[0];  // the same descriptor twice
      refused(EINVAL, adopt_req(dir, name("c"), n, 4096, 4, 0), twice);
      core::UniqueFd again(::fcntl(fds[0], F_DUPFD_CLOEXEC, 0));
      twice[1] = again.get();  // the same file under another descriptor
      refused(EINVAL, adopt_req(dir, name("c"), n, 4096, 4, 0), twice);
    }
    // The type and the count disagree: a kOpen that says adopt, a kAdopt that says 0.
    auto retyped = [&](proto::OpenRequest req, proto::Type t) {
      auto msg = proto::encode(req, seq++);
      const auto type = static_cast<uint16_t>(t);
      std::memcpy(msg.data() + offsetof(proto::Header, type), &type, sizeof type);
      return msg;
    };
    CHECK(answer(s, retyped(adopt_req(dir, "c", 1), proto::Type::kOpen), {fds[0]}) == EPROTO);
    CHECK(answer(s, retyped(adopt_req(dir, "c", 0), proto::Type::kAdopt)) == EPROTO);
    // The doorbell must be an eventfd, and must come: a pipe in its place, or none.
    int pfd[2];
    REQUIRE(::pipe2(pfd, O_CLOEXEC) == 0);
    CHECK(answer(s, proto::encode(adopt_req(dir, name("c"), 1), seq++), {b0.fd(), pfd[0]}) ==
          EINVAL);
    CHECK(answer(s, proto::encode(adopt_req(dir, name("c"), 1), seq++), {b0.fd()}) == EINVAL);
    ::close(pfd[0]);
    ::close(pfd[1]);
    CHECK(entries(app) == before);
  }

  SUBCASE("(d) a read-only descriptor of a buffer cannot be adopted: EINVAL") {
    // One of our own, reopened read-only.
    core::Buffer b = fresh_buffer(4096, 4);
    REQUIRE(b.valid());
    core::UniqueFd ro = reopen_ro(b.fd());
    refused(EINVAL, adopt_req(dir, name("d"), 1), {ro.get()});
    // The neighbour's own buffer, as the daemon hands it to a reader (relay_reader_open): whoever
    // may read a channel must not get a writable channel of the same memory under another name.
    const int rs = connect_control(m.dir);
    REQUIRE(proto::send_message(rs, proto::encode(proto::ReaderOpenRequest{ino_of(keep.file)}, 1)) ==
            0);
    proto::Received r;
    REQUIRE(proto::recv_message(rs, &r, proto::kMaxFds) == 1);
    proto::ReaderOpenReply reply;
    REQUIRE(proto::decode(r.payload.data(), r.payload.size(), &reply) == 0);
    REQUIRE(reply.status == 0);
    REQUIRE(r.fds.size() == 1);
    CHECK((::fcntl(r.fds[0].get(), F_GETFL) & O_ACCMODE) == O_RDONLY);
    refused(EINVAL, adopt_req(dir, name("d"), 1, 4096, 8), {r.fds[0].get()});
    ::close(rs);
  }

  SUBCASE("(e) a consumer record that lies is counted in `corrupt`, and what is there is read") {
    struct Lie {
      const char* what;
      void (*edit)(core::ConsumerRecord&);
    };
    const Lie lies[] = {
        {"consumed beyond produced",
         [](core::ConsumerRecord& r) { r.consumed.store(core::consumed_tag(0, 1000)); }},
        {"huge read_off", [](core::ConsumerRecord& r) { r.read_off.store(0xffffffffu); }},
        {"consumed beyond produced and huge read_off",
         [](core::ConsumerRecord& r) {
           r.consumed.store(core::consumed_tag(0, uint64_t{1} << 40));
           r.read_off.store(0x7fffffffu);
         }},
        {"position beyond the bytes produced",
         [](core::ConsumerRecord& r) { r.pos_bytes.store(uint64_t{1} << 50); }},
        {"a reset half done", [](core::ConsumerRecord& r) { r.gen.store(1); }},
    };
    int k = 0;
    for (const Lie& lie : lies) {
      CAPTURE(std::string(lie.what));
      const std::string base = "e" + std::to_string(k++);
      core::Buffer b = fresh_buffer(4096, 4);
      REQUIRE(b.valid());
      std::string want;
      {
        // What a producer wrote before its daemon died: three sub-buffers and a bit.
        core::Producer p(b);
        for (int i = 0; want.size() < 3 * 4096 + 100; ++i) {
          const std::string r = record(i);
          REQUIRE(p.write(r.data(), r.size()) == 0);
          want += r;
        }
      }
      core::ShmHeader* h = b.header();
      lie.edit(h->records[h->record_seq.load() & 1]);
      CHECK(raw_adopt(s, adopt_req(dir, base, 1), {b.fd()}, seq++) == 0);
      const std::string file = app + "/" + base + "0";
      REQUIRE(exists(file));
      CHECK(num(getfattr(file), "corrupt") >= 1);
      // The buffer was never lapped: all of it is there, from its first sub-buffer on.
      CHECK(slurp(file) == want);
      CHECK(num(getfattr(file), "bytes_unread") == 0);
      keep.write_more();
    }
  }

  SUBCASE("(f) EEXIST for the name of a channel that exists") {
    core::Buffer b = fresh_buffer(4096, 8);
    REQUIRE(b.valid());
    refused(EEXIST, adopt_req(dir, "keep", 1, 4096, 8), {b.fd()});
    // Nor does a per-CPU channel whose merged view would take a per-CPU file's name ("keep0").
    core::Buffer b2 = fresh_buffer(4096, 8);
    refused(EEXIST, adopt_req(dir, "keep0", 1, 4096, 8), {b2.fd()});
  }

  // The connection still works: a well-formed kAdopt is taken, and its files are made.
  core::Buffer ok = fresh_buffer(4096, 4);
  REQUIRE(ok.valid());
  CHECK(raw_adopt(s, adopt_req(dir, "fine", 1), {ok.fd()}, seq++) == 0);
  CHECK(exists(app + "/fine0"));
  // The same buffer again, as another channel: it is in use (two readers of one buffer would
  // each take the other's consumption for their own).
  CHECK(raw_adopt(s, adopt_req(dir, "twice", 1), {ok.fd()}, seq++) == EBUSY);
  CHECK_FALSE(exists(app + "/twice0"));
  ::close(s);  // its channels are finalized; drained, so their files go
  CHECK(wait_for([&] { return entries(app) == before; }));
  keep.check();
  CHECK(is_mounted(m.dir));
  // No descriptor of the refused requests stays in the daemon (they are closed through the ring).
  CHECK(wait_for([&] { return proc_count(m.pid, "fd") == daemon_fds; }));
}

TEST_CASE("kAdopt as an unprivileged user: EACCES into root's 0755 directory, taken into its own") {
  gid_t gid;
  const uid_t uid = test_user(&gid);
  if (uid == static_cast<uid_t>(-1)) {
    MESSAGE("skipped: needs root to create a user");
    return;
  }
  // allow_other, so that the user's connection is served at all and the refusal is the
  // directory's: without it every request of the user would be EACCES.
  Mount m({"-o", "allow_other"});
  REQUIRE(::mkdir(m.path("rootdir").c_str(), 0755) == 0);
  REQUIRE(::mkdir(m.path("theirs").c_str(), 0755) == 0);
  REQUIRE(::chown(m.path("theirs").c_str(), uid, gid) == 0);
  Bystander keep(m.path("rootdir"), "keep");
  const auto before = entries(m.path("rootdir"));
  const std::string name = control_name(m.dir);
  auto adopt_as_user = [&](const std::string& dir, const char* base) {
    const uint64_t ino = ino_of(dir);
    return as_user(uid, gid, [&] {
      const int s = dial_control(name);
      if (s < 0) return 200;
      core::Buffer b = fresh_buffer(4096, 4);
      if (!b.valid()) return 201;
      return raw_adopt(s, adopt_req(ino, base, 1), {b.fd()}, 1);
    });
  };
  CHECK(adopt_as_user(m.path("rootdir"), "intruder") == EACCES);
  CHECK(adopt_as_user(m.dir, "intruder") == EACCES);  // the mount's root is root's 0755 too
  CHECK(entries(m.path("rootdir")) == before);
  CHECK(adopt_as_user(m.path("theirs"), "mine") == 0);  // where it may write, it may adopt
  keep.check();
}

// ---- 2. Nothing leaks while the daemon never comes back -----------------------------------------

TEST_CASE("a producer whose relayfs never comes back writes on through a minute of mount-table "
          "churn with the same threads and descriptors, and closes at once") {
  if (::getuid() != 0) {
    MESSAGE("skipped: needs root to mount tmpfs");
    return;
  }
  Restartable fs;
  Shared* sh = shared_map();
  const pid_t pid = spawn([&] {
    rchan* c = open_overwrite(fs.dir, "lone", 4096, 8);
    if (!c) return kChildSetupFailed;
    sh->ready.store(1);
    for (uint64_t i = 0; !sh->stop.load(); ++i) {
      const std::string r = wide(i);
      if (relay_write(c, r.data(), r.size()) == 0) {
        sh->written.fetch_add(1);
      } else {
        sh->failed.fetch_add(1);
        sh->fail_errno.store(errno);
      }
      if (i % 64 == 63) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    while (!sh->close.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    close_timed(c, sh);
    return 0;
  });
  REQUIRE(wait_for([&] { return sh->ready.load() == 1; }, std::chrono::seconds(10)));
  fs.crash();
  // The event thread finds the daemon gone and waits on the mount table.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int threads0 = proc_count(pid, "task"), fds0 = proc_count(pid, "fd");
  const uint64_t written0 = sh->written.load();
  const long long wakeups0 = side_thread_wakeups(pid);
  REQUIRE(threads0 >= 2);  // the writer and the channel's event thread
  REQUIRE(fds0 > 0);

  TempDir scratch;
  const std::string tmpfs = scratch.path("tmpfs"), other = scratch.path("relayfs");
  REQUIRE(::mkdir(tmpfs.c_str(), 0755) == 0);
  REQUIRE(::mkdir(other.c_str(), 0755) == 0);
  int changes = 0, ticks = 0;
  uint64_t written_mid = 0;
  const auto half = Clock::now() + std::chrono::seconds(30);
  const auto until = half + std::chrono::seconds(30);
  for (int tick = 0; Clock::now() < until; ++tick) {
    // Every change to the mount table wakes the channel's event thread for another look.
    REQUIRE(::mount("none", tmpfs.c_str(), "tmpfs", 0, "size=64k") == 0);
    REQUIRE(::umount2(tmpfs.c_str(), 0) == 0);
    changes += 2;
    {
      Mount elsewhere({}, other);  // relayfs, mounted, but not where the channel was
      changes += 1;
    }
    ::mkdir(other.c_str(), 0755);  // ~Mount removes it
    changes += 1;
    if (written_mid == 0 && Clock::now() > half) written_mid = sh->written.load();
    ticks = tick + 1;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const int threads1 = proc_count(pid, "task"), fds1 = proc_count(pid, "fd");
  const uint64_t written1 = sh->written.load();
  const long long wakeups = side_thread_wakeups(pid) - wakeups0;
  std::printf("no daemon for 60 s, %d mount-table changes: %" PRIu64 " records written, %" PRIu64
              " failed; threads %d -> %d, descriptors %d -> %d; the event thread woke %lld "
              "times\n",
              changes, written1 - written0, sh->failed.load(), threads0, threads1, fds0, fds1,
              wakeups);
  // The churn did reach the channel: its event thread woke for (at least) every tick.
  CHECK(wakeups >= ticks);
  CHECK(threads1 == threads0);
  CHECK(fds1 == fds0);
  CHECK(sh->failed.load() == 0);
  CHECK(written_mid > written0);  // writing went on all minute
  CHECK(written1 > written_mid);

  sh->stop.store(1);
  sh->close.store(1);
  CHECK(wait_child(pid, std::chrono::seconds(10)) == 0);
  // Closed at once, without a daemon, and what nobody read is said to be gone.
  CHECK(sh->close_ms.load() < 1000);
  CHECK(sh->close_rc.load() == -1);
  CHECK(sh->close_errno.load() == ENOTCONN);
  ::munmap(sh, sizeof(Shared));
}

// ---- 3. The daemon killed while relay_open waits for its reply ----------------------------------

TEST_CASE("the daemon killed while relay_open waits for its reply: relay_open fails with EIO at "
          "once, and after a remount relay_open works") {
  Shared* sh = shared_map();
  std::unique_ptr<Restartable> fs;
  {
    TestFaults faults("open_reply_delay");  // only the first daemon
    fs = std::make_unique<Restartable>();
  }
  const std::string dir = fs->dir;
  const pid_t pid = spawn([&] {
    const auto t0 = Clock::now();
    rchan_callbacks cb{};
    cb.create_buf_file = &make_global<0444>;
    errno = 0;
    rchan* c = relay_open("inflight", dir.c_str(), 4096, 8, &cb, nullptr);
    sh->open_ms.store(ms_since(t0));
    sh->open_errno.store(c ? 0 : errno);
    sh->ready.store(1);
    if (!c) return 0;
    // It opened after all: it must work on once the next daemon adopts it.
    while (!sh->go.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::string all;
    for (int i = 0; i < 100; ++i) {
      const std::string r = record(i);
      if (relay_write(c, r.data(), r.size()) != 0) return kChildSetupFailed;
    }
    sh->written.store(100);
    while (!sh->close.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    close_timed(c, sh);
    return 0;
  });
  // The channel's files are in the tree: the daemon made it and waits before its reply.
  REQUIRE(wait_for([&] { return exists(dir + "/inflight0"); }, std::chrono::seconds(10)));
  CHECK(sh->ready.load() == 0);
  fs->crash();
  // relay_open neither hangs nor crashes: the daemon's end of its socket closed.
  REQUIRE(wait_for([&] { return sh->ready.load() == 1; }, std::chrono::seconds(5)));
  const int err = sh->open_errno.load();
  std::printf("relay_open in flight when the daemon died: %s after %" PRId64 " ms\n",
              err ? std::strerror(err) : "opened", sh->open_ms.load());
  CHECK(err == EIO);  // relay_open(3): "the daemon cannot be reached"

  // With no relayfs mounted there, relay_open says so (ENOTSUP), at once.
  {
    rchan_callbacks cb{};
    cb.create_buf_file = &make_global<0444>;
    errno = 0;
    CHECK(relay_open("nomount", dir.c_str(), 4096, 8, &cb, nullptr) == nullptr);
    CHECK(errno == ENOTSUP);
  }
  fs->remount();
  // A new relay_open of the same name works end to end.
  rchan* c = open_global(dir, "inflight", 4096, 8);
  const std::string want = write_records(c, 0, 50);
  CHECK(slurp(dir + "/inflight0") == want);
  CHECK(relay_close(c) == 0);
  if (err == 0) {
    // The first relay_open succeeded: its channel came back too, and works.
    sh->go.store(1);
    CHECK(wait_for([&] { return sh->written.load() == 100; }));
    sh->close.store(1);
  }
  const int st = wait_child(pid, std::chrono::seconds(10));
  CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
  ::munmap(sh, sizeof(Shared));
}

TEST_CASE("relay_open on a mount whose daemon is dead fails at once") {
  Restartable fs;
  fs.m->stop_daemon(SIGKILL);  // the mount stays, dead
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0444>;
  errno = 0;
  const auto t0 = Clock::now();
  CHECK(relay_open("dead", fs.dir.c_str(), 4096, 8, &cb, nullptr) == nullptr);
  const int err = errno;
  std::printf("relay_open on a dead mount: %s\n", std::strerror(err));
  CHECK(ms_since(t0) < 1000);
  CHECK(err == ENOTCONN);  // stat(2) of the parent: the kernel's answer for a dead FUSE mount
}

// ---- 4. An overwrite channel that laps itself while no daemon reads -----------------------------

TEST_CASE("an overwrite channel written on while the daemon is dead: after the remount the newest "
          "records are read, whole and in order, and the overruns counted") {
  Restartable fs;
  Shared* sh = shared_map();
  constexpr uint32_t kSub = 4096, kN = 8;
  constexpr uint64_t kCapacity = kSub / kWide * kN;  // records the buffer holds
  constexpr uint64_t kFinal = 100;
  const pid_t pid = spawn([&] {
    rchan* c = open_overwrite(fs.dir, "ring", kSub, kN);
    if (!c) return kChildSetupFailed;
    uint64_t i = 0;
    auto put = [&] {
      const std::string r = wide(i);
      if (relay_write(c, r.data(), r.size()) != 0) {
        sh->failed.fetch_add(1);
        sh->fail_errno.store(errno);
      }
      sh->written.store(++i);
    };
    for (; i < kCapacity / 2;) put();  // half a buffer, read before the crash
    sh->ready.store(1);
    while (!sh->go.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    while (!sh->stop.load()) {
      put();
      if (i % 16 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    // The last batch, then nothing more; the channel stays open.
    sh->final_from.store(i);
    for (uint64_t k = 0; k < kFinal; ++k) put();
    sh->final_to.store(i);
    sh->done.store(1);
    while (!sh->close.load()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    close_timed(c, sh);
    return 0;
  });
  REQUIRE(wait_for([&] { return sh->ready.load() == 1; }, std::chrono::seconds(10)));
  const std::string file = fs.dir + "/ring0";
  std::string first = slurp(file);
  CHECK(first.size() == kCapacity / 2 * kWide);
  CHECK(num(getfattr(file), "overruns") == 0);

  sh->go.store(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  fs.crash();
  const uint64_t at_crash = sh->written.load();
  // Written on without a daemon until the buffer was lapped many times over.
  REQUIRE(wait_for([&] { return sh->written.load() > at_crash + 20 * kCapacity; },
                   std::chrono::seconds(20)));
  sh->stop.store(1);
  REQUIRE(wait_for([&] { return sh->done.load() == 1; }));
  const uint64_t from = sh->final_from.load(), to = sh->final_to.load();
  REQUIRE(to == from + kFinal);
  CHECK(sh->failed.load() == 0);

  fs.remount();
  REQUIRE(wait_for([&] { return exists(file); }, std::chrono::seconds(10)));  // reattached
  const Attrs before = getfattr(file);
  const std::string got = slurp(file);
  const Attrs after = getfattr(file);
  std::vector<uint64_t> seqs;
  CHECK(parse_wide(got, &seqs));  // whole records only
  REQUIRE(!seqs.empty());
  std::printf("overwrite through a crash: %" PRIu64 " records written, %zu read after the remount "
              "(%" PRIu64 " .. %" PRIu64 "), overruns %llu\n",
              to, seqs.size(), seqs.front(), seqs.back(), num(after, "overruns"));
  // The newest records: consecutive up to the very last one written, the last batch among them.
  CHECK(seqs.back() == to - 1);
  bool consecutive = true;
  for (size_t k = 1; k < seqs.size(); ++k) consecutive = consecutive && seqs[k] == seqs[k - 1] + 1;
  CHECK(consecutive);
  CHECK(seqs.front() <= from);
  CHECK(seqs.size() <= kCapacity);
  CHECK(seqs.size() >= kCapacity - 2 * (kSub / kWide));  // all but the sub-buffers being reused
  // What the writer lapped while nobody read is counted, in sub-buffers and in bytes.
  CHECK(num(after, "overruns") > 0);
  CHECK(num(before, "bytes_produced") == to * kWide);
  // The books balance: every byte produced was read, before the crash or after, or overrun.
  CHECK(num(after, "bytes_consumed") == first.size() + got.size());
  CHECK(num(after, "lost_overrun_bytes") == to * kWide - first.size() - got.size());
  sh->close.store(1);
  CHECK(wait_child(pid, std::chrono::seconds(10)) == 0);
  CHECK(sh->close_rc.load() == 0);
  ::munmap(sh, sizeof(Shared));
}
