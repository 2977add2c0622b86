// Permissions between real users, created for the test (relayfs-test and relayfs-test2, "alice"
// and "bob" below): relay files carry the owner and mode their producer chose and the kernel
// enforces them (default_permissions); nobody creates a channel where they may not write; nobody
// reaches another user's buffers through the control socket or the reader API; a supplementary
// group counts as the primary group does; and without allow_other nobody but the mounter gets in
// at all. Each user's side runs in a forked child that drops to that user (setgroups, setgid,
// setuid). Needs root; skips otherwise.
//
// Existing permission tests elsewhere: mount_test.cc (a second user and relay_open into a
// directory it may or may not write; a root-owned 0400 file it cannot open), reader_test.cc
// (relay_reader_open and a raw reader-open of 0400 and 0444 files as nobody, with and without
// allow_other; the reader's descriptor cannot be reopened writable).
#include <dirent.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <relayfs/relay.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "proto/protocol.h"
#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;
namespace proto = relayfs::proto;

namespace {

// create_buf_file for a global channel whose files get mode m.
template <mode_t M>
int global_mode(const char*, const char*, mode_t* mode, rchan_buf*, int* is_global) {
  *is_global = 1;
  *mode = M;
  return 0;
}

// Opens a global channel with files of mode M and writes record(0..n-1). nullptr on failure.
template <mode_t M>
rchan* open_written(const std::string& dir, const char* base, int n) {
  rchan_callbacks cb{};
  cb.create_buf_file = &global_mode<M>;
  rchan* c = relay_open(base, dir.c_str(), 4096, 4, &cb, nullptr);
  if (!c) return nullptr;
  for (int i = 0; i < n; ++i) {
    const std::string r = record(i);
    if (relay_write(c, r.data(), r.size()) != 0) return nullptr;
  }
  return c;
}

std::string all_records(int from, int to) {
  std::string s;
  for (int i = from; i < to; ++i) s += record(i);
  return s;
}

int open_errno(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK);
  if (fd < 0) return errno;
  ::close(fd);
  return 0;
}

int reader_errno(const std::string& path) {
  relay_reader* r = relay_reader_open(path.c_str());
  if (!r) return errno;
  relay_reader_close(r);
  return 0;
}

// A raw reader-open of inode ino, on a fresh connection to the daemon's socket called control.
int raw_reader_open(const std::string& control, uint64_t ino) {
  const int s = dial_control(control);
  if (s < 0) return 200;
  const int rc = control_answer(s, proto::encode(proto::ReaderOpenRequest{ino}, 1));
  ::close(s);
  return rc;
}

}  // namespace

TEST_CASE(
    "relay files carry their producer's owner and mode, and the kernel and the daemon "
    "enforce them between users") {
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other"});
  const std::string home = home_of(m, alice);
  constexpr int kRecords = 5;
  Holder a(
      alice,
      [&] {
        rchan* priv = open_written<0400>(home, "priv", kRecords);
        rchan* grp = open_written<0440>(home, "grp", kRecords);
        rchan* pub = open_written<0444>(home, "pub", kRecords);
        rchan* own = open_written<0600>(home, "own", kRecords);
        return priv && grp && pub && own ? 0 : (errno ? errno : 99);
      },
      [] { return 0; });
  REQUIRE(a.setup_errno() == 0);
  const std::string priv = home + "/priv0", grp = home + "/grp0", pub = home + "/pub0",
                    own = home + "/own0";
  for (auto [path, mode] :
       {std::pair{priv, 0400}, std::pair{grp, 0440}, std::pair{pub, 0444}, std::pair{own, 0600}}) {
    CAPTURE(path);
    struct stat st;
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(st.st_uid == alice.uid);
    CHECK(st.st_gid == alice.gid);
    CHECK((st.st_mode & 07777) == static_cast<mode_t>(mode));
    CHECK(S_ISREG(st.st_mode));
  }
  // The kernel (default_permissions): the owner reads; others by the group and other bits.
  CHECK(as_user(alice.uid, alice.gid, [&] { return open_errno(priv); }) == 0);
  CHECK(as_user(bob.uid, bob.gid, [&] { return open_errno(priv); }) == EACCES);
  CHECK(as_user(bob.uid, bob.gid, [&] { return open_errno(own); }) == EACCES);
  CHECK(as_user(bob.uid, bob.gid, [&] { return open_errno(grp); }) == EACCES);
  CHECK(as_user(bob.uid, alice.gid, [&] { return open_errno(grp); }) == 0);  // in alice's group
  CHECK(as_user(bob.uid, alice.gid, [&] { return open_errno(priv); }) == EACCES);
  CHECK(as_user(bob.uid, bob.gid, [&] { return open_errno(pub); }) == 0);
  // Nobody, the owner included, may change a relay file's mode or owner.
  CHECK(as_user(alice.uid, alice.gid, [&] { return ::chmod(priv.c_str(), 0444) ? errno : 0; }) ==
        EPERM);
  CHECK(as_user(bob.uid, bob.gid, [&] { return ::chmod(priv.c_str(), 0444) ? errno : 0; }) ==
        EPERM);
  CHECK(as_user(alice.uid, alice.gid,
                [&] { return ::chown(priv.c_str(), bob.uid, bob.gid) ? errno : 0; }) == EPERM);
  // The reader API and raw reader-opens follow the same rules, checked by the daemon itself.
  const std::string control = control_name(m.dir);
  const uint64_t priv_ino = ino_of(priv), grp_ino = ino_of(grp), pub_ino = ino_of(pub);
  CHECK(as_user(bob.uid, bob.gid, [&] { return reader_errno(priv); }) == EACCES);
  CHECK(as_user(bob.uid, bob.gid, [&] { return reader_errno(grp); }) == EACCES);
  CHECK(as_user(bob.uid, alice.gid, [&] { return reader_errno(grp); }) == 0);
  CHECK(as_user(bob.uid, bob.gid, [&] { return raw_reader_open(control, priv_ino); }) == EACCES);
  CHECK(as_user(bob.uid, bob.gid, [&] { return raw_reader_open(control, grp_ino); }) == EACCES);
  CHECK(as_user(bob.uid, alice.gid, [&] { return raw_reader_open(control, grp_ino); }) == 0);
  CHECK(as_user(bob.uid, bob.gid, [&] { return raw_reader_open(control, pub_ino); }) == 0);
  CHECK(as_user(alice.uid, alice.gid, [&] { return raw_reader_open(control, priv_ino); }) == 0);
  // None of the refused attempts consumed anything.
  CHECK(slurp(priv) == all_records(0, kRecords));
  CHECK(a.finish() == 0);
}

TEST_CASE("nobody creates a channel where they may not write, through the library or raw") {
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other"});
  const std::string root_only = m.path("root-only"), home = home_of(m, alice),
                    locked = m.path("locked"), inner = m.path("locked/inner");
  REQUIRE(::mkdir(root_only.c_str(), 0755) == 0);
  REQUIRE(::mkdir(locked.c_str(), 0700) == 0);  // nobody else may search it...
  REQUIRE(::mkdir(inner.c_str(), 0777) == 0);   // ...so this one is out of reach, open as it is
  REQUIRE(::chmod(inner.c_str(), 0777) == 0);   // whatever the umask
  const std::string control = control_name(m.dir);
  const uint64_t root_ino = ino_of(m.dir), root_only_ino = ino_of(root_only),
                 home_ino = ino_of(home), inner_ino = ino_of(inner);
  auto lib = [](const std::string& dir) {
    rchan* c = relay_open("x", dir.c_str(), 4096, 4, nullptr, nullptr);
    if (!c) return errno;
    relay_close(c);
    return 0;
  };
  auto raw = [&](uint64_t parent) {
    const int s = dial_control(control);
    if (s < 0) return 200;
    const int rc =
        control_answer(s, proto::encode(proto::OpenRequest{parent, 4096, 4, 0, 0, "x"}, 1));
    ::close(s);
    return rc;
  };
  for (const auto& dir : {m.dir, root_only, home}) {
    CAPTURE(dir);
    CHECK(as_user(bob.uid, bob.gid, [&] { return lib(dir); }) == EACCES);
  }
  CHECK(as_user(bob.uid, bob.gid, [&] { return lib(inner); }) == EACCES);  // stat(2) refuses
  // Raw requests name the directory by inode, skipping path resolution: the daemon checks write
  // permission on it and search permission on every directory above it.
  for (uint64_t ino : {root_ino, root_only_ino, inner_ino}) {
    CAPTURE(ino);
    CHECK(as_user(bob.uid, bob.gid, [&] { return raw(ino); }) == EACCES);
    CHECK(as_user(alice.uid, alice.gid, [&] { return raw(ino); }) == EACCES);
  }
  CHECK(as_user(bob.uid, bob.gid, [&] { return raw(home_ino); }) == EACCES);
  // Where they may write, both ways work.
  CHECK(as_user(alice.uid, alice.gid, [&] { return lib(home); }) == 0);
  CHECK(as_user(alice.uid, alice.gid, [&] { return raw(home_ino); }) == 0);
  // Nothing was made by the refused requests (the granted ones were closed, and were empty).
  CHECK(wait_for([&] { return !exists(home + "/x0"); }));
  for (const auto& dir : {root_only, inner}) {
    DIR* d = ::opendir(dir.c_str());
    REQUIRE(d != nullptr);
    int n = 0;
    while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
    CHECK(n == 0);
  }
}

TEST_CASE("another user cannot close, consume, map or record a channel through the control socket") {
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other"});
  const std::string home = home_of(m, alice);
  constexpr int kRecords = 20;
  rchan* held = nullptr;
  // Alice writes more once bob is done, and closes: her channel must have come through intact.
  // Her first records are flushed into a closed sub-buffer, so a consume request that got through
  // would have something to release.
  Holder a(
      alice,
      [&] {
        held = open_written<0400>(home, "mine", kRecords);
        if (!held) return errno;
        return relay_flush(held) == 0 ? 0 : errno;
      },
      [&] {
        for (int i = kRecords; i < 2 * kRecords; ++i) {
          const std::string r = record(i);
          if (relay_write(held, r.data(), r.size()) != 0) return 1;
        }
        return relay_close(held) == 0 ? 0 : 2;
      });
  REQUIRE(a.setup_errno() == 0);
  const std::string control = control_name(m.dir);
  const uint64_t file_ino = ino_of(home + "/mine0"), merged_ino = ino_of(home + "/mine"),
                 dir_ino = ino_of(home);
  const pid_t daemon = m.pid;
  REQUIRE(num(getfattr(home + "/mine0"), "subbufs_produced") == 1);
  // Every answer bob gets, as a code: 0 when all were refused as they should be, else the number
  // of the first check that was not.
  const int bob_result = as_user(bob.uid, bob.gid, [&] {
    const int s = dial_control(control);
    if (s < 0) return 100;
    // Channel ids are small numbers: try them all, as a guesser would. A consume request gets no
    // reply; the close request after it does, and the daemon answers a connection's requests in
    // order, so each consume request has been acted on when the close is answered.
    for (uint32_t id = 0; id < 64; ++id) {
      if (proto::send_message(s, proto::encode(proto::ConsumedRequest{id, 0, 1000}, id)) != 0)
        return 101;
      if (control_answer(s, proto::encode(proto::CloseRequest{id}, id)) != ENOENT) return 102;
    }
    // Consuming through a mapping it never obtained.
    if (control_answer(s, proto::encode(proto::ReaderConsumed{0, 1000}, 1)) != EBADF) return 103;
    // Mapping her buffer: by the file, by the merged view, by the directory, by a made-up inode.
    if (control_answer(s, proto::encode(proto::ReaderOpenRequest{file_ino}, 2)) != EACCES)
      return 104;
    if (control_answer(s, proto::encode(proto::ReaderOpenRequest{merged_ino}, 3)) != EINVAL)
      return 105;
    if (control_answer(s, proto::encode(proto::ReaderOpenRequest{dir_ino}, 4)) != ENOENT)
      return 106;
    if (control_answer(s, proto::encode(proto::ReaderOpenRequest{987654}, 5)) != ENOENT) return 107;
    // Recording her buffer into files of his own (relayctl record's request).
    const int out = ::open("/tmp", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    const int idx = ::open("/tmp", O_TMPFILE | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
    if (out < 0 || idx < 0) return 110;
    const int outputs[2] = {out, idx};
    if (control_answer(s, proto::encode(proto::RecordRequest{file_ino, 0, 0, 0}, 6), outputs, 2) !=
        EACCES)
      return 111;
    if (control_answer(s, proto::encode(proto::RecordRequest{merged_ino, 0, 0, 0}, 7), outputs,
                       2) != EINVAL)
      return 112;
    ::close(out);
    ::close(idx);
    ::close(s);
    if (reader_errno(home + "/mine0") != EACCES) return 108;
    // Nor through the daemon's own descriptors.
    const std::string fds = "/proc/" + std::to_string(daemon) + "/fd";
    if (DIR* d = ::opendir(fds.c_str())) {
      int opened = 0;
      while (dirent* e = ::readdir(d)) {
        const int fd = ::open((fds + "/" + e->d_name).c_str(), O_RDONLY | O_NONBLOCK);
        if (fd >= 0) {
          ++opened;
          ::close(fd);
        }
      }
      ::closedir(d);
      if (opened) return 109;
    }
    return 0;
  });
  CHECK(bob_result == 0);
  const Attrs after = getfattr(home + "/mine0");
  CHECK(num(after, "subbufs_consumed") == 0);
  CHECK(num(after, "bytes_consumed") == 0);
  CHECK(a.finish() == 0);
  // Nothing consumed, nothing closed early: every record, before and after bob's attempts.
  CHECK(slurp(home + "/mine0") == all_records(0, 2 * kRecords));
}

TEST_CASE("a supplementary group grants group access, in the kernel and in the daemon") {
  NEED_USERS(alice, bob);
  const gid_t sup = test_group("relayfs-sup");
  REQUIRE(sup != static_cast<gid_t>(-1));
  REQUIRE(sup != bob.gid);
  Mount m({"-o", "allow_other"});
  constexpr int kRecords = 5;
  // The files get the producer connection's primary gid: a root producer whose group is sup.
  Holder producer(
      TestUser{0, sup},
      [&] {
        rchan* c = open_written<0440>(m.dir, "grp", kRecords);
        if (!c) return errno ? errno : 99;
        return relay_flush(c) == 0 ? 0 : errno;  // a whole sub-buffer for the mmap reader
      },
      [] { return 0; });
  REQUIRE(producer.setup_errno() == 0);
  const std::string file = m.path("grp0"), control = control_name(m.dir);
  struct stat st;
  REQUIRE(::stat(file.c_str(), &st) == 0);
  REQUIRE(st.st_uid == 0);
  REQUIRE(st.st_gid == sup);
  REQUIRE((st.st_mode & 07777) == 0440);
  const uint64_t ino = st.st_ino;
  const std::string want = all_records(0, kRecords);

  // Without the group (the negative control): refused by the kernel and by the daemon alike.
  CHECK(as_user(bob.uid, bob.gid, [&] { return open_errno(file); }) == EACCES);
  CHECK(as_user(bob.uid, bob.gid, [&] { return reader_errno(file); }) == EACCES);
  CHECK(as_user(bob.uid, bob.gid, [&] { return raw_reader_open(control, ino); }) == EACCES);
  CHECK(as_user(bob.uid, bob.gid, {alice.gid}, [&] { return reader_errno(file); }) == EACCES);
  // With sup only as a supplementary group: the daemon's own check lets him map the buffer...
  const std::vector<gid_t> groups{sup};
  CHECK(as_user(bob.uid, bob.gid, groups, [&] { return raw_reader_open(control, ino); }) == 0);
  CHECK(as_user(bob.uid, bob.gid, groups, [&] {
          relay_reader* r = relay_reader_open(file.c_str());
          if (!r) return errno;
          relay_subbuf sb{};
          const int rc = relay_reader_next(r, &sb) == 1 &&
                                 std::string(static_cast<const char*>(sb.data), sb.length) == want
                             ? 0
                             : 99;
          relay_reader_close(r);
          return rc;
        }) == 0);
  // ...and the kernel lets him read(2) it.
  CHECK(as_user(bob.uid, bob.gid, groups, [&] {
          const int fd = ::open(file.c_str(), O_RDONLY);
          if (fd < 0) return errno;
          char buf[4096];
          const ssize_t n = ::read(fd, buf, sizeof buf);
          ::close(fd);
          return n == static_cast<ssize_t>(want.size()) && std::string(buf, want.size()) == want
                     ? 0
                     : 98;
        }) == 0);
  CHECK(producer.finish() == 0);
}

TEST_CASE("allow_other is off unless asked for: another user cannot even stat the mount") {
  NEED_USERS(alice, bob);
  // The mount options the kernel shows for dir (mountinfo's per-mount and super options).
  auto options = [](const std::string& dir) {
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    while (std::getline(in, line))
      if (line.find(" " + dir + " ") != std::string::npos) return line;
    return std::string();
  };
  {
    Mount m;
    CHECK(options(m.dir).find("allow_other") == std::string::npos);
    rchan_callbacks cb{};
    cb.create_buf_file = &global_mode<0444>;
    rchan* c = relay_open("pub", m.dir.c_str(), 4096, 4, &cb, nullptr);
    REQUIRE(c != nullptr);
    write_records(c, 0, 5);
    const std::string dir = m.dir, file = m.path("pub0"), control = control_name(m.dir);
    const uint64_t root_ino = ino_of(m.dir), file_ino = ino_of(file);
    const int got = as_user(alice.uid, alice.gid, [&] {
      struct stat st;
      if (::stat(dir.c_str(), &st) == 0 || errno != EACCES) return 100;
      if (::stat(file.c_str(), &st) == 0 || errno != EACCES) return 101;
      if (open_errno(file) != EACCES) return 102;
      char buf[128];
      if (::getxattr(dir.c_str(), "user.relayfs.control", buf, sizeof buf) >= 0 || errno != EACCES)
        return 103;
      if (relay_open("mine", dir.c_str(), 4096, 4, nullptr, nullptr) || errno != EACCES) return 104;
      if (reader_errno(file) != EACCES) return 105;
      // The socket's name can be learnt elsewhere (/proc/net/unix); the daemon refuses too.
      const int s = dial_control(control);
      if (s < 0) return 106;
      if (control_answer(s, proto::encode(proto::OpenRequest{root_ino, 4096, 4, 0, 0, "m"}, 1)) !=
          EACCES)
        return 107;
      if (control_answer(s, proto::encode(proto::ReaderOpenRequest{file_ino}, 2)) != EACCES)
        return 108;
      if (control_answer(s, proto::encode(proto::CloseRequest{1}, 3)) != EACCES) return 109;
      ::close(s);
      return 0;
    });
    CHECK(got == 0);
    CHECK(slurp(file) == all_records(0, 5));  // the mounter still reads it all
    CHECK(relay_close(c) == 0);
  }
  {
    Mount m({"-o", "allow_other"});
    CHECK(options(m.dir).find("allow_other") != std::string::npos);
    const std::string dir = m.dir;
    CHECK(as_user(alice.uid, alice.gid, [&] {
            struct stat st;
            return ::stat(dir.c_str(), &st) == 0 ? 0 : errno;
          }) == 0);
  }
}
