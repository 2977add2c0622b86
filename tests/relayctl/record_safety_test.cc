// relayctl record, run as root, writes bytes a producer chose into files: it must never write
// where another user pointed it (issue 13). With a real second user (relayfs-test, made for the
// test; skipped without root): an OUTDIR another user made, with log0 or log.index planted as a
// symbolic link (the reproduction); OUTDIRs writable by others or by a group; names
// planted in a sticky OUTDIR; symbolic links on the way; the recordings' owner and mode; and
// refused recordings, which leave nothing behind and say why.
#include <dirent.h>

#include <algorithm>

#include "relayctl/tool.h"

using namespace relayfs::test;
using namespace std::chrono_literals;

namespace {

struct User {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = 0;
  std::string name = "relayfs-test";
  RunAs as() const { return {uid, gid, {}}; }
};

#define NEED_USER(u)                                 \
  User u;                                            \
  u.uid = test_user(&u.gid, u.name);                 \
  if (u.uid == static_cast<uid_t>(-1)) {             \
    MESSAGE("skipped: needs root to create a user"); \
    return;                                          \
  }

// A directory like /tmp: root's, sticky, writable by everyone.
struct StickyDir : TempDir {
  StickyDir() { REQUIRE(::chmod(dir.c_str(), 01777) == 0); }
};

// The umask for one test, whatever the test runner's.
struct Umask {
  explicit Umask(mode_t m) : old(::umask(m)) {}
  ~Umask() { ::umask(old); }
  mode_t old;
};

// The names in dir, sorted, each followed by a space ("" if it is empty or missing).
std::string listing(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d))
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
        names.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  std::string out;
  for (const auto& n : names) out += n + " ";
  return out;
}

struct stat lstat_of(const std::string& path) {
  struct stat st {};
  REQUIRE_MESSAGE(::lstat(path.c_str(), &st) == 0, path << ": " << std::strerror(errno));
  return st;
}

mode_t mode_of(const std::string& path) {
  return lstat_of(path).st_mode & 07777;
}

// Runs f as u (helpers.h as_user) and requires that it returned 0.
template <typename F>
void as(const User& u, F f) {
  REQUIRE(as_user(u.uid, u.gid, [&] { return f() ? 0 : (errno ? errno : 1); }) == 0);
}

// A closed global channel `base` at m's root holding 100 records, files of mode Mode (root's):
// a recording drains it and ends. Returns what it holds.
template <mode_t Mode = 0440>
std::string closed_channel(const Mount& m, const char* base) {
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<Mode>;
  rchan* c = open_global(m.dir, base, 4096, 4, cb);
  const std::string data = write_records(c, 0, 100);
  REQUIRE(relay_close(c) == 0);  // still readable until drained
  return data;
}

const std::string kVictim = "precious\n";

}  // namespace

TEST_CASE("record refuses an OUTDIR another user made, whatever it planted there (issue 13)") {
  NEED_USER(u);
  Mount m;
  StickyDir shared;  // like /var/tmp
  TempDir root;      // root's own: where the victims are
  write_file(root.path("important"), kVictim);
  const std::string data = closed_channel(m, "log");
  const std::string outdir = shared.path("log-recording");
  std::string planted;
  SUBCASE("log0, a symbolic link to a file of root's") {
    as(u, [&] {
      return ::mkdir(outdir.c_str(), 0755) == 0 &&
             ::symlink(root.path("important").c_str(), (outdir + "/log0").c_str()) == 0;
    });
    planted = "log0 ";
  }
  SUBCASE("log.index, a symbolic link to where root would create a file") {
    as(u, [&] {
      return ::mkdir(outdir.c_str(), 0755) == 0 &&
             ::symlink(root.path("created").c_str(), (outdir + "/log.index").c_str()) == 0;
    });
    planted = "log.index ";
  }
  SUBCASE("nothing yet: the user may plant something once root's files are there") {
    as(u, [&] { return ::mkdir(outdir.c_str(), 0777) == 0; });
  }
  const Outcome o = relayctl("record " + m.path("log") + " " + outdir);
  CHECK(o.status == 1);
  CHECK(o.err.find("relayctl: " + outdir + ": owned by " + u.name + " (uid ") != std::string::npos);
  CHECK(o.err.find("another user controls it") != std::string::npos);
  CHECK(read_file(root.path("important")) == kVictim);
  CHECK(!exists(root.path("created")));
  CHECK(listing(outdir) == planted);     // nothing of root's left behind
  CHECK(slurp(m.path("log0")) == data);  // nothing consumed
}

TEST_CASE("record refuses a directory on the way that another user owns: x -> a dir of root's") {
  NEED_USER(u);
  Mount m;
  StickyDir shared;
  TempDir root;
  const std::string data = closed_channel(m, "log");
  const std::string home = shared.path("home");
  as(u, [&] {
    return ::mkdir(home.c_str(), 0755) == 0 &&
           ::symlink(root.dir.c_str(), (home + "/x").c_str()) == 0;
  });
  const Outcome o = relayctl("record " + m.path("log") + " " + home + "/x/cron.d");
  CHECK(o.status == 1);
  CHECK(o.err.find("relayctl: " + home + ": owned by " + u.name) != std::string::npos);
  CHECK(!exists(root.path("cron.d")));
  CHECK(slurp(m.path("log0")) == data);
}

TEST_CASE("record refuses an OUTDIR writable by others or by a group unless it is sticky") {
  Mount m;
  TempDir t;
  const std::string data = closed_channel(m, "log");
  struct Case {
    mode_t mode;
    std::string reason;
  };
  for (const Case& c : {Case{0777, "writable by every user, and not sticky"},
                        Case{0757, "writable by every user, and not sticky"},
                        Case{0775, "writable by group root (gid 0), and not sticky"},
                        Case{0770, "writable by group root (gid 0), and not sticky"}}) {
    const std::string dir = t.path("d" + std::to_string(c.mode));
    CAPTURE(dir);
    REQUIRE(::mkdir(dir.c_str(), 0700) == 0);
    REQUIRE(::chmod(dir.c_str(), c.mode) == 0);
    for (const std::string& outdir : {dir, dir + "/rec"}) {  // OUTDIR, or above it
      const Outcome o = relayctl("record " + m.path("log") + " " + outdir);
      CHECK(o.status == 1);
      CHECK(o.err ==
            "relayctl: " + dir + ": " + c.reason +
                ": another user controls it; choose another OUTDIR (relayctl(1), record)\n");
      CHECK(listing(dir).empty());
    }
  }
  // Sticky: only a file's owner may rename or remove it there, as in /tmp.
  const std::string sticky = t.path("sticky");
  REQUIRE(::mkdir(sticky.c_str(), 0700) == 0);
  REQUIRE(::chmod(sticky.c_str(), 01777) == 0);
  const Outcome o = relayctl("record -q " + m.path("log") + " " + sticky);
  CHECK(o.status == 0);
  CHECK(o.err.empty());
  CHECK(read_file(sticky + "/log0") == data);
}

TEST_CASE("in a sticky OUTDIR, a name another user planted is refused and left alone") {
  NEED_USER(u);
  Mount m;
  StickyDir shared;  // the OUTDIR: root's, sticky, world-writable
  TempDir root;
  write_file(root.path("important"), kVictim);
  const std::string data = closed_channel(m, "log");
  std::string name;
  SUBCASE("log0, a symbolic link to a file of root's") {
    name = "log0";
    as(u,
       [&] { return ::symlink(root.path("important").c_str(), shared.path(name).c_str()) == 0; });
  }
  SUBCASE("log.index, a file of its own: log0, made before, is removed again") {
    name = "log.index";
    as(u, [&] {
      const int fd = ::open(shared.path(name).c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
      return fd >= 0 && ::write(fd, "theirs\n", 7) == 7 && ::close(fd) == 0;
    });
  }
  const Outcome o = relayctl("record " + m.path("log") + " " + shared.dir);
  CHECK(o.status == 1);
  CHECK(o.err == "relayctl: " + shared.path(name) + ": " + std::strerror(EEXIST) +
                     "; relayctl record never overwrites: remove it or choose another OUTDIR\n");
  CHECK(read_file(root.path("important")) == kVictim);
  CHECK(lstat_of(shared.path(name)).st_uid == u.uid);
  if (name == "log.index") CHECK(read_file(shared.path(name)) == "theirs\n");
  CHECK(listing(shared.dir) == name + " ");
  CHECK(slurp(m.path("log0")) == data);
}

TEST_CASE("a symbolic link on the way to OUTDIR is followed only if root or the caller owns it") {
  NEED_USER(u);
  Mount m;
  StickyDir shared;
  TempDir target;  // root's
  const std::string data = closed_channel(m, "log");
  SUBCASE("another user's: refused") {
    as(u, [&] { return ::symlink(target.dir.c_str(), shared.path("link").c_str()) == 0; });
    const Outcome o = relayctl("record " + m.path("log") + " " + shared.path("link/rec"));
    CHECK(o.status == 1);
    CHECK(o.err.find("relayctl: " + shared.path("link") + ": a symbolic link owned by " + u.name +
                     " (uid ") != std::string::npos);
    CHECK(o.err.find("another user controls it") != std::string::npos);
    CHECK(!exists(target.path("rec")));
    CHECK(slurp(m.path("log0")) == data);
  }
  SUBCASE("root's, absolute: followed") {
    REQUIRE(::symlink(target.dir.c_str(), shared.path("link").c_str()) == 0);
    const Outcome o = relayctl("record -q " + m.path("log") + " " + shared.path("link/rec"));
    CHECK(o.status == 0);
    CHECK(o.err.empty());
    CHECK(read_file(target.path("rec/log0")) == data);
  }
  SUBCASE("root's, relative, in a relative OUTDIR with ..: resolved as the kernel does") {
    REQUIRE(::mkdir(target.path("a").c_str(), 0755) == 0);
    REQUIRE(::mkdir(target.path("a/b").c_str(), 0755) == 0);
    REQUIRE(::symlink("a/b", target.path("sub").c_str()) == 0);
    const Outcome o =
        relayctl("record -q " + m.path("log") + " ./sub/../rec/", {.cwd = target.dir});
    CHECK(o.status == 0);
    CHECK(o.err.empty());
    CHECK(read_file(target.path("a/rec/log0")) == data);
  }
  SUBCASE("a loop: too many levels") {
    REQUIRE(::symlink("loop", target.path("loop").c_str()) == 0);
    const Outcome o = relayctl("record " + m.path("log") + " " + target.path("loop/rec"));
    CHECK(o.status == 1);
    CHECK(o.err.find(std::strerror(ELOOP)) != std::string::npos);
    CHECK(slurp(m.path("log0")) == data);
  }
}

TEST_CASE("recordings get the relay file's mode less the umask, and the caller as owner") {
  NEED_USER(u);
  Umask mask(022);
  Mount m({"-o", "allow_other"});
  TempDir t;
  SUBCASE("a 0400 channel, as root") {
    const std::string data = closed_channel<0400>(m, "ro");
    const Outcome o = relayctl("record -q " + m.path("ro") + " " + t.path("rec"));
    REQUIRE(o.status == 0);
    CHECK(read_file(t.path("rec/ro0")) == data);
    CHECK(mode_of(t.path("rec/ro0")) == 0400);
    CHECK(mode_of(t.path("rec/ro.index")) == 0400);
    CHECK(lstat_of(t.path("rec/ro0")).st_uid == 0);
    CHECK(mode_of(t.path("rec")) == 0755);  // made by relayctl: 0755 less the umask
  }
  SUBCASE("a 0440 channel, as root") {
    closed_channel<0440>(m, "rg");
    REQUIRE(relayctl("record -q " + m.path("rg") + " " + t.path("rec")).status == 0);
    CHECK(mode_of(t.path("rec/rg0")) == 0440);
    CHECK(mode_of(t.path("rec/rg.index")) == 0440);
  }
  SUBCASE("a 0666 channel, with umask 027") {
    closed_channel<0666>(m, "rw");
    Umask mask027(027);
    REQUIRE(relayctl("record -q " + m.path("rw") + " " + t.path("rec")).status == 0);
    CHECK(mode_of(t.path("rec/rw0")) == 0640);
    CHECK(mode_of(t.path("rec/rw.index")) == 0640);
    CHECK(mode_of(t.path("rec")) == 0750);
  }
  SUBCASE("a 0444 channel, as the other user: its files") {
    StickyDir shared;
    const std::string data = closed_channel<0444>(m, "pub");
    const std::string mine = shared.path("mine");
    as(u, [&] { return ::mkdir(mine.c_str(), 0755) == 0; });
    const Outcome o = relayctl("record -q " + m.path("pub") + " " + mine + "/rec", u.as());
    CHECK(o.err.empty());
    REQUIRE(o.status == 0);
    CHECK(read_file(mine + "/rec/pub0") == data);
    for (const char* f : {"/rec", "/rec/pub0", "/rec/pub.index"}) {
      CAPTURE(f);
      CHECK(lstat_of(mine + f).st_uid == u.uid);
      CHECK(lstat_of(mine + f).st_gid == u.gid);
    }
    CHECK(mode_of(mine + "/rec/pub0") == 0444);
    CHECK(mode_of(mine + "/rec/pub.index") == 0444);
  }
}

TEST_CASE("a recording the daemon refuses leaves nothing behind and says why") {
  NEED_USER(u);
  Mount m({"-o", "allow_other"});
  StickyDir shared;
  const std::string data = closed_channel<0440>(m, "log");  // root's: the user may not read it
  const std::string mine = shared.path("mine");
  as(u, [&] { return ::mkdir(mine.c_str(), 0755) == 0; });
  SUBCASE("by channel, into a new OUTDIR: Permission denied, not Invalid argument") {
    const Outcome o = relayctl("record " + m.path("log") + " " + mine + "/rec", u.as());
    CHECK(o.status == 1);
    CHECK(o.err == "relayctl: " + m.path("log") + ": " + std::strerror(EACCES) + "\n");
    CHECK(listing(mine).empty());
  }
  SUBCASE("by buffer file, into a new OUTDIR") {
    const Outcome o = relayctl("record " + m.path("log0") + " " + mine + "/rec", u.as());
    CHECK(o.status == 1);
    CHECK(o.err.find("relayctl: " + m.path("log0") + ": ") == 0);
    CHECK(o.err.find(std::strerror(EACCES)) != std::string::npos);
    CHECK(listing(mine).empty());
  }
  SUBCASE("by buffer file, into its own OUTDIR: kept, and empty") {
    const Outcome o = relayctl("record " + m.path("log0") + " " + mine, u.as());
    CHECK(o.status == 1);
    CHECK(o.err.find(std::strerror(EACCES)) != std::string::npos);
    CHECK(exists(mine));
    CHECK(listing(mine).empty());
  }
  SUBCASE("stat says the same, by channel and by file") {
    Outcome o = relayctl("stat " + m.path("log"), u.as());
    CHECK(o.status == 1);
    CHECK(o.err == "relayctl: " + m.path("log") + ": " + std::strerror(EACCES) + "\n");
    o = relayctl("stat " + m.path("log0"), u.as());
    CHECK(o.status == 1);
    CHECK(o.err == "relayctl: " + m.path("log0") + ": " + std::strerror(EACCES) + "\n");
  }
  CHECK(slurp(m.path("log0")) == data);  // nothing consumed
}

TEST_CASE("a buffer already being recorded (EBUSY) leaves nothing of the second recording") {
  Mount m;
  TempDir t;
  const relay_options opts{RELAY_BLOCKING, 10000, nullptr};
  rchan* c = open_global(m.dir, "busy", 4096, 4, {}, &opts);
  const pid_t first = spawn_relayctl({"record", m.path("busy"), t.path("first")}, t.path("err"));
  // The first recording runs once a flushed sub-buffer reached its file.
  write_records(c, 0, 10);
  REQUIRE(relay_flush(c) == 0);
  REQUIRE(wait_for([&] { return read_file(t.path("first/busy0")).size() == 110; }, 20s));
  const Outcome o = relayctl("record " + m.path("busy") + " " + t.path("second"));
  CHECK(o.status == 1);
  CHECK(o.err.find("relayctl: " + m.path("busy0") + ": cannot record: " + std::strerror(EBUSY)) !=
        std::string::npos);
  CHECK(!exists(t.path("second")));
  ::kill(first, SIGINT);
  CHECK(wait_exit(first) == 0);
  REQUIRE(relay_close(c) == 0);
}

TEST_CASE("an output file from an earlier recording is refused and left intact") {
  Mount m;
  TempDir t;
  const std::string first = closed_channel(m, "log");
  REQUIRE(relayctl("record -q " + m.path("log") + " " + t.path("rec")).status == 0);
  REQUIRE(read_file(t.path("rec/log0")) == first);
  const std::string index = read_file(t.path("rec/log.index"));
  // Drained and closed: its files go, and the name is free for another channel.
  REQUIRE(wait_for([&] { return !exists(m.path("log0")); }));
  rchan* c = open_global(m.dir, "log");
  const std::string second = write_records(c, 500, 550);  // other totals in an index
  REQUIRE(relay_close(c) == 0);
  std::string refused = "log0";
  SUBCASE("both there: log0 refused") {}
  SUBCASE("only the index there: log0 is made, then removed again") {
    REQUIRE(::unlink(t.path("rec/log0").c_str()) == 0);
    REQUIRE(::unlink(t.path("rec/log0.state").c_str()) == 0);
    refused = "log.index";
  }
  const Outcome o = relayctl("record " + m.path("log") + " " + t.path("rec"));
  CHECK(o.status == 1);
  CHECK(o.err == "relayctl: " + t.path("rec/" + refused) + ": " + std::strerror(EEXIST) +
                     "; relayctl record never overwrites: remove it or choose another OUTDIR\n");
  CHECK(read_file(t.path("rec/log.index")) == index);
  if (refused == "log0") {
    CHECK(read_file(t.path("rec/log0")) == first);
    CHECK(listing(t.path("rec")) == "log.index log0 log0.state ");
  } else {
    CHECK(listing(t.path("rec")) == "log.index ");
  }
  CHECK(slurp(m.path("log0")) == second);  // nothing consumed
}
