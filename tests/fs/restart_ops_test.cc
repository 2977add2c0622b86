// Operations around restarts (issue 15): a daemon whose mount was detached lazily (umount -l,
// fusermount3 -u -z) ends although readers still hold files of it, so that the next daemon
// mounted at the same place can take its producers over (src/fs/unmounted.cc); and it never
// unmounts what is mounted at its old mount point by then.
#include <fcntl.h>
#include <sys/mount.h>

#include "helpers.h"

using namespace relayfs::test;

namespace {

// A child process running body; killed (SIGKILL) and reaped at the end of the test if it has
// not ended by then.
class Child {
 public:
  template <typename F>
  explicit Child(F body) {
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      // doctest's handlers would take a signal the test sends for a crash of the test.
      for (int sig : {SIGTERM, SIGINT, SIGSEGV, SIGABRT}) ::signal(sig, SIG_DFL);
      ::_exit(body());
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }
  // Waits up to limit for the child to end; its wait status, or -1 if it had to be killed.
  int wait(std::chrono::milliseconds limit) {
    REQUIRE(pid_ > 0);
    bool killed;
    const int st = wait_or_kill(pid_, limit, &killed);
    pid_ = -1;
    return killed ? -1 : st;
  }

 private:
  pid_t pid_ = -1;
};

// A producer that opens global channel base in dir, writes five records and keeps it open
// until killed.
Child holding_producer(const std::string& dir, const char* base) {
  return Child([=] {
    rchan_callbacks cb{};
    cb.create_buf_file = &make_global<0444>;
    rchan* c = relay_open(base, dir.c_str(), 4096, 8, &cb, nullptr);
    if (!c) return 90;
    for (int i = 0; i < 5; ++i) relay_write(c, record(i).data(), kRec);
    for (;;) ::pause();
  });
}

// Waits until the holding producer's five records are in the file at path. The file appears
// inside relay_open, before the records are written, so waiting for it alone races them.
void wait_for_records(const std::string& path) {
  REQUIRE(wait_for([&] { return exists(path) && file_size(path) >= off_t{5 * kRec}; }));
}

// Checks that the mount's daemon exits by itself, with status 0, within 5 s (it is killed
// after that).
void check_daemon_exits(Mount& m) {
  REQUIRE(m.pid > 0);
  bool killed;
  const int st = wait_or_kill(m.pid, std::chrono::seconds(5), &killed);
  m.pid = -1;
  CHECK_MESSAGE(!killed, "the daemon did not exit by itself within 5 s");
  CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
}

// Checks that the daemon of fd's mount is gone: a read fails with ENOTCONN, rather than wait or
// return data. Closes fd.
void check_connection_gone(int fd) {
  char buf[64];
  errno = 0;
  CHECK(::read(fd, buf, sizeof buf) == -1);
  CHECK(errno == ENOTCONN);
  ::close(fd);
}

}  // namespace

TEST_CASE("a daemon whose mount is detached lazily exits although a file is still open, which "
          "then fails with ENOTCONN") {
  Mount m;
  Child producer = holding_producer(m.dir, "held");
  wait_for_records(m.path("held0"));
  const int fd = ::open(m.path("held0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  char buf[64];
  CHECK(::read(fd, buf, kRec) == static_cast<ssize_t>(kRec));  // the mount serves the file

  CHECK(run("fusermount3 -u -z '" + m.dir + "'") == 0);
  CHECK_FALSE(is_mounted(m.dir));
  check_daemon_exits(m);
  check_connection_gone(fd);
}

TEST_CASE("-o blocking: a read waiting for data when the mount is detached ends with ENOTCONN, "
          "not the end of file") {
  Mount m({"-o", "blocking"});
  Child producer = holding_producer(m.dir, "idle");
  REQUIRE(wait_for([&] { return exists(m.path("idle0")); }));
  // A reader that drains the file, then waits in read(2); it exits with the errno that ended
  // it (0: the end of file).
  const std::string path = m.path("idle0");
  Child reader([path] {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return 90;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n == 0) return 0;
      if (n < 0) return errno;
    }
  });
  // Parked: sleeping in the read, the records read.
  REQUIRE(wait_for([&] {
    const Attrs a = getfattr(path);
    const auto consumed = a.find("user.relayfs.bytes_consumed");
    return consumed != a.end() && consumed->second == std::to_string(5 * kRec) &&
           proc_state("/proc/" + std::to_string(reader.pid())) == 'S';
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));

  CHECK(run("fusermount3 -u -z '" + m.dir + "'") == 0);
  check_daemon_exits(m);
  const int rst = reader.wait(std::chrono::seconds(5));
  REQUIRE_MESSAGE(rst != -1, "the reader was still waiting 5 s later");
  CHECK(WIFEXITED(rst));
  CHECK(WEXITSTATUS(rst) == ENOTCONN);
}

TEST_CASE("a bind mount keeps the daemon; when the last mount goes it exits, leaving the relayfs "
          "mounted since at its first mount point alone") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: mount --bind needs root");
    return;
  }
  Mount m;
  TempDir bind;
  REQUIRE(::mount(m.dir.c_str(), bind.dir.c_str(), nullptr, MS_BIND, nullptr) == 0);
  struct Unbind {
    std::string dir;
    ~Unbind() { ::umount2(dir.c_str(), MNT_DETACH); }
  } unbind{bind.dir};
  Child producer = holding_producer(m.dir, "held");
  wait_for_records(bind.path("held0"));
  const int fd = ::open(bind.path("held0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);

  // Still mounted at the bind mount: the daemon serves on.
  CHECK(run("umount -l '" + m.dir + "'") == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  CHECK(alive(m.pid));
  char buf[64];
  CHECK(::read(fd, buf, kRec) == static_cast<ssize_t>(kRec));

  // The next relayfs at the first mount point; then the last mount of the old one goes.
  Mount next({}, m.dir);
  CHECK(run("umount -l '" + bind.dir + "'") == 0);
  check_daemon_exits(m);
  check_connection_gone(fd);
  // The old daemon did not take the new mount with it.
  CHECK(is_mounted(next.dir));
  rchan* c = open_global(next.dir, "next");
  const std::string data = write_records(c, 0, 3);
  CHECK(relay_close(c) == 0);
  CHECK(slurp(next.path("next0")) == data);
}
