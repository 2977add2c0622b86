// relayfs mounted for real, driven with real tools (cat, tail -f, dd, head, poll) and with the
// producer library. Every test mounts its own tree and takes it down, even when it fails.
#include <doctest/doctest.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <relayfs/relay.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <relayfs/relay.hpp>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "proto/protocol.h"
#include "proto/wire.h"
#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;

TEST_CASE("directories are made and removed with mkdir and rmdir") {
  Mount m;
  REQUIRE(::mkdir(m.path("a").c_str(), 0755) == 0);
  REQUIRE(::mkdir(m.path("a/b").c_str(), 0700) == 0);
  struct stat st;
  REQUIRE(::stat(m.path("a/b").c_str(), &st) == 0);
  CHECK(S_ISDIR(st.st_mode));
  CHECK((st.st_mode & 07777) == (0700 & ~[] {
          mode_t u = ::umask(0);
          ::umask(u);
          return u;
        }()));
  CHECK(::mkdir(m.path("a").c_str(), 0755) == -1);
  CHECK(errno == EEXIST);
  CHECK(::rmdir(m.path("a").c_str()) == -1);
  CHECK(errno == ENOTEMPTY);
  REQUIRE(::rmdir(m.path("a/b").c_str()) == 0);
  REQUIRE(::rmdir(m.path("a").c_str()) == 0);
  CHECK_FALSE(exists(m.path("a")));
}

TEST_CASE("a channel's files appear with the producer's mode and vanish once closed and drained") {
  Mount m;
  REQUIRE(::mkdir(m.path("app").c_str(), 0755) == 0);
  SUBCASE("per-CPU: one file per possible CPU, mode 0400 by default") {
    rchan* c = relay_open("cpu", m.path("app").c_str(), 4096, 4, nullptr, nullptr);
    REQUIRE_MESSAGE(c != nullptr, std::strerror(errno));
    CHECK(c->n_buffers == ncpus());
    for (unsigned i = 0; i < ncpus(); ++i) {
      struct stat st;
      REQUIRE(::stat(m.path("app/cpu" + std::to_string(i)).c_str(), &st) == 0);
      CHECK(S_ISREG(st.st_mode));
      CHECK((st.st_mode & 07777) == 0400);
      CHECK(st.st_uid == ::getuid());
      CHECK(st.st_blksize == 1 << 20);
    }
    CHECK_FALSE(exists(m.path("app/cpu" + std::to_string(ncpus()))));
    REQUIRE(relay_close(c) == 0);
    // Nothing was written: drained at once, so the files go.
    for (unsigned i = 0; i < ncpus(); ++i)
      CHECK_FALSE(exists(m.path("app/cpu" + std::to_string(i))));
  }
  SUBCASE("global: one file; data stays readable after close until drained") {
    rchan* c = open_global(m.path("app"), "g");
    CHECK(c->n_buffers == 1);
    struct stat st;
    REQUIRE(::stat(m.path("app/g0").c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0440);
    CHECK_FALSE(exists(m.path("app/g1")));
    const std::string want = write_records(c, 0, 100);
    REQUIRE(relay_close(c) == 0);
    CHECK(exists(m.path("app/g0")));
    CHECK(slurp(m.path("app/g0")) == want);
    CHECK_FALSE(exists(m.path("app/g0")));
  }
  CHECK(::rmdir(m.path("app").c_str()) == 0);
}

TEST_CASE("relay_open reports clear errors") {
  Mount m;
  REQUIRE(::mkdir(m.path("app").c_str(), 0755) == 0);
  errno = 0;
  CHECK(relay_open("x", m.path("missing").c_str(), 4096, 4, nullptr, nullptr) == nullptr);
  CHECK(errno == ENOENT);
  CHECK(relay_open("x", "/tmp", 4096, 4, nullptr, nullptr) == nullptr);
  CHECK(errno == ENOTSUP);
  CHECK(relay_open("x", m.path("app").c_str(), 0, 4, nullptr, nullptr) == nullptr);
  CHECK(errno == EINVAL);
  CHECK(relay_open("x", m.path("app").c_str(), 4096, 0, nullptr, nullptr) == nullptr);
  CHECK(errno == EINVAL);
  CHECK(relay_open("x", m.path("app").c_str(), size_t{1} << 31, 4, nullptr, nullptr) == nullptr);
  CHECK(errno == EFBIG);
  for (const char* bad : {"", ".", "..", "a/b"}) {
    CAPTURE(bad);
    CHECK(relay_open(bad, m.path("app").c_str(), 4096, 4, nullptr, nullptr) == nullptr);
    CHECK(errno == EINVAL);
  }
  ::unsetenv("RELAYFS_MOUNT");
  CHECK(relay_open("x", nullptr, 4096, 4, nullptr, nullptr) == nullptr);
  CHECK(errno == EINVAL);
  ::setenv("RELAYFS_MOUNT", m.dir.c_str(), 1);
  rchan* c = relay_open("env", nullptr, 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  CHECK(exists(m.path("env0")));
  CHECK(relay_open("env", nullptr, 4096, 4, nullptr, nullptr) == nullptr);
  CHECK(errno == EEXIST);
  CHECK(relay_close(c) == 0);
  ::unsetenv("RELAYFS_MOUNT");
}

TEST_CASE("users cannot create, write, truncate, rename or remove relay files") {
  Mount m;
  rchan* c = open_global(m.dir, "f");
  const std::string f = m.path("f0");
  errno = 0;
  CHECK(::open(f.c_str(), O_WRONLY) == -1);
  CHECK(errno == EPERM);
  CHECK(::open(f.c_str(), O_RDWR) == -1);
  CHECK(errno == EPERM);
  CHECK(::truncate(f.c_str(), 0) == -1);
  CHECK(errno == EPERM);
  CHECK(::rename(f.c_str(), m.path("g0").c_str()) == -1);
  CHECK(errno == EPERM);
  CHECK(::unlink(f.c_str()) == -1);
  CHECK(errno == EPERM);
  CHECK(::chmod(f.c_str(), 0644) == -1);
  CHECK(errno == EPERM);
  CHECK(::open(m.path("new").c_str(), O_WRONLY | O_CREAT, 0644) == -1);
  CHECK(errno == EPERM);
  CHECK(::mknod(m.path("fifo").c_str(), S_IFIFO | 0644, 0) == -1);
  CHECK(errno == EPERM);
  CHECK(::symlink("f0", m.path("link").c_str()) == -1);
  CHECK(errno == EPERM);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("st_size counts bytes produced and never shrinks; st_mtime moves with data") {
  Mount m;
  rchan* c = open_global(m.dir, "s", 64, 4);
  struct stat a, b;
  REQUIRE(::stat(m.path("s0").c_str(), &a) == 0);
  CHECK(a.st_size == 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  write_records(c, 0, 3);  // 33 bytes in the first sub-buffer
  REQUIRE(::stat(m.path("s0").c_str(), &b) == 0);
  CHECK(b.st_size == 33);
  CHECK((b.st_mtim.tv_sec > a.st_mtim.tv_sec ||
         (b.st_mtim.tv_sec == a.st_mtim.tv_sec && b.st_mtim.tv_nsec > a.st_mtim.tv_nsec)));
  CHECK(slurp(m.path("s0")).size() == 33);  // reading consumes, the size stays
  REQUIRE(::stat(m.path("s0").c_str(), &b) == 0);
  CHECK(b.st_size == 33);
  write_records(c, 3, 10);  // switches: padding is not counted
  REQUIRE(::stat(m.path("s0").c_str(), &b) == 0);
  CHECK(b.st_size == 110);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("cat reads every record and never a padding byte") {
  Mount m;
  // 11-byte records in 64-byte sub-buffers: 5 per sub-buffer, 9 bytes of padding each.
  rchan* c = open_global(m.dir, "c", 64, 16);
  const std::string want = write_records(c, 0, 60);
  REQUIRE(relay_flush(c) == 0);
  CHECK(capture("cat " + m.path("c0")) == want);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("dd with several block sizes, and head -c") {
  Mount m;
  rchan* c = open_global(m.dir, "d", 4096, 64);
  for (const char* bs : {"1", "7", "512", "4096", "1M", "4M"}) {
    CAPTURE(bs);
    const std::string want = write_records(c, 0, 2000);
    CHECK(capture(std::string("dd if=") + m.path("d0") + " bs=" + bs + " status=none") == want);
  }
  const std::string want = write_records(c, 0, 100);
  CHECK(capture("head -c 33 " + m.path("d0")) == want.substr(0, 33));
  CHECK(capture("cat " + m.path("d0")) == want.substr(33));  // head consumed what it read
  CHECK(relay_close(c) == 0);
}

TEST_CASE("head -n prints its lines; what it read past them is consumed") {
  Mount m;
  rchan* c = open_global(m.dir, "h", 4096, 64);
  const std::string want = write_records(c, 0, 100);  // 100 lines of 11 bytes
  CHECK(capture("head -n 3 " + m.path("h0") + " 2>/dev/null") == want.substr(0, 33));
  // head read all 1100 bytes at once, then sought back to the end of its third line. A seek
  // changes nothing on a relay file (relay(7)): the rest was consumed by that read.
  CHECK(capture("cat " + m.path("h0")) == "");
  const std::string more = write_records(c, 100, 110);
  CHECK(capture("head -n 10 " + m.path("h0") + " 2>/dev/null") == more);  // nothing extra left
  CHECK(relay_close(c) == 0);
}

TEST_CASE("a seek changes nothing, and there is no end to seek to: tail reads forward") {
  Mount m;
  rchan* c = open_global(m.dir, "k", 4096, 64);
  const std::string want = write_records(c, 0, 20);
  const int fd = ::open(m.path("k0").c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  char buf[11];
  REQUIRE(::read(fd, buf, sizeof buf) == 11);
  CHECK(::lseek(fd, 0, SEEK_SET) == 0);  // what tail -F does to a file it opens again
  CHECK(::lseek(fd, 0, SEEK_END) == -1);
  CHECK(errno == ESPIPE);
  REQUIRE(::read(fd, buf, sizeof buf) == 11);
  CHECK(std::string(buf, 11) == want.substr(11, 11));  // on from where it was, not again
  ::close(fd);
  // tail's last lines, read forward as from a pipe (a backward read would consume the rest).
  CHECK(capture("tail -n 2 " + m.path("k0")) == want.substr(want.size() - 22));
  CHECK(relay_close(c) == 0);
}

TEST_CASE("tail -f follows a relay file as records arrive") {
  Mount m;
  rchan* c = open_global(m.dir, "t");
  const std::string out = m.dir + ".tail";
  // tail polls fstat once a second on a FUSE file; give it a few rounds.
  FILE* p = ::popen(("timeout 4 tail -f -s 0.2 " + m.path("t0") + " > " + out).c_str(), "r");
  REQUIRE(p != nullptr);
  std::string want;
  for (int round = 0; round < 5; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    want += write_records(c, round * 10, round * 10 + 10);
  }
  ::pclose(p);
  std::ifstream in(out);
  std::stringstream got;
  got << in.rdbuf();
  ::unlink(out.c_str());
  CHECK(got.str() == want);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("splice and sendfile, mixed with read and across size changes, give the exact stream") {
  Mount m;
  rchan* c = open_global(m.dir, "sp");
  std::string want = write_records(c, 0, 1000);
  const int in = ::open(m.path("sp0").c_str(), O_RDONLY);
  REQUIRE(in >= 0);
  int pfd[2];
  REQUIRE(::pipe(pfd) == 0);
  std::string got;
  auto splice_some = [&](size_t len) {
    const ssize_t n = ::splice(in, nullptr, pfd[1], nullptr, len, 0);
    REQUIRE(n >= 0);
    std::string part(static_cast<size_t>(n), '\0');
    if (n) REQUIRE(::read(pfd[0], part.data(), part.size()) == n);
    got += part;
    return n;
  };
  auto read_some = [&](size_t len) {
    std::string part(len, '\0');
    const ssize_t n = ::read(in, part.data(), len);
    REQUIRE(n >= 0);
    got += part.substr(0, static_cast<size_t>(n));
  };
  splice_some(1100);
  splice_some(3000);
  read_some(500);
  want += write_records(c, 1000, 2000);
  struct stat st;
  REQUIRE(::stat(m.path("sp0").c_str(), &st) == 0);  // a new size: the kernel drops its pages
  while (splice_some(5000) > 0) read_some(77);
  read_some(1 << 16);
  CHECK(got.size() == want.size());
  CHECK(got == want);
  // sendfile into a pipe is a splice: it consumes like read and gives the exact stream.
  const std::string more = write_records(c, 2000, 2600);
  REQUIRE(::stat(m.path("sp0").c_str(), &st) == 0);  // splice reads up to the size last seen
  std::string sent;
  for (;;) {
    const ssize_t n = ::sendfile(pfd[1], in, nullptr, 3000);
    REQUIRE(n >= 0);
    if (n == 0) break;
    std::string part(static_cast<size_t>(n), '\0');
    REQUIRE(::read(pfd[0], part.data(), part.size()) == n);
    sent += part;
  }
  CHECK(sent == more);
  // Into a file, through the page cache as into a pipe; it may stop at the size the kernel last
  // knew (0, nothing consumed). What it sent and what read(2) gives then are the stream.
  const std::string last = write_records(c, 2600, 2610);
  const std::string file = m.dir + ".sendfile";
  const int out = ::open(file.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  REQUIRE(out >= 0);
  struct stat ist;
  REQUIRE(::fstat(in, &ist) == 0);
  for (;;) {
    const ssize_t n = ::sendfile(out, in, nullptr, 4096);
    REQUIRE(n >= 0);
    if (n == 0) break;
  }
  ::close(out);
  std::string tail(8192, '\0');
  const ssize_t n = ::read(in, tail.data(), tail.size());
  REQUIRE(n >= 0);
  CHECK(slurp(file) + tail.substr(0, static_cast<size_t>(n)) == last);
  ::unlink(file.c_str());
  ::close(pfd[0]);
  ::close(pfd[1]);
  ::close(in);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("pv, which splices, follows a live channel with every record in order") {
  if (run("command -v pv >/dev/null") != 0) {
    MESSAGE("skipped: pv is not installed");
    return;
  }
  Mount m({"-o", "blocking"});
  rchan* c = open_global(m.dir, "pv", 1 << 16, 8);
  std::string want;
  std::thread writer([&] {
    for (int i = 0; i < 30; ++i) {
      want += write_records(c, i * 500, i * 500 + 500);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE(relay_close(c) == 0);  // pv then reads to the end and exits
  });
  const std::string got = capture("pv -q " + m.path("pv0") + " 2>/dev/null </dev/null");
  writer.join();
  CHECK(got.size() == want.size());
  CHECK(got == want);
}

TEST_CASE("empty reads return 0, or EAGAIN with O_NONBLOCK") {
  Mount m;
  rchan* c = open_global(m.dir, "e");
  const int fd = ::open(m.path("e0").c_str(), O_RDONLY);
  char buf[64];
  CHECK(::read(fd, buf, sizeof buf) == 0);
  ::fcntl(fd, F_SETFL, O_NONBLOCK);
  CHECK(::read(fd, buf, sizeof buf) == -1);
  CHECK(errno == EAGAIN);
  ::close(fd);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("poll and epoll report data as it arrives, and POLLERR once finalized and drained") {
  Mount m;
  rchan* c = open_global(m.dir, "p");
  const int fd = ::open(m.path("p0").c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(fd >= 0);
  pollfd pfd{fd, POLLIN | POLLRDNORM, 0};
  CHECK(::poll(&pfd, 1, 0) == 0);
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    write_records(c, 0, 1);
  });
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(::poll(&pfd, 1, 5000) == 1);
  CHECK((pfd.revents & (POLLIN | POLLRDNORM)) == (POLLIN | POLLRDNORM));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(4));
  writer.join();
  char buf[64];
  CHECK(::read(fd, buf, sizeof buf) == 11);

  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{EPOLLIN, {}};
  REQUIRE(::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0);
  epoll_event got;
  CHECK(::epoll_wait(ep, &got, 1, 0) == 0);
  std::thread writer2([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    write_records(c, 1, 2);
  });
  CHECK(::epoll_wait(ep, &got, 1, 5000) == 1);
  writer2.join();
  CHECK(::read(fd, buf, sizeof buf) == 11);
  ::close(ep);

  CHECK(relay_close(c) == 0);
  pfd.revents = 0;
  CHECK(::poll(&pfd, 1, 2000) == 1);
  CHECK((pfd.revents & POLLERR) != 0);
  ::close(fd);
}

TEST_CASE("blocking mode: a reader waits for data, gets EOF at close, and Ctrl-C interrupts it") {
  Mount m({"-o", "blocking"});
  rchan* c = open_global(m.dir, "b");
  SUBCASE("data wakes a blocked read") {
    const int fd = ::open(m.path("b0").c_str(), O_RDONLY);
    std::thread writer([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      write_records(c, 0, 1);
    });
    char buf[64];
    CHECK(::read(fd, buf, sizeof buf) == 11);
    writer.join();
    ::fcntl(fd, F_SETFL, O_NONBLOCK);
    CHECK(::read(fd, buf, sizeof buf) == -1);  // O_NONBLOCK still gets EAGAIN
    CHECK(errno == EAGAIN);
    ::close(fd);
  }
  SUBCASE("cat blocks in state S, not D, and SIGINT ends it") {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::execlp("cat", "cat", m.path("b0").c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const char state = proc_state("/proc/" + std::to_string(pid));
    CHECK(state == 'S');
    ::kill(pid, SIGINT);
    int st = 0;
    pid_t r = 0;
    for (int i = 0; i < 300 && r == 0; ++i) {
      r = ::waitpid(pid, &st, WNOHANG);
      if (r == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (r == 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
    }
    CHECK(r == pid);
    CHECK(WIFSIGNALED(st));
  }
  SUBCASE("the channel's close ends a blocked read with end of file") {
    const int fd = ::open(m.path("b0").c_str(), O_RDONLY);
    std::thread closer([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      REQUIRE(relay_close(c) == 0);
      c = nullptr;
    });
    char buf[64];
    CHECK(::read(fd, buf, sizeof buf) == 0);
    closer.join();
    ::close(fd);
  }
  if (c) CHECK(relay_close(c) == 0);
}

TEST_CASE("a producer killed with SIGKILL mid-stream: what it committed stays readable") {
  Mount m;
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    rchan_callbacks cb{};
    cb.create_buf_file = &make_global;
    rchan* c = relay_open("k", m.dir.c_str(), 1 << 16, 64, &cb, nullptr);
    if (!c) ::_exit(1);
    if (::write(ready[1], "x", 1) != 1) ::_exit(1);
    for (int i = 0;; ++i) {
      const std::string r = record(i % 1000000);
      relay_write(c, r.data(), r.size());
    }
  }
  char x;
  REQUIRE(::read(ready[0], &x, 1) == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  // Everything readable is whole records, in order; then the file goes.
  std::string got;
  for (int i = 0; i < 100 && exists(m.path("k0")); ++i) got += slurp(m.path("k0"));
  CHECK(got.size() > 0);
  CHECK(got.size() % 11 == 0);
  bool in_order = true;
  for (size_t at = 0, i = 0; at + 11 <= got.size(); at += 11, ++i)
    if (got.compare(at, 11, record(static_cast<int>(i % 1000000))) != 0) in_order = false;
  CHECK(in_order);
  CHECK_FALSE(exists(m.path("k0")));
  CHECK(is_mounted(m.dir));  // the daemon runs on
  ::close(ready[0]);
  ::close(ready[1]);
}

TEST_CASE("malformed control messages get an error reply and the daemon carries on") {
  Mount m;
  const int s = connect_control(m.dir);
  namespace proto = relayfs::proto;
  auto expect_error = [&](int want) {
    proto::Received r;
    REQUIRE(proto::recv_message(s, &r) == 1);
    proto::Status st;
    REQUIRE(proto::decode(r.payload.data(), r.payload.size(), &st) == 0);
    CHECK(st.status == want);
  };
  REQUIRE(::send(s, "garbage!", 8, 0) == 8);
  expect_error(-EPROTO);
  auto bad = proto::encode(proto::CloseRequest{1}, 1);
  proto::Header h;
  std::memcpy(&h, bad.data(), sizeof h);
  h.version = 99;
  std::memcpy(bad.data(), &h, sizeof h);
  REQUIRE(proto::send_message(s, bad) == 0);
  expect_error(-EPROTONOSUPPORT);
  // A well-formed open with a bad name: refused with EINVAL on the same connection.
  struct stat st;
  REQUIRE(::stat(m.dir.c_str(), &st) == 0);
  REQUIRE(proto::send_message(
              s, proto::encode(proto::OpenRequest{st.st_ino, 4096, 4, 0, 0, "a/b"}, 2)) == 0);
  proto::Received r;
  REQUIRE(proto::recv_message(s, &r) == 1);
  proto::OpenReply rep;
  REQUIRE(proto::decode(r.payload.data(), r.payload.size(), &rep) == 0);
  CHECK(rep.status == -EINVAL);
  // Closing someone else's (or no) channel.
  REQUIRE(proto::send_message(s, proto::encode(proto::CloseRequest{12345}, 3)) == 0);
  expect_error(-ENOENT);
  ::close(s);
  // The daemon still serves producers.
  rchan* c = open_global(m.dir, "after");
  write_records(c, 0, 3);
  CHECK(slurp(m.path("after0")).size() == 33);
  CHECK(relay_close(c) == 0);
}

namespace {

// Buffers the daemon has registered with its io_uring: non-empty entries in the ring's fdinfo,
// or -1 if the fdinfo did not list them. Some kernels print the table only when they win a
// trylock on the ring, so a missing table means "not seen", never "none".
int registered_buffers_once(pid_t daemon) {
  const std::string fds = "/proc/" + std::to_string(daemon) + "/fd/";
  for (int fd = 0; fd < 1024; ++fd) {
    char link[64] = {};
    if (::readlink((fds + std::to_string(fd)).c_str(), link, sizeof link - 1) <= 0) continue;
    if (std::string(link) != "anon_inode:[io_uring]") continue;
    std::ifstream in("/proc/" + std::to_string(daemon) + "/fdinfo/" + std::to_string(fd));
    std::string line;
    int n = 0;
    bool in_bufs = false;
    while (std::getline(in, line)) {
      if (line.rfind("UserBufs:", 0) == 0)
        in_bufs = true;
      else if (in_bufs && line.find(": 0x") != std::string::npos)
        n += line.find("/0") == line.size() - 2 ? 0 : 1;
      else if (in_bufs)
        break;
    }
    return in_bufs ? n : -1;
  }
  return -1;
}

// The registered count once the fdinfo shows `want` (or the last count seen after 2 s): the
// daemon registers before it replies, but the table may be hidden from a single look.
int registered_buffers(pid_t daemon, int want) {
  int n = -1;
  for (int i = 0; i < 200; ++i) {
    n = registered_buffers_once(daemon);
    if (n == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return n;
}

std::atomic<int> g_mapped{0}, g_unmapped{0};

}  // namespace

TEST_CASE("every channel buffer is registered with the daemon's io_uring while the channel lives") {
  Mount m;
  CHECK(registered_buffers(m.pid, 0) == 0);
  rchan* c = relay_open("r", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  REQUIRE(c != nullptr);
  CHECK(registered_buffers(m.pid, static_cast<int>(c->n_buffers)) ==
        static_cast<int>(c->n_buffers));
  rchan* g = open_global(m.dir, "rg");
  CHECK(registered_buffers(m.pid, static_cast<int>(c->n_buffers) + 1) ==
        static_cast<int>(c->n_buffers) + 1);
  CHECK(relay_close(c) == 0);
  CHECK(relay_close(g) == 0);
  // Closed and empty: the files go, and the channel with them.
  CHECK(registered_buffers(m.pid, 0) == 0);
}

TEST_CASE(
    "buf_mapped fires when a reader opens a buffer's file, buf_unmapped when the last closes") {
  Mount m;
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global;
  cb.buf_mapped = [](rchan_buf* b, void* filp) {
    if (b->cpu == 0 && filp == nullptr) ++g_mapped;
  };
  cb.buf_unmapped = [](rchan_buf*, void*) { ++g_unmapped; };
  g_mapped = g_unmapped = 0;
  rchan* c = relay_open("mp", m.dir.c_str(), 4096, 4, &cb, nullptr);
  REQUIRE(c != nullptr);
  const int a = ::open(m.path("mp0").c_str(), O_RDONLY);
  CHECK(wait_for([] { return g_mapped == 1; }, std::chrono::seconds(1)));
  const int b = ::open(m.path("mp0").c_str(), O_RDONLY);  // not the first: no event
  ::close(a);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(g_mapped == 1);
  CHECK(g_unmapped == 0);
  ::close(b);
  CHECK(wait_for([] { return g_unmapped == 1; }, std::chrono::seconds(1)));
  CHECK(relay_close(c) == 0);
}

TEST_CASE("creating a channel needs write permission on the directory; files keep their modes") {
  gid_t gid = 0;
  const uid_t uid = test_user(&gid);
  if (uid == static_cast<uid_t>(-1)) {
    MESSAGE("skipped: needs root to create a second user");
    return;
  }
  Mount m({"-o", "allow_other"});
  REQUIRE(::mkdir(m.path("root-only").c_str(), 0755) == 0);
  REQUIRE(::mkdir(m.path("theirs").c_str(), 0755) == 0);
  REQUIRE(::chown(m.path("theirs").c_str(), uid, gid) == 0);
  const std::string root_only = m.path("root-only"), theirs = m.path("theirs");
  CHECK(as_user(uid, gid, [&] {
          return relay_open("x", root_only.c_str(), 4096, 4, nullptr, nullptr) ? 0 : errno;
        }) == EACCES);
  CHECK(as_user(uid, gid, [&] {
          rchan* c = relay_open("x", theirs.c_str(), 4096, 4, nullptr, nullptr);
          if (!c) return errno;
          relay_write(c, "mine\n", 5);
          struct stat st;
          const int rc =
              ::stat((theirs + "/x0").c_str(), &st) == 0 && st.st_uid == ::getuid() ? 0 : 99;
          return relay_close(c) == 0 ? rc : errno;
        }) == 0);
  // A root-owned 0400 relay file cannot be read by the other user: the kernel checks the mode.
  rchan* c = open_global(root_only, "secret");
  write_records(c, 0, 1);
  const std::string secret = m.path("root-only/secret0");
  CHECK(as_user(uid, gid, [&] { return ::open(secret.c_str(), O_RDONLY) < 0 ? errno : 0; }) ==
        EACCES);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("relay_subbufs_consumed frees sub-buffers of a full no-overwrite buffer") {
  Mount m;
  rchan* c = open_global(m.dir, "sc", 64, 2);  // room for 2 x 5 records of 11 bytes
  write_records(c, 0, 10);
  const std::string r = record(10);
  CHECK(relay_write(c, r.data(), r.size()) == -1);
  CHECK(errno == ENOSPC);
  CHECK(relay_buf_full(c->buf[0]) == 1);
  // An mmap-style reader tells relayfs it is done with the first sub-buffer.
  REQUIRE(relay_subbufs_consumed(c, 0, 1) == 0);
  bool ok = false;
  for (int i = 0; i < 200 && !ok; ++i) {
    ok = relay_write(c, r.data(), r.size()) == 0;
    if (!ok) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(ok);
  CHECK(relay_subbufs_consumed(c, 99, 1) == -1);
  CHECK(errno == EINVAL);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("blocked reads are parked: more readers than worker threads leave the mount responsive") {
  Mount m({"-o", "blocking,max_threads=2"});
  rchan* c = open_global(m.dir, "pk");
  constexpr int kReaders = 8;
  std::atomic<int> eof{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < kReaders; ++i)
    readers.emplace_back([&] {
      const int fd = ::open(m.path("pk0").c_str(), O_RDONLY);
      char buf[64];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) {
      }
      if (n == 0) ++eof;
      ::close(fd);
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Every worker would be stuck if reads held them: these would hang.
  struct stat st;
  CHECK(::stat(m.path("pk0").c_str(), &st) == 0);
  CHECK(::mkdir(m.path("still-works").c_str(), 0755) == 0);
  write_records(c, 0, 20);
  CHECK(relay_close(c) == 0);  // finalized: every parked reader gets its data or end of file
  for (auto& t : readers) t.join();
  CHECK(eof == kReaders);
}

TEST_CASE("a producer cannot close or consume another producer's channel") {
  Mount m;
  rchan* mine = open_global(m.dir, "mine");
  // Another connection, as another producer would have: it knows only the channel's number.
  const int s = connect_control(m.dir);
  namespace proto = relayfs::proto;
  for (uint32_t id = 1; id < 8; ++id) {
    REQUIRE(proto::send_message(s, proto::encode(proto::ConsumedRequest{id, 0, 100}, id)) == 0);
    REQUIRE(proto::send_message(s, proto::encode(proto::CloseRequest{id}, id)) == 0);
    proto::Received r;
    REQUIRE(proto::recv_message(s, &r) == 1);
    proto::Status st;
    REQUIRE(proto::decode(r.payload.data(), r.payload.size(), &st) == 0);
    CHECK(st.status == -ENOENT);
  }
  ::close(s);
  const std::string want = write_records(mine, 0, 5);
  CHECK(slurp(m.path("mine0")) == want);  // untouched: nothing consumed, still open
  CHECK(relay_close(mine) == 0);
}

namespace spec {
// The spec's two subbuf_start examples, as relay.txt writes them.
int no_overwrite(struct rchan_buf* buf, void* subbuf, void* prev_subbuf, size_t prev_padding) {
  (void)subbuf;
  if (prev_subbuf) *((unsigned*)prev_subbuf) = prev_padding;
  if (relay_buf_full(buf)) return 0;
  subbuf_start_reserve(buf, sizeof(unsigned int));
  return 1;
}
int overwrite(struct rchan_buf* buf, void* subbuf, void* prev_subbuf, size_t prev_padding) {
  (void)subbuf;
  if (prev_subbuf) *((unsigned*)prev_subbuf) = prev_padding;
  subbuf_start_reserve(buf, sizeof(unsigned int));
  return 1;
}
}  // namespace spec

// Splits what a reader got into sub-buffers: each starts with a 4-byte header holding its
// padding (written at the next switch), then whole 11-byte records.
std::vector<std::pair<unsigned, std::string>> split_headers(const std::string& got, size_t subbuf) {
  std::vector<std::pair<unsigned, std::string>> out;
  size_t at = 0;
  while (at + 4 <= got.size()) {
    unsigned pad;
    std::memcpy(&pad, got.data() + at, 4);
    const size_t body =
        std::min(subbuf - 4 - std::min<size_t>(pad, subbuf - 4), got.size() - at - 4);
    out.emplace_back(pad, got.substr(at + 4, body));
    at += 4 + body;
  }
  return out;
}

TEST_CASE("the spec's example subbuf_start callbacks work as written") {
  Mount m;
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global;
  SUBCASE("no-overwrite: headers hold each sub-buffer's padding; a full buffer drops records") {
    cb.subbuf_start = &spec::no_overwrite;
    rchan* c = relay_open("spec", m.dir.c_str(), 64, 4, &cb, nullptr);
    REQUIRE(c != nullptr);
    std::string want;
    int written = 0;
    for (int i = 0; i < 30; ++i) {
      const std::string r = record(i);
      if (relay_write(c, r.data(), r.size()) == 0) {
        want += r;
        ++written;
      }
    }
    CHECK(written == 20);  // 4 sub-buffers of 5 records: the fifth switch is refused
    // 64 - 4 (header) - 5 * 11 = 5 bytes of padding in each closed sub-buffer.
    const auto parts = split_headers(slurp(m.path("spec0")), 64);
    REQUIRE(parts.size() == 4);
    std::string records;
    for (size_t i = 0; i < parts.size(); ++i) {
      CAPTURE(i);
      CHECK(parts[i].first == 5);
      records += parts[i].second;
    }
    CHECK(records == want);
    CHECK(relay_close(c) == 0);
  }
  SUBCASE("overwrite: writes never fail; the reader gets the newest sub-buffers, whole") {
    cb.subbuf_start = &spec::overwrite;
    rchan* c = relay_open("spec", m.dir.c_str(), 64, 4, &cb, nullptr);
    REQUIRE(c != nullptr);
    for (int i = 0; i < 100; ++i) {
      const std::string r = record(i);
      REQUIRE(relay_write(c, r.data(), r.size()) == 0);
    }
    REQUIRE(relay_flush(c) == 0);
    const auto parts = split_headers(slurp(m.path("spec0")), 64);
    REQUIRE(parts.size() >= 3);
    std::string records;
    for (auto& p : parts) records += p.second;
    // Records 0..99 in sub-buffers of 5; the newest survive, in order, ending with record 99.
    REQUIRE(records.size() % 11 == 0);
    const int first = std::atoi(records.substr(4, 6).c_str());
    CHECK(first > 0);
    for (size_t at = 0; at < records.size(); at += 11)
      CHECK(records.substr(at, 11) == record(first + static_cast<int>(at / 11)));
    CHECK(records.substr(records.size() - 11) == record(99));
    CHECK(relay_close(c) == 0);
  }
}

TEST_CASE("the C++ wrapper opens, writes and closes, and throws with the errno") {
  Mount m;
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global;
  {
    relayfs::Channel ch("cpp", m.dir.c_str(), 4096, 4, &cb);
    CHECK(ch.write("abc\n", 4));
    void* slot = ch.reserve(4);
    REQUIRE(slot != nullptr);
    std::memcpy(slot, "def\n", 4);
    ch.commit(slot, 4);
    ch.flush();
    {
      relayfs::Reader r(m.path("cpp0"));  // an mmap reader sees the flushed sub-buffer
      relay_subbuf sb;
      REQUIRE(r.next(&sb));
      CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == "abc\ndef\n");
      CHECK(r.valid(sb));
      r.consumed(1);
    }
    // Consumed through the mapping: nothing is left for read(2), and the counters say so.
    CHECK(slurp(m.path("cpp0")).empty());
    const relay_stats st = ch.stats(0);
    CHECK(st.bytes_produced == 8);
    CHECK(st.subbufs_consumed == 1);
    CHECK_THROWS_AS(ch.stats(1), std::out_of_range);
    CHECK(ch.write("ghi\n", 4));
    CHECK(slurp(m.path("cpp0")) == "ghi\n");
  }  // closed here: the drained file goes
  CHECK_FALSE(exists(m.path("cpp0")));
  try {
    relayfs::Channel bad("x", m.path("missing").c_str(), 4096, 4);
    CHECK(false);
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == ENOENT);
  }
}

TEST_CASE("relay_write and relay_reserve/commit make no system call") {
  Mount m;
  int done[2];
  REQUIRE(::pipe(done) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(done[0]);
    rchan* c = relay_open("nosys", m.dir.c_str(), 1 << 16, 8, nullptr, nullptr);
    if (!c) ::_exit(3);
    // From here any system call of this thread but read, write and exit kills the process.
    if (::prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0) ::_exit(4);
    int ok = 0;
    for (int i = 0; i < 5000; ++i) {
      char rec[11] = "rec 0000\n";
      if (relay_write(c, rec, 10) == 0) ++ok;
      void* slot = relay_reserve(c, 10);
      if (slot) {
        std::memcpy(slot, rec, 10);
        relay_commit(c, slot, 10);
      }
    }
    const char verdict = ok > 0 ? 'y' : 'n';
    if (::write(done[1], &verdict, 1) != 1) ::syscall(SYS_exit, 6);
    for (;;) ::syscall(SYS_read, done[1], nullptr, 0);  // wait to be killed: exit ends one thread
  }
  ::close(done[1]);
  // A system call kills the writing thread only (strict seccomp); the library's event thread
  // keeps the process, and the pipe, alive: so wait with a deadline.
  char verdict = 0;
  pollfd p{done[0], POLLIN, 0};
  const ssize_t n = ::poll(&p, 1, 10000) == 1 ? ::read(done[0], &verdict, 1) : 0;
  ::kill(child, SIGKILL);
  int st = 0;
  ::waitpid(child, &st, 0);
  ::close(done[0]);
  CHECK(n == 1);
  CHECK(verdict == 'y');
}

TEST_CASE("relay_reset discards unread data and the channel goes on") {
  Mount m;
  rchan* c = open_global(m.dir, "rs");
  write_records(c, 0, 50);
  REQUIRE(relay_reset(c) == 0);
  const std::string after = write_records(c, 50, 60);
  CHECK(slurp(m.path("rs0")) == after);
  struct stat st;
  REQUIRE(::stat(m.path("rs0").c_str(), &st) == 0);
  CHECK(st.st_size == 60 * 11);  // the file size counts the discarded bytes too: it never shrinks
  CHECK(relay_close(c) == 0);
}

TEST_CASE("SIGTERM unmounts cleanly") {
  Mount m;
  const int st = m.stop_daemon(SIGTERM);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  CHECK_FALSE(is_mounted(m.dir));
}

TEST_CASE("fusermount3 -u unmounts cleanly and the daemon exits") {
  Mount m;
  REQUIRE(run("fusermount3 -u " + m.dir) == 0);
  int st = 0;
  for (int i = 0; i < 300 && ::waitpid(m.pid, &st, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(WIFEXITED(st));
  m.pid = -1;
  CHECK_FALSE(is_mounted(m.dir));
}

TEST_CASE("a second relayfs on the same mount point is refused, and the first one keeps serving") {
  // A name with a space, which /proc/self/mountinfo escapes.
  TempDir t;
  const std::string at = t.path("relay mnt");
  REQUIRE(::mkdir(at.c_str(), 0755) == 0);
  Mount m({}, at);
  rchan* c = open_global(m.dir, "first");
  const std::string data = write_records(c, 0, 10);
  const std::string out =
      capture("timeout -s KILL 20 '" + daemon_path() + "' none '" + at + "' 2>&1; echo rc=$?");
  CHECK(out.find("a relayfs is already mounted there") != std::string::npos);
  CHECK(out.find("rc=1") != std::string::npos);
  // Still one mount there, the first, with its channel.
  CHECK(std::stoi(capture("grep -c ' fuse.relayfs ' /proc/self/mountinfo | tr -d '\\n'")) >= 1);
  CHECK(capture("findmnt -n -o TARGET --target '" + at + "' | wc -l | tr -d ' \\n'") == "1");
  CHECK(slurp(m.path("first0")) == data);
  REQUIRE(relay_close(c) == 0);
}
