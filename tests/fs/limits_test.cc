// Limits: what a process or a user may hold, and what happens at the edge. A producer at its own
// descriptor limit gets EMFILE from relay_open, and the half-made channel goes away. On a mount
// shared with other users (allow_other), users other than root and the mounter ("alice" and
// "bob", made for the test: relayfs-test, relayfs-test2) get EDQUOT beyond their channel memory,
// channels and connections, beyond all such users' memory together, and beyond the daemon's
// descriptors less a reserve; the daemon, the others and root go on. The root directory's
// user.relayfs.users shows the usage and the limits. The user cases need root; they skip
// otherwise.
#include <doctest/doctest.h>
#include <relayfs/relay.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <fcntl.h>
#include <sys/xattr.h>

#include <dirent.h>
#include <algorithm>
#include <cerrno>
#include <fstream>
#include <thread>
#include <optional>
#include <string>
#include <vector>

#include "core/geometry.h"
#include "proto/protocol.h"
#include "proto/wire.h"
#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;
namespace proto = relayfs::proto;

namespace {

// What a channel of n_subbufs x subbuf_size bytes per buffer is charged with: every buffer's
// whole memfd, control area included.
uint64_t memory_of(uint32_t subbuf_size, uint32_t n_subbufs, unsigned buffers = 1) {
  return buffers * relayfs::core::Layout::of({subbuf_size, n_subbufs}).total_size;
}

// Opens a global channel (files mode 0440) in dir and writes record(0) into it; keeps it in
// *held. Returns 0 or relay_open's errno. No REQUIRE: for the users' processes.
int try_open(const std::string& dir, const char* base, uint32_t subbuf_size, uint32_t n_subbufs,
             std::vector<rchan*>* held) {
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0440>;
  errno = 0;
  rchan* c = relay_open(base, dir.c_str(), subbuf_size, n_subbufs, &cb, nullptr);
  if (!c) return errno ? errno : 99;
  held->push_back(c);
  const std::string r = record(0);
  return relay_write(c, r.data(), r.size()) == 0 ? 0 : 98;
}

// Opens a channel and closes it at once (empty, it goes): 0 or relay_open's errno.
int open_close(const std::string& dir, const char* base) {
  std::vector<rchan*> held;
  const int err = try_open(dir, base, 4096, 4, &held);
  for (rchan* c : held) relay_close(c);
  return err;
}

// Writes record(1) into each channel and closes it: 0, or 97 if one fails.
int write_and_close(const std::vector<rchan*>& held) {
  int err = 0;
  for (rchan* c : held) {
    const std::string r = record(1);
    if (relay_write(c, r.data(), r.size()) != 0 || relay_close(c) != 0) err = 97;
  }
  return err;
}

// Writes n more records into each channel and leaves them open: 0, or 97 if one fails.
int write_and_leave(const std::vector<rchan*>& held, int n) {
  for (rchan* c : held)
    for (int i = 1; i <= n; ++i) {
      const std::string r = record(i);
      if (relay_write(c, r.data(), r.size()) != 0) return 97;
    }
  return 0;
}

std::string uid_key(const TestUser& u) {
  return "uid=" + std::to_string(u.uid);
}

// The number of descriptors process pid has open.
long fds_of(pid_t pid) {
  long n = 0;
  if (DIR* d = ::opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
    while (const dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
  }
  return n;
}

// Daemons started while it lives run under RLIMIT_NOFILE n, soft and hard: RELAYFS_DAEMON
// points to a script that runs the daemon through prlimit(1) (the daemon keeps the pid).
struct LowNofile {
  explicit LowNofile(rlim_t n) : real(daemon_path()) {
    const std::string script = t.path("relayfs");
    std::ofstream out(script);
    out << "#!/bin/sh\nexec prlimit --nofile=" << n << ":" << n << " '" << real << "' \"$@\"\n";
    out.close();
    REQUIRE(::chmod(script.c_str(), 0755) == 0);
    ::setenv("RELAYFS_DAEMON", script.c_str(), 1);
  }
  ~LowNofile() { ::setenv("RELAYFS_DAEMON", real.c_str(), 1); }
  LowNofile(const LowNofile&) = delete;
  LowNofile& operator=(const LowNofile&) = delete;
  TempDir t;
  std::string real;
};

}  // namespace

TEST_CASE("relay_open at the producer's descriptor limit fails with EMFILE, and leaves nothing") {
  Mount m;
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // Room for the control socket and one descriptor more: a global channel needs two (its
    // buffer and its doorbell), so the reply's descriptors cannot all be taken.
    const int lowest = ::dup(0);
    ::close(lowest);
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = static_cast<rlim_t>(lowest) + 2;
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) ::_exit(100);
    rchan_callbacks cb{};
    cb.create_buf_file = &make_global<0400>;
    errno = 0;
    rchan* c = relay_open("fd", m.dir.c_str(), 4096, 4, &cb, nullptr);
    ::_exit(c ? 101 : errno == EMFILE ? 0 : errno);
  }
  int st = 0;
  REQUIRE(::waitpid(pid, &st, 0) == pid);
  REQUIRE(WIFEXITED(st));
  CHECK_MESSAGE(WEXITSTATUS(st) == 0, "relay_open failed with "
                                          << std::string(std::strerror(WEXITSTATUS(st)))
                                          << ", not EMFILE");
  // The daemon made the channel before the producer failed to take it: the connection's end
  // finalizes it, and, empty, it goes.
  CHECK(wait_for([&] { return !exists(m.path("fd0")); }));
  rchan* c = open_global(m.dir, "fd");
  const std::string want = write_records(c, 0, 2);
  CHECK(slurp(m.path("fd0")) == want);
  CHECK(relay_close(c) == 0);
}

TEST_CASE(
    "a user gets EDQUOT exactly at its memory and channel limits; the others and root go on") {
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other,user_memory=4M,user_channels=3"});
  const std::string ahome = home_of(m, alice), bhome = home_of(m, bob);
  const std::string control = control_name(m.dir);
  struct stat st;
  REQUIRE(::stat(ahome.c_str(), &st) == 0);
  const uint64_t ahome_ino = st.st_ino;
  // Two channels of 1.5 MiB and a page each; then one that fills the 4 MiB to the byte.
  const uint64_t big = memory_of(512 << 10, 3);
  const uint64_t rest = (uint64_t{4} << 20) - 2 * big;
  const auto fill = static_cast<uint32_t>(rest - memory_of(4096, 1) + 4096);
  REQUIRE(memory_of(fill, 1) == rest);

  // Each process returns 0, or the number of its first step that did not go as it should.
  std::vector<rchan*> held;
  Holder a(
      alice,
      [&] {
        if (try_open(ahome, "big-a", 512 << 10, 3, &held) != 0) return 1;
        if (try_open(ahome, "big-b", 512 << 10, 3, &held) != 0) return 2;
        // Over user_memory, with a channel to go before user_channels.
        if (try_open(ahome, "big-c", 512 << 10, 3, &held) != EDQUOT) return 3;
        // The daemon's own answer, to a raw request on a connection of its own.
        const int s = dial_control(control);
        const proto::OpenRequest req{ahome_ino, 512 << 10, 3, 0, proto::kFlagGlobal, "raw"};
        if (s < 0 || control_answer(s, proto::encode(req, 1)) != EDQUOT) return 4;
        ::close(s);
        // Exactly at user_memory is within it; then not a byte more.
        if (try_open(ahome, "fill", fill, 1, &held) != 0) return 5;
        if (try_open(ahome, "tiny", 1, 1, &held) != EDQUOT) return 6;
        return 0;
      },
      [&] { return write_and_close(held); });
  CHECK(a.setup_errno() == 0);
  Holder b(
      bob,
      [&] {
        if (try_open(bhome, "s1", 4096, 4, &held) != 0) return 1;
        if (try_open(bhome, "s2", 4096, 4, &held) != 0) return 2;
        if (try_open(bhome, "s3", 4096, 4, &held) != 0) return 3;
        // Over user_channels, with memory to spare.
        if (try_open(bhome, "s4", 4096, 4, &held) != EDQUOT) return 4;
        return 0;
      },
      [&] { return write_and_close(held); });
  CHECK(b.setup_errno() == 0);
  CHECK(alive(m.pid));
  CHECK(!exists(ahome + "/big-c0"));
  CHECK(!exists(ahome + "/tiny0"));
  CHECK(!exists(bhome + "/s40"));

  const Usage u = usage_of(m.dir);
  CHECK(usage_field(u, uid_key(alice), "channels") == 3);
  CHECK(usage_field(u, uid_key(alice), "connections") == 3);  // the refused ones are gone
  CHECK(usage_field(u, uid_key(alice), "memory") == 4 << 20);
  CHECK(usage_field(u, uid_key(bob), "channels") == 3);
  CHECK(usage_field(u, uid_key(bob), "memory") == static_cast<long long>(3 * memory_of(4096, 4)));
  CHECK(usage_field(u, "limited", "channels") == 6);
  CHECK(usage_field(u, "limited", "memory") ==
        static_cast<long long>((4 << 20) + 3 * memory_of(4096, 4)));
  CHECK(usage_field(u, "limits", "user_memory") == 4 << 20);
  CHECK(usage_field(u, "limits", "user_channels") == 3);

  // Root has no limits: a channel twice alice's whole allowance, and more than three.
  std::vector<rchan*> mine;
  for (const char* base : {"root-1", "root-2", "root-3", "root-4"})
    mine.push_back(open_global(m.dir, base, 1 << 20, 8));
  const std::string want = write_records(mine[0], 0, 50);
  CHECK(slurp(m.path("root-10")) == want);
  const Usage after = usage_of(m.dir);
  CHECK(usage_field(after, "uid=0", "channels") == 4);
  CHECK(after.at("uid=0").count("exempt") == 1);
  CHECK(usage_field(after, "limited", "channels") == 6);  // root is not among them
  for (rchan* c : mine) CHECK(relay_close(c) == 0);

  // The users' channels lost nothing, and their connections still work: each writes a second
  // record and closes.
  CHECK(a.finish() == 0);
  CHECK(b.finish() == 0);
  for (const std::string& f : {ahome + "/big-a0", ahome + "/big-b0", ahome + "/fill0",
                               bhome + "/s10", bhome + "/s20", bhome + "/s30"}) {
    CAPTURE(f);
    CHECK(slurp(f) == record(0) + record(1));
  }
  // Drained and closed, they are freed: nothing counts any more.
  CHECK(wait_for([&] { return usage_of(m.dir).count(uid_key(alice)) == 0; }));
  CHECK(wait_for([&] { return usage_of(m.dir).count(uid_key(bob)) == 0; }));
  CHECK(usage_field(usage_of(m.dir), "limited", "memory") == 0);
  CHECK(alive(m.pid));
}

TEST_CASE("the channels of a producer that exited count against its user until they are drained") {
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other,user_channels=2"});
  const std::string home = home_of(m, alice);
  // Opens two channels, writes a record into each and exits without closing them.
  CHECK(as_user(alice.uid, alice.gid, [&] {
          std::vector<rchan*> held;
          for (const char* base : {"left", "right"})
            if (int err = try_open(home, base, 4096, 4, &held)) return err;
          return 0;
        }) == 0);
  // Its connections went with it; its channels stay, finalized, with what it wrote.
  CHECK(wait_for([&] { return usage_field(usage_of(m.dir), uid_key(alice), "connections") == 0; }));
  const Usage u = usage_of(m.dir);
  CHECK(usage_field(u, uid_key(alice), "channels") == 2);
  CHECK(usage_field(u, uid_key(alice), "memory") == static_cast<long long>(2 * memory_of(4096, 4)));
  CHECK(as_user(alice.uid, alice.gid, [&] { return open_close(home, "more"); }) == EDQUOT);
  CHECK(alive(m.pid));
  // Drained, the files go, the channels are freed, and alice may open again.
  CHECK(slurp(home + "/left0") == record(0));
  CHECK(slurp(home + "/right0") == record(0));
  CHECK(wait_for([&] { return usage_of(m.dir).count(uid_key(alice)) == 0; }));
  CHECK(as_user(alice.uid, alice.gid, [&] { return open_close(home, "more"); }) == 0);
}

TEST_CASE("orphan_timeout frees an exited producer's undrained channel, counted as lost bytes") {
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other,orphan_timeout=1"});
  const std::string home = home_of(m, alice);
  // A reader that has the file open all along sees the end: the counters stay readable on it.
  int reader = -1;
  CHECK(as_user(alice.uid, alice.gid, [&] {
          std::vector<rchan*> held;
          if (int err = try_open(home, "left", 4096, 4, &held)) return err;
          return write_and_leave(held, 200);  // then exits without closing
        }) == 0);
  reader = ::open((home + "/left0").c_str(), O_RDONLY);
  REQUIRE(reader >= 0);
  char part[kRec];
  REQUIRE(::read(reader, part, sizeof part) == static_cast<ssize_t>(kRec));  // one record read
  CHECK(usage_field(usage_of(m.dir), uid_key(alice), "channels") == 1);
  // Within the timeout (a tick of at most a second after it), it is freed: the rest counted
  // lost, the reader at its end, the file gone, alice's usage released.
  CHECK(wait_for([&] { return !exists(home + "/left0"); }, std::chrono::seconds(10)));
  char buf[4096];
  CHECK(::read(reader, buf, sizeof buf) == 0);
  CHECK(fnum(reader, "lost_expired_bytes") == 200 * kRec);  // record(0) + 200, one read
  CHECK(fnum(reader, "bytes_consumed") == kRec);
  CHECK(fnum(reader, "bytes_unread") == 0);
  CHECK(fnum(reader, "bytes_produced") == 201 * kRec);
  ::close(reader);
  CHECK(wait_for([&] { return usage_of(m.dir).count(uid_key(alice)) == 0; }));
  CHECK(alive(m.pid));
  // A channel a reader is still draining stays, past the timeout, until the reading stops.
  rchan* slow = open_global(m.dir, "slow");
  const std::string data = write_records(slow, 0, 20);
  const int drain = ::open(m.path("slow0").c_str(), O_RDONLY);
  REQUIRE(drain >= 0);
  REQUIRE(relay_close(slow) == 0);  // finalized: the clock runs
  std::string got;
  for (int i = 0; i < 10; ++i) {  // a record every 300 ms: 3 s, three timeouts
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    char rec[kRec];
    REQUIRE(::read(drain, rec, sizeof rec) == static_cast<ssize_t>(kRec));
    got.append(rec, kRec);
  }
  CHECK(fnum(drain, "lost_expired_bytes") == 0);
  CHECK(got == data.substr(0, got.size()));
  CHECK(wait_for([&] { return fnum(drain, "lost_expired_bytes") == data.size() - got.size(); },
                 std::chrono::seconds(10)));  // then it goes
  ::close(drain);
  // A channel whose producer still lives is never freed, however long nobody reads it.
  rchan* live = open_global(m.dir, "live");
  const std::string kept = write_records(live, 0, 10);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  CHECK(slurp(m.path("live0")) == kept);
  CHECK(relay_close(live) == 0);
}

TEST_CASE("users_memory bounds all users together; root is not counted") {
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other,user_memory=3M,users_memory=4M"});
  const std::string ahome = home_of(m, alice), bhome = home_of(m, bob);
  const uint64_t two = memory_of(512 << 10, 4), one = memory_of(256 << 10, 4);
  std::vector<rchan*> held;
  Holder a(
      alice, [&] { return try_open(ahome, "two", 512 << 10, 4, &held) ? 1 : 0; },
      [&] { return write_and_close(held); });
  REQUIRE(a.setup_errno() == 0);
  // Root's channels, however large, leave the others' allowance as it was.
  rchan* mine = open_global(m.dir, "root", 1 << 20, 16);
  Holder b(
      bob,
      [&] {
        if (try_open(bhome, "one", 256 << 10, 4, &held) != 0) return 1;
        // Bob alone would hold 2 MiB and two pages, within his 3M; all together, over 4M.
        if (try_open(bhome, "another", 256 << 10, 4, &held) != EDQUOT) return 2;
        return 0;
      },
      // Run once alice's channel is gone: now it fits.
      [&] {
        return try_open(bhome, "another", 256 << 10, 4, &held) != 0 ? 3 : write_and_close(held);
      });
  CHECK(b.setup_errno() == 0);
  const Usage u = usage_of(m.dir);
  CHECK(usage_field(u, "limited", "memory") == static_cast<long long>(two + one));
  CHECK(usage_field(u, "uid=0", "memory") == static_cast<long long>(memory_of(1 << 20, 16)));
  CHECK(usage_field(u, "limits", "users_memory") == 4 << 20);
  CHECK(alive(m.pid));

  CHECK(a.finish() == 0);
  CHECK(slurp(ahome + "/two0") == record(0) + record(1));
  CHECK(wait_for([&] { return usage_of(m.dir).count(uid_key(alice)) == 0; }));
  CHECK(b.finish() == 0);
  CHECK(slurp(bhome + "/another0") == record(0) + record(1));
  CHECK(relay_close(mine) == 0);
}

TEST_CASE("connections over user_connections are refused with EDQUOT, the daemon lives on") {
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other,user_connections=2"});
  const std::string ahome = home_of(m, alice), bhome = home_of(m, bob);
  const std::string control = control_name(m.dir);
  std::vector<rchan*> held;
  Holder a(
      alice,
      [&] {
        // Each channel keeps its producer's connection: two, the limit.
        if (try_open(ahome, "c1", 4096, 4, &held) != 0) return 1;
        if (try_open(ahome, "c2", 4096, 4, &held) != 0) return 2;
        if (try_open(ahome, "c3", 4096, 4, &held) != EDQUOT) return 3;
        // An mmap reader and outside control need a connection too.
        errno = 0;
        if (relay_reader_open((ahome + "/c10").c_str()) || errno != EDQUOT) return 4;
        errno = 0;
        if (relay_control((ahome + "/c10").c_str(), RELAY_CTL_FLUSH) == 0 || errno != EDQUOT)
          return 5;
        // Raw: one kError with seq 0 and -EDQUOT, unasked, then the end of the connection.
        const int s = dial_control(control);
        if (s < 0) return 6;
        timeval tv{10, 0};
        ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        proto::Received r;
        proto::Status status;
        if (proto::recv_message(s, &r) != 1 ||
            static_cast<proto::Type>(r.header.type) != proto::Type::kError || r.header.seq != 0 ||
            proto::decode(r.payload.data(), r.payload.size(), &status) != 0 ||
            status.status != -EDQUOT)
          return 7;
        if (proto::recv_message(s, &r) != 0) return 8;
        ::close(s);
        return 0;
      },
      [&] { return write_and_close(held); });
  CHECK(a.setup_errno() == 0);
  CHECK(alive(m.pid));
  CHECK(usage_field(usage_of(m.dir), uid_key(alice), "connections") == 2);
  CHECK(as_user(bob.uid, bob.gid, [&] { return open_close(bhome, "b"); }) == 0);
  rchan* mine = open_global(m.dir, "root");
  CHECK(relay_close(mine) == 0);
  CHECK(a.finish() == 0);  // her connections worked on
  CHECK(slurp(ahome + "/c10") == record(0) + record(1));
  CHECK(wait_for([&] { return usage_field(usage_of(m.dir), uid_key(alice), "connections") <= 0; }));
  CHECK(as_user(alice.uid, alice.gid, [&] { return open_close(ahome, "again"); }) == 0);
}

TEST_CASE("a flood of channels stops at the descriptors kept for root and the mounter") {
  NEED_USERS(alice, bob);
  // The daemon starts with 512 descriptors at most, soft and hard: its reserve is 256.
  std::optional<Mount> mount;
  {
    LowNofile low(512);
    mount.emplace(std::vector<std::string>{"-o", "allow_other"});
  }
  Mount& m = *mount;
  const Usage u = usage_of(m.dir);
  REQUIRE(usage_field(u, "descriptors", "limit") == 512);
  REQUIRE(usage_field(u, "descriptors", "reserve") == 256);
  const std::string ahome = home_of(m, alice), bhome = home_of(m, bob);
  std::vector<rchan*> held;
  // Small channels until refused (three of the daemon's descriptors each: buffer, doorbell,
  // connection), far below alice's own limits of 256 channels and connections.
  Holder a(
      alice,
      [&] {
        for (int i = 0; i < 300; ++i)
          if (int err = try_open(ahome, ("f" + std::to_string(i) + "x").c_str(), 4096, 1, &held))
            return err == EDQUOT ? 0 : err;
        return 1;
      },
      [&] { return write_and_close(held); });
  CHECK(a.setup_errno() == 0);
  const long long flood = usage_field(usage_of(m.dir), uid_key(alice), "channels");
  CAPTURE(flood);
  CHECK(flood >= 60);  // stopped near the reserve...
  CHECK(flood < 256);  // ...not by user_channels
  const long open = fds_of(m.pid);
  CHECK(open <= 512 - 256);
  CHECK(open >= 512 - 256 - 8);
  CHECK(as_user(bob.uid, bob.gid, [&] { return open_close(bhome, "b"); }) == EDQUOT);
  // Root gets channels, global and per-CPU, out of the reserve.
  std::vector<rchan*> mine;
  for (int i = 0; i < 20; ++i)
    mine.push_back(open_global(m.dir, ("r" + std::to_string(i) + "x").c_str()));
  rchan* percpu = relay_open("percpu", m.dir.c_str(), 4096, 4, nullptr, nullptr);
  CHECK(percpu != nullptr);
  const std::string want = write_records(mine[0], 0, 10);
  CHECK(slurp(m.path("r0x0")) == want);
  for (rchan* c : mine) CHECK(relay_close(c) == 0);
  if (percpu) CHECK(relay_close(percpu) == 0);
  CHECK(alive(m.pid));
  // Once alice's channels are closed and drained, the others get in again.
  CHECK(a.finish() == 0);
  for (int i = 0; i < flood; ++i) slurp(ahome + "/f" + std::to_string(i) + "x0");
  CHECK(wait_for(
      [&] { return as_user(bob.uid, bob.gid, [&] { return open_close(bhome, "b"); }) == 0; }));
}

TEST_CASE("without options the limits are the documented defaults, on the root directory only") {
  Mount m;
  struct sysinfo si {};
  REQUIRE(::sysinfo(&si) == 0);
  const uint64_t ram = uint64_t{si.totalram} * si.mem_unit;
  rlimit rl{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) ==
          0);  // the daemon raises its soft limit to this hard one
  const long long fd_limit = static_cast<long long>(rl.rlim_max);
  const Usage u = usage_of(m.dir);
  CHECK(usage_field(u, "limits", "user_memory") == static_cast<long long>(ram / 8));
  CHECK(usage_field(u, "limits", "users_memory") == static_cast<long long>(ram / 4));
  CHECK(usage_field(u, "limits", "user_channels") == 256);
  CHECK(usage_field(u, "limits", "user_connections") == 256);
  CHECK(usage_field(u, "descriptors", "limit") == fd_limit);
  CHECK(usage_field(u, "descriptors", "reserve") ==
        std::max({256LL, 4LL * (ncpus() + 2), fd_limit / 8}));
  CHECK(usage_field(u, "descriptors", "open") > 0);
  CHECK(usage_field(u, "limited", "channels") == 0);
  CHECK(usage_field(u, "limited", "memory") == 0);
  // Root's channel is listed, exempt.
  rchan* c = open_global(m.dir, "x", 4096, 8);
  const Usage with = usage_of(m.dir);
  CHECK(usage_field(with, "uid=0", "channels") == 1);
  CHECK(usage_field(with, "uid=0", "connections") == 1);
  CHECK(usage_field(with, "uid=0", "memory") == static_cast<long long>(memory_of(4096, 8)));
  CHECK(with.at("uid=0").count("exempt") == 1);
  CHECK(usage_field(with, "limited", "channels") == 0);
  CHECK(relay_close(c) == 0);
  // Listed on the root directory, and there only.
  char names[1024];
  const ssize_t n = ::listxattr(m.dir.c_str(), names, sizeof names);
  REQUIRE(n > 0);
  const std::string list(names, static_cast<size_t>(n));
  CHECK(list.find(std::string("user.relayfs.users") + '\0') != std::string::npos);
  REQUIRE(::mkdir(m.path("sub").c_str(), 0755) == 0);
  const ssize_t k = ::listxattr(m.path("sub").c_str(), names, sizeof names);
  REQUIRE(k > 0);
  CHECK(std::string(names, static_cast<size_t>(k)).find("user.relayfs.users") == std::string::npos);
  errno = 0;
  CHECK(::getxattr(m.path("sub").c_str(), "user.relayfs.users", names, sizeof names) == -1);
  CHECK(errno == ENODATA);
}

TEST_CASE("limit options: 0 allows nothing, 'unlimited' no limit, a bad value is a usage error") {
  TempDir t;
  for (const char* bad :
       {"user_memory=4X", "user_memory=-1", "user_memory=", "user_memory",
        "users_memory=99999999999T", "user_channels=1K", "user_connections=x", "user_channels=2.5",
        "orphan_timeout=x", "orphan_timeout=unlimited", "orphan_timeout=1K", "readahead=32M",
        "readahead=unlimited", "readahead=", "recheck_ms=x", "recheck_ms=60001",
        "recheck_ms=unlimited", "recheck_ms"}) {
    CAPTURE(bad);
    // Under timeout: a value taken by mistake would mount, in the foreground.
    const std::string daemon = "timeout -s KILL 10 " + daemon_path() + " none '" + t.dir + "' -f";
    const std::string err = capture(daemon + " -o allow_other," + bad + " 2>&1");
    CHECK(err.find(std::string("-o allow_other,") + bad + ": ") == std::string::npos);
    CHECK(err.find(std::string("-o ") + bad + ": ") != std::string::npos);
    CHECK(run(daemon + " -o " + bad + " 2>/dev/null") == 2);
    CHECK(!is_mounted(t.dir));
  }
  NEED_USERS(alice, bob);
  Mount m({"-o", "allow_other,user_channels=0,user_memory=unlimited,users_memory=1g",
           "-ouser_connections=7"});
  const Usage u = usage_of(m.dir);
  CHECK(usage_field(u, "limits", "user_channels") == 0);
  CHECK(u.at("limits").at("user_memory") == "unlimited");
  CHECK(usage_field(u, "limits", "users_memory") == 1 << 30);
  CHECK(usage_field(u, "limits", "user_connections") == 7);
  const std::string home = home_of(m, alice);
  CHECK(as_user(alice.uid, alice.gid, [&] { return open_close(home, "none"); }) == EDQUOT);
  rchan* c = open_global(m.dir, "root");
  CHECK(relay_close(c) == 0);
}
