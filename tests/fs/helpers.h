// What the mount test programs share besides the Mount fixture (mount.h): numbered records
// written to a global channel through the producer library, a bystander channel that must lose
// nothing, a directory's names, a buffer's counters (relay_buf_stats
// and the file's extended attributes), waits with a deadline, threads pinned to a CPU, the
// daemon's control socket, running code as another user (as_user, with or without
// supplementary groups, or a Holder that keeps its channels until told), and the daemon's usage
// report.
#pragma once

#include <dirent.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <relayfs/relay.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "proto/protocol.h"
#include "proto/wire.h"
#include "mount.h"

namespace relayfs::test {

using Clock = std::chrono::steady_clock;

// The CPUs the system may have: a per-CPU channel has a buffer, and a file, for each.
inline unsigned ncpus() {
  return static_cast<unsigned>(std::max(1L, ::sysconf(_SC_NPROCESSORS_CONF)));
}

// ---- Records and channels -----------------------------------------------------------------------

// Numbered records, each a whole line: "rec 000042\n" (kRec = 11 bytes).
constexpr size_t kRec = 11;
inline std::string record(int i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "rec %06d\n", i);
  return buf;
}

// create_buf_file of a global channel: one file, BASE0, whatever CPU the test runs on, so a test
// knows where data goes; its files get mode Mode.
template <mode_t Mode = 0440>
int make_global(const char*, const char*, mode_t* mode, rchan_buf*, int* is_global) {
  *is_global = 1;
  *mode = Mode;
  return 0;
}

// A global channel, through relay_open_opts (opts nullptr is relay_open). Unless cb sets its own
// create_buf_file, the files are make_global's, mode 0440.
inline rchan* open_global(const std::string& dir, const char* base, size_t subbuf = 4096,
                          size_t n = 8, rchan_callbacks cb = {},
                          const relay_options* opts = nullptr, void* priv = nullptr) {
  if (!cb.create_buf_file) cb.create_buf_file = &make_global<0440>;
  rchan* c = relay_open_opts(base, dir.c_str(), subbuf, n, &cb, priv, opts);
  REQUIRE_MESSAGE(c != nullptr, "relay_open_opts: " << std::strerror(errno));
  return c;
}

// Writes record(from) .. record(to - 1), each of which must succeed; returns what it wrote.
inline std::string write_records(rchan* c, int from, int to) {
  std::string all;
  for (int i = from; i < to; ++i) {
    const std::string r = record(i);
    REQUIRE(relay_write(c, r.data(), r.size()) == 0);
    all += r;
  }
  return all;
}

// A channel that must come through everything a test does to its neighbours untouched: a global
// channel BASE in dir (file BASE0), written to with numbered records.
struct Bystander {
  Bystander(const std::string& dir, const char* base) : file(dir + "/" + base + "0") {
    c = open_global(dir, base);
  }
  void write_more() {
    want += write_records(c, next, next + 3);
    next += 3;
  }
  // Everything written since the last check is read back, whole and in order.
  void check() {
    write_more();
    CHECK(slurp(file) == want);
    want.clear();
  }
  ~Bystander() { CHECK(relay_close(c) == 0); }
  rchan* c;
  std::string file, want;
  int next = 0;
};

// The names in a directory, without "." and "..".
inline std::set<std::string> entries(const std::string& dir) {
  std::set<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  REQUIRE(d != nullptr);
  while (dirent* e = ::readdir(d))
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
      out.insert(e->d_name);
  ::closedir(d);
  return out;
}

// A file's inode number, which the control protocol names files and directories by.
inline uint64_t ino_of(const std::string& path) {
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_ino;
}

// ---- Counters -----------------------------------------------------------------------------------

// Buffer i's counters, as the producer sees them (relay_buf_stats).
inline relay_stats stats_of(rchan* c, unsigned i = 0) {
  relay_stats st{};
  REQUIRE(relay_buf_stats(c->buf[i], &st) == 0);
  return st;
}

// A relay file's extended attributes: name -> value.
using Attrs = std::map<std::string, std::string>;

// `getfattr -d -m - FILE`, parsed: name -> value (quotes removed).
inline Attrs getfattr(const std::string& path) {
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

// Attribute user.relayfs.NAME, which must be there.
inline std::string text(const Attrs& a, const std::string& name) {
  const auto it = a.find("user.relayfs." + name);
  REQUIRE_MESSAGE(it != a.end(), "getfattr shows no user.relayfs." << name);
  return it->second;
}

// Attribute user.relayfs.NAME, which must be a number.
inline unsigned long long num(const Attrs& a, const std::string& name) {
  const std::string v = text(a, name);
  char* end = nullptr;
  const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  REQUIRE_MESSAGE((!v.empty() && *end == '\0'), "user.relayfs." << name << "=\"" << v << "\"");
  return n;
}

// Attribute user.relayfs.NAME of an open relay file, which must be a number: also once the file
// has left its directory (drained and finalized) while open.
inline unsigned long long fnum(int fd, const std::string& name) {
  char v[64];
  const ssize_t n = ::fgetxattr(fd, ("user.relayfs." + name).c_str(), v, sizeof v - 1);
  REQUIRE_MESSAGE(n > 0, "user.relayfs." << name << ": " << std::string(std::strerror(errno)));
  v[n] = '\0';
  return std::strtoull(v, nullptr, 10);
}

// st_size of a file that must exist.
inline off_t file_size(const std::string& path) {
  struct stat st;
  REQUIRE_MESSAGE(::stat(path.c_str(), &st) == 0, path << ": " << std::strerror(errno));
  return st.st_size;
}

// ---- Waiting ------------------------------------------------------------------------------------

// Waits for pred with a deadline, looking every 2 ms; returns its last answer.
template <std::predicate P>
bool wait_for(P pred, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  const auto until = Clock::now() + limit;
  while (!pred()) {
    if (Clock::now() > until) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// The same for a flag another thread sets, by default with the 10 s a thread gets to finish.
inline bool wait_for(const std::atomic<bool>& flag,
                     std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  return wait_for([&] { return flag.load(); }, limit);
}

// Reads n bytes from an open relay file in reads of at most chunk bytes. On a mount that does not
// block an empty read returns 0: retried until a deadline.
inline std::string read_exactly(int fd, size_t n, size_t chunk) {
  std::string out;
  std::vector<char> buf(chunk);
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (out.size() < n && Clock::now() < until) {
    const ssize_t k = ::read(fd, buf.data(), std::min(chunk, n - out.size()));
    REQUIRE(k >= 0);
    if (k == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    out.append(buf.data(), static_cast<size_t>(k));
  }
  return out;
}

// Pins the calling thread to cpu; true if it now runs there.
inline bool pin_to(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set) == 0 &&
         ::sched_getcpu() == static_cast<int>(cpu);
}

// The state letter (R, S, D, ...) of a process or thread, from its /proc directory
// ("/proc/PID", "/proc/self/task/TID"); '?' if it cannot be read.
inline char proc_state(const std::string& proc_dir) {
  std::ifstream in(proc_dir + "/stat");
  std::string s;
  std::getline(in, s);
  const auto p = s.rfind(')');
  return p == std::string::npos || p + 2 >= s.size() ? '?' : s[p + 2];
}

// ---- The daemon's control socket ----------------------------------------------------------------

// The socket's abstract name (with its leading NUL), found as producers find it.
inline std::string control_name(const std::string& dir) {
  char name[108];
  const ssize_t n = ::getxattr(dir.c_str(), "user.relayfs.control", name, sizeof name);
  REQUIRE(n > 1);
  return std::string(name, static_cast<size_t>(n));
}

// A raw connection to the control socket called name; -1 if it cannot be made. No REQUIRE: also
// for child processes.
inline int dial_control(const std::string& name) {
  const int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, name.data() + 1, name.size() - 1);
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (::connect(s, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    ::close(s);
    return -1;
  }
  return s;
}

// The daemon's answer to one request sent raw on connection s, as an errno: 0 when it granted
// it, the refusal's errno otherwise, whatever the reply type (kOpenReply, kReaderOpenReply,
// kRecordReply, or a Status). 200+ when the exchange itself failed. fds go along with msg. No
// REQUIRE: also for child processes.
inline int control_answer(int s, const std::vector<char>& msg, const int* fds = nullptr,
                          size_t nfds = 0) {
  namespace proto = relayfs::proto;
  if (proto::send_message(s, msg, fds, nfds) != 0) return 201;
  proto::Received r;
  if (proto::recv_message(s, &r, proto::kMaxFds) != 1) return 202;
  switch (static_cast<proto::Type>(r.header.type)) {
    case proto::Type::kOpenReply: {
      proto::OpenReply o;
      return proto::decode(r.payload.data(), r.payload.size(), &o) == 0 ? -o.status : 203;
    }
    case proto::Type::kReaderOpenReply: {
      proto::ReaderOpenReply o;
      return proto::decode(r.payload.data(), r.payload.size(), &o) == 0 ? -o.status : 203;
    }
    case proto::Type::kRecordReply: {
      proto::RecordReply o;
      return proto::decode(r.payload.data(), r.payload.size(), &o) == 0 ? -o.status : 203;
    }
    default: {
      proto::Status st;
      return proto::decode(r.payload.data(), r.payload.size(), &st) == 0 ? -st.status : 203;
    }
  }
}

// A raw connection to the control socket of the mount at dir.
inline int connect_control(const std::string& dir) {
  const int s = dial_control(control_name(dir));
  REQUIRE(s >= 0);
  return s;
}

// ---- Another user -------------------------------------------------------------------------------

// A user made for the permission tests (useradd --system, no home), or -1 if users cannot be made
// here (not root). Its primary group goes to *gid.
inline uid_t test_user(gid_t* gid, const std::string& name = "relayfs-test") {
  if (::getuid() != 0) return static_cast<uid_t>(-1);
  run("id " + name + " >/dev/null 2>&1 || useradd --system --no-create-home " + name);
  const std::string uid = capture("id -u " + name + " 2>/dev/null");
  const std::string g = capture("id -g " + name + " 2>/dev/null");
  if (uid.empty() || g.empty()) return static_cast<uid_t>(-1);
  *gid = static_cast<gid_t>(std::stoul(g));
  return static_cast<uid_t>(std::stoul(uid));
}

// A group made for the permission tests (groupadd --system), or -1 if groups cannot be made here
// (not root).
inline gid_t test_group(const std::string& name) {
  if (::getuid() != 0) return static_cast<gid_t>(-1);
  run("getent group " + name + " >/dev/null 2>&1 || groupadd --system " + name);
  const std::string g = capture("getent group " + name + " 2>/dev/null | cut -d: -f3");
  if (g.empty()) return static_cast<gid_t>(-1);
  return static_cast<gid_t>(std::stoul(g));
}

// Runs f in a child process as uid/gid with exactly the supplementary groups given; returns what
// f returned (an errno, 0 for success), 250 if the child could not become that user, 251 if it
// did not exit.
template <typename F>
int as_user(uid_t uid, gid_t gid, const std::vector<gid_t>& groups, F f) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setgid(gid) != 0 ||
        ::setuid(uid) != 0)
      ::_exit(250);
    ::prctl(PR_SET_DUMPABLE, 1);  // so that /proc/self is its own again after setuid
    ::_exit(f());
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 251;
}

// The same without supplementary groups.
template <typename F>
int as_user(uid_t uid, gid_t gid, F f) {
  return as_user(uid, gid, {}, f);
}

// ---- Two users, and a process of theirs that holds channels -------------------------------------

struct TestUser {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = 0;
  bool ok() const { return uid != static_cast<uid_t>(-1); }
};

// The two test users, or !ok() when they cannot be made (not root).
inline bool make_users(TestUser* alice, TestUser* bob) {
  alice->uid = test_user(&alice->gid, "relayfs-test");
  bob->uid = test_user(&bob->gid, "relayfs-test2");
  return alice->ok() && bob->ok() && alice->gid != bob->gid;
}

#define NEED_USERS(alice, bob)                          \
  TestUser alice, bob;                                  \
  if (!make_users(&alice, &bob)) {                      \
    MESSAGE("skipped: needs root to create two users"); \
    return;                                             \
  }

// A producer process running as another user, which keeps its channels open (and its control
// connection, so they live) until the test lets it finish. setup runs first and returns an errno
// (0: all well); finish runs when the Holder is finished or destroyed, and its return value is
// the process's exit status.
class Holder {
 public:
  template <typename Setup, typename Finish>
  Holder(const TestUser& u, Setup setup, Finish finish) {
    REQUIRE(::pipe2(ready_, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(go_, O_CLOEXEC) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::close(ready_[0]);
      ::close(go_[1]);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      unsigned char err = 250;
      if (::setgroups(0, nullptr) == 0 && ::setgid(u.gid) == 0 && ::setuid(u.uid) == 0) {
        ::prctl(PR_SET_DUMPABLE, 1);
        err = static_cast<unsigned char>(setup());
      }
      (void)!::write(ready_[1], &err, 1);
      // A byte, not the end of the pipe: a Holder forked later holds a copy of its write end.
      char c;
      (void)!::read(go_[0], &c, 1);
      ::_exit(err ? err : finish());
    }
    ::close(ready_[1]);
    ::close(go_[0]);
    unsigned char err = 251;
    (void)!::read(ready_[0], &err, 1);
    setup_errno_ = err;
  }
  Holder(const Holder&) = delete;
  Holder& operator=(const Holder&) = delete;
  ~Holder() { finish(); }

  int setup_errno() const { return setup_errno_; }

  // Lets the process finish; returns its exit status (252 if it did not exit normally).
  int finish() {
    if (pid_ <= 0) return status_;
    (void)!::write(go_[1], "g", 1);
    ::close(go_[1]);
    ::close(ready_[0]);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 252;
    return status_;
  }

 private:
  int ready_[2]{-1, -1}, go_[2]{-1, -1};
  pid_t pid_ = -1;
  int setup_errno_ = 0;
  int status_ = 0;
};

// A directory of the mount owned by u (mode 0755): where u may create channels.
inline std::string home_of(const Mount& m, const TestUser& u) {
  const std::string home = m.path("home-" + std::to_string(u.uid));
  REQUIRE(::mkdir(home.c_str(), 0755) == 0);
  REQUIRE(::chown(home.c_str(), u.uid, u.gid) == 0);
  return home;
}

// ---- The daemon's usage report ----------------------------------------------------------------

// The root directory's user.relayfs.users, parsed: for each line its words after the first as
// name -> value ("exempt" -> ""), keyed by the first word, or for "user" lines by "uid=N".
// Empty if the attribute cannot be read. No REQUIRE: also for child processes.
using Usage = std::map<std::string, Attrs>;
inline Usage usage_of(const std::string& mount_dir) {
  std::vector<char> buf(1 << 16);
  const ssize_t n = ::getxattr(mount_dir.c_str(), "user.relayfs.users", buf.data(), buf.size());
  Usage u;
  if (n < 0) return u;
  std::istringstream in(std::string(buf.data(), static_cast<size_t>(n)));
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string kind, w;
    words >> kind;
    Attrs a;
    while (words >> w) {
      const auto eq = w.find('=');
      a[w.substr(0, eq)] = eq == std::string::npos ? "" : w.substr(eq + 1);
    }
    u[kind == "user" ? "uid=" + a["uid"] : kind] = a;
  }
  return u;
}

// Field `name` of line `key` of a usage report, as a number; -1 if it is not there.
inline long long usage_field(const Usage& u, const std::string& key, const std::string& name) {
  const auto line = u.find(key);
  if (line == u.end()) return -1;
  const auto f = line->second.find(name);
  if (f == line->second.end() || f->second.empty()) return -1;
  return std::stoll(f->second);
}

}  // namespace relayfs::test
