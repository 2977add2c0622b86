// A real relayfs mount for a test: the daemon runs in the foreground as a child of the test, in
// a fresh temporary directory. The mount is always taken down and the daemon always killed, even
// when the test fails: the destructor unmounts lazily and kills; if the test process itself
// dies, PR_SET_PDEATHSIG takes the daemon with it.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace relayfs::test {

inline std::string daemon_path() {
  const char* p = std::getenv("RELAYFS_DAEMON");
  return p ? p : "relayfs";
}

// A path as mountinfo writes it, with space, tab, newline and backslash as \ooo (octal), decoded.
inline std::string unescape_mountinfo(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool octal =
        s[i] == '\\' && i + 3 < s.size() && s.find_first_not_of("01234567", i + 1) >= i + 4;
    if (!octal) {
      out += s[i];
      continue;
    }
    out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
    i += 3;
  }
  return out;
}

// True if `dir` is a relayfs mount point now.
inline bool is_mounted(const std::string& dir) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::string f[5];
    for (auto& x : f) ss >> x;
    if (unescape_mountinfo(f[4]) != dir) continue;
    const auto dash = line.find(" - ");
    if (dash != std::string::npos && line.compare(dash + 3, 12, "fuse.relayfs") == 0) return true;
  }
  return false;
}

// The mount tests need /dev/fuse and fusermount3; without them the whole program skips.
inline bool fuse_available() {
  return ::access("/dev/fuse", R_OK | W_OK) == 0 &&
         (::access("/usr/bin/fusermount3", X_OK) == 0 || ::access("/bin/fusermount3", X_OK) == 0);
}

inline int run(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// A file's whole contents ("" if it does not exist).
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A fresh directory under /tmp, removed with everything in it at the end of the test.
struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/relayfs-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
  }
  ~TempDir() { run("rm -rf '" + dir + "'"); }
  std::string path(const std::string& rel) const { return dir + "/" + rel; }
  std::string dir;
};

// Waits up to limit for child pid to end; if it does not, kills it (SIGKILL) and reaps it, so
// no test leaves a process behind. Returns its wait status; *killed says whether it was killed.
inline int wait_or_kill(pid_t pid, std::chrono::milliseconds limit, bool* killed) {
  int st = 0;
  *killed = false;
  const auto until = std::chrono::steady_clock::now() + limit;
  while (::waitpid(pid, &st, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      *killed = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return st;
}

// Faults the daemons started while it lives inject (RELAYFS_TEST_FAULTS, src/fs/fault.h): make
// one before the Mount.
struct TestFaults {
  explicit TestFaults(const char* spec) { ::setenv("RELAYFS_TEST_FAULTS", spec, 1); }
  ~TestFaults() { ::unsetenv("RELAYFS_TEST_FAULTS"); }
  TestFaults(const TestFaults&) = delete;
  TestFaults& operator=(const TestFaults&) = delete;
};

// True while child pid has not ended. Does not reap it: whoever started it still waits for it.
inline bool alive(pid_t pid) {
  siginfo_t info{};
  return pid > 0 &&
         ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == 0;
}

class Mount {
 public:
  // at: mount on this existing directory (a remount) instead of a fresh one.
  explicit Mount(const std::vector<std::string>& opts = {}, const std::string& at = {}) {
    char tmpl[] = "/tmp/relayfs-test-XXXXXX";
    REQUIRE((!at.empty() || ::mkdtemp(tmpl) != nullptr));
    dir = at.empty() ? tmpl : at;
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      std::vector<std::string> args = {daemon_path(), "none", dir, "-f"};
      args.insert(args.end(), opts.begin(), opts.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      const int devnull = ::open("/dev/null", O_WRONLY);
      if (!std::getenv("RELAYFS_TEST_DEBUG")) ::dup2(devnull, 1);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!is_mounted(dir)) {
      int st;
      if (::waitpid(pid, &st, WNOHANG) == pid) {
        pid = -1;
        FAIL("relayfs exited before mounting");
      }
      if (std::chrono::steady_clock::now() > until) FAIL("relayfs did not mount in 10 s");
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;

  ~Mount() {
    run("fusermount3 -u -z '" + dir + "' 2>/dev/null");
    stop_daemon(SIGTERM);
    ::rmdir(dir.c_str());
  }

  // Sends sig and waits up to 5 s, then SIGKILL. Returns the wait status.
  int stop_daemon(int sig) {
    if (pid <= 0) return -1;
    ::kill(pid, sig);
    bool killed;
    const int st = wait_or_kill(pid, std::chrono::seconds(5), &killed);
    pid = -1;
    return st;
  }

  std::string path(const std::string& rel) const { return dir + "/" + rel; }

  std::string dir;
  pid_t pid = -1;
};

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
  // umount -l: the daemon ends by itself once its mount is gone (relayfs(8)).
  void detach() {
    REQUIRE(m->pid > 0);
    run("umount -l '" + dir + "'");
    bool killed;
    // It ends within milliseconds here (15-21 ms beside other mount tests), but its exit waits
    // on kernel workers (io_uring teardown), which a loaded VM starved for over a minute. Only a
    // daemon that never ends is the failure this looks for.
    const int st = wait_or_kill(m->pid, std::chrono::seconds(60), &killed);
    CHECK_FALSE(killed);
    CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
    m->pid = -1;
    m.reset();
  }
  void remount() {
    ::mkdir(dir.c_str(), 0755);
    m = std::make_unique<Mount>(opts, dir);
  }
  std::vector<std::string> opts;
  std::unique_ptr<Mount> m;
  std::string dir;
};

// Reads a whole file (or what a consuming read gives until it returns 0).
inline std::string slurp(const std::string& path, size_t chunk = 1 << 16) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  std::string out;
  std::vector<char> buf(chunk);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    REQUIRE(n >= 0);
    if (n == 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

// The output of a shell command.
inline std::string capture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

inline bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

// Fork with the child's body; the child never returns into the test.
template <typename F>
pid_t spawn(F body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    // doctest's crash handlers would report a signal the test sends the child as a crash of
    // the test: a child dies of its signals plainly.
    for (int sig : {SIGTERM, SIGINT, SIGSEGV, SIGABRT, SIGFPE, SIGILL, SIGBUS})
      ::signal(sig, SIG_DFL);
    ::_exit(body());
  }
  return pid;
}

// Waits for a child up to limit; returns its wait status, or -1 if it did not end (it is then
// killed, so that no test leaves a process behind).
inline int wait_child(pid_t pid, std::chrono::milliseconds limit) {
  REQUIRE(pid > 0);  // never waitpid(-1) or kill(-1): that would reach other processes
  bool killed;
  const int st = wait_or_kill(pid, limit, &killed);
  return killed ? -1 : st;
}

}  // namespace relayfs::test
