// mmap readers (relay_reader_*) through a real mount: sub-buffers handed out oldest first and
// consumed, poll, buf_mapped and buf_unmapped, a read-only mapping, the permission checks of the
// kernel and of the daemon, one position shared with read(2) readers, relay_reset, lapped
// sub-buffers in overwrite mode, a sub-buffer closed with a record still reserved, and a hostile
// producer's padding. Every test mounts its own tree and takes it down, even when it
// fails. No assertion depends on how fast anything runs: sleeps only give a thread the chance to
// block, and every wait has a deadline after which the test fails.
#include <dirent.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <relayfs/relay.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "../child.h"
#include "core/bell.h"
#include "core/geometry.h"
#include "core/layout.h"
#include "helpers.h"
#include "mount.h"
#include "proto/protocol.h"
#include "proto/wire.h"

using namespace relayfs::test;
namespace core = relayfs::core;
namespace proto = relayfs::proto;

namespace {

using namespace std::chrono_literals;

// A connection to the daemon of the mount at dir whose replies time out after 5 s: a reply that
// never comes fails the test instead of hanging it. -1 if it cannot connect.
int dial_control_timed(const std::string& dir) {
  const int s = dial_control(control_name(dir));
  const timeval tv{5, 0};
  if (s >= 0 && ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) {
    ::close(s);
    return -1;
  }
  return s;
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

// ---- Another user -------------------------------------------------------------------------------

constexpr uid_t kNobody = 65534;

// Runs f in a child process as uid/gid nobody; returns what f returned (an errno, 0 for success).
template <typename F>
int as_nobody(F f) {
  return as_user(kNobody, kNobody, f);
}

// A raw relay_reader_open request to the daemon, bypassing open(2): returns the daemon's answer
// as an errno (0: it handed out the buffer), or 200+ when the exchange itself failed.
int raw_reader_open(const std::string& control, uint64_t ino) {
  const int s = dial_control(control);
  if (s < 0) return 202;
  if (proto::send_message(s, proto::encode(proto::ReaderOpenRequest{ino}, 1)) != 0) return 203;
  proto::Received r;
  if (proto::recv_message(s, &r, 1) != 1) return 204;
  proto::ReaderOpenReply reply;
  if (proto::decode(r.payload.data(), r.payload.size(), &reply) != 0) return 205;
  ::close(s);
  return -reply.status;
}

// ---- A hostile producer -------------------------------------------------------------------------

// The control area of a buffer this process produces into, mapped writable as the producer
// library maps it: found among our own descriptors as the memfd the daemon named after the file
// ("/memfd:NAME (deleted)"), opened read-write. A test writes what a buggy or hostile producer
// could write there.
struct ProducerShm {
  ProducerShm(const std::string& name, size_t subbuf_size, size_t n_subbufs) {
    core::Geometry g;
    REQUIRE(core::make_geometry(subbuf_size, n_subbufs, &g) == 0);
    layout = core::Layout::of(g);
    const std::string want = "/memfd:" + name + " (deleted)";
    int fd = -1;
    DIR* d = ::opendir("/proc/self/fd");
    REQUIRE(d != nullptr);
    while (dirent* e = ::readdir(d)) {
      const std::string link = std::string("/proc/self/fd/") + e->d_name;
      char target[256] = {};
      if (::readlink(link.c_str(), target, sizeof target - 1) <= 0 || want != target) continue;
      const int flags = ::fcntl(std::atoi(e->d_name), F_GETFL);
      if (flags >= 0 && (flags & O_ACCMODE) == O_RDWR) fd = std::atoi(e->d_name);
    }
    ::closedir(d);
    REQUIRE_MESSAGE(fd >= 0, "no writable descriptor of " << want);
    base = ::mmap(nullptr, layout.total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    REQUIRE(base != MAP_FAILED);
  }
  ~ProducerShm() { ::munmap(base, layout.total_size); }
  ProducerShm(const ProducerShm&) = delete;
  ProducerShm& operator=(const ProducerShm&) = delete;

  core::SubbufMeta& meta(size_t slot) {
    return reinterpret_cast<core::SubbufMeta*>(static_cast<char*>(base) + layout.meta_offset)[slot];
  }

  core::Layout layout;
  void* base = MAP_FAILED;
};

// ---- Callback recorders -------------------------------------------------------------------------

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

}  // namespace

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
  // Whole sub-buffers are there, and the reader armed its bell when it found none: woken. Not
  // at once, though: the producer's event thread installs the bell when the daemon's message
  // comes, which may be after these writes, and then rings it (Bells::add). A poll without a
  // timeout failed here 5 or 6 times in 30 beside a busy loop, on this main and on de77bde.
  pollfd ready{r->fd, POLLIN, 0};
  CHECK(::poll(&ready, 1, 5000) == 1);
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

TEST_CASE("relay_reader_next refuses a padding larger than a sub-buffer, and so does read(2)") {
  Mount m;
  constexpr size_t kSub = 256, kN = 4;
  rchan* c = open_global(m.dir, "pad", kSub, kN);
  const std::string want = write_records(c, 0, 5);
  REQUIRE(relay_flush(c) == 0);  // sub-buffer 0 closed: 55 bytes, 201 of padding
  ProducerShm shm("pad0", kSub, kN);
  core::SubbufMeta& meta = shm.meta(0);
  REQUIRE(meta.padding.load() == kSub - want.size());
  meta.padding.store(0xffffffff);  // what a hostile producer may write there
  const std::string file = m.path("pad0");

  relay_reader* r = relay_reader_open(file.c_str());
  REQUIRE_MESSAGE(r != nullptr, std::strerror(errno));
  relay_subbuf sb{};
  errno = 0;
  const int rc = relay_reader_next(r, &sb);
  CHECK(rc == -1);
  CHECK(errno == EIO);
  if (rc == 1) CHECK(sb.length <= kSub);  // never a length beyond the sub-buffer
  // read(2): the daemon's consumer refuses it too, counts it, and lives.
  const int fd = ::open(file.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  char buf[4096];
  errno = 0;
  CHECK(::read(fd, buf, sizeof buf) == -1);
  CHECK(errno == EIO);
  CHECK(alive(m.pid));
  CHECK(num(getfattr(file), "corrupt") >= 1);
  CHECK(num(getfattr(file), "bytes_consumed") == 0);

  // The true padding back: both kinds of reader get the sub-buffer, so the refusals above were
  // about the padding alone.
  meta.padding.store(static_cast<uint32_t>(kSub - want.size()));
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.length == want.size());
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == want);
  CHECK(read_exactly(fd, want.size(), sizeof buf) == want);
  CHECK(alive(m.pid));
  ::close(fd);
  CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE(
    "a sub-buffer closed by relay_flush while a reservation is held is not handed out until it "
    "is committed") {
  Mount m;
  constexpr size_t kSub = 256, kN = 4;
  rchan* c = open_global(m.dir, "held", kSub, kN);
  relay_reader* r = relay_reader_open(m.path("held0").c_str());
  REQUIRE_MESSAGE(r != nullptr, std::strerror(errno));
  const std::string before = write_records(c, 0, 3), late = record(3);
  void* slot = relay_reserve(c, late.size());
  REQUIRE(slot != nullptr);
  const std::string after = write_records(c, 4, 6);
  REQUIRE(relay_flush(c) == 0);  // sub-buffer 0 is closed, but a record in it is not committed
  REQUIRE(stats_of(c).subbufs_produced == 1);
  relay_subbuf sb{};
  CHECK(relay_reader_next(r, &sb) == 0);  // nothing ready: not wholly committed
  pollfd p{r->fd, POLLIN, 0};
  CHECK(::poll(&p, 1, 0) == 0);
  CHECK((p.revents & POLLIN) == 0);
  CHECK(relay_reader_next(r, &sb) == 0);  // still not, however often it asks

  std::memcpy(slot, late.data(), late.size());
  relay_commit(c, slot, late.size());
  pollfd q{r->fd, POLLIN, 0};
  CHECK(::poll(&q, 1, 5000) == 1);
  CHECK((q.revents & POLLIN) != 0);
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 0);
  CHECK(sb.length == before.size() + late.size() + after.size());
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == before + late + after);
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

TEST_CASE("a second reader-open on one connection is refused with EBUSY, with no descriptor, "
          "and the connection still answers") {
  Mount m;
  rchan* c = open_global(m.dir, "twice", 4096, 4);
  write_records(c, 0, 3);
  struct stat st;
  REQUIRE(::stat(m.path("twice0").c_str(), &st) == 0);
  const int s = dial_control_timed(m.dir);
  REQUIRE(s >= 0);
  const proto::ReaderOpenRequest req{st.st_ino, proto::kReaderBell};
  proto::ReaderOpenReply reply;
  proto::Received r;
  REQUIRE(proto::send_message(s, proto::encode(req, 1)) == 0);
  REQUIRE(proto::recv_message(s, &r, 3) == 1);
  REQUIRE(proto::decode(r.payload.data(), r.payload.size(), &reply) == 0);
  CHECK(reply.status == 0);
  CHECK(r.fds.size() == 3);  // the buffer, the bell's page, its eventfd
  // The same connection asks again: refused, and the first reader's bell is not sent again.
  REQUIRE(proto::send_message(s, proto::encode(req, 2)) == 0);
  proto::Received again;
  REQUIRE(proto::recv_message(s, &again, 3) == 1);
  REQUIRE(proto::decode(again.payload.data(), again.payload.size(), &reply) == 0);
  CHECK(reply.status == -EBUSY);
  CHECK(again.fds.empty());
  ::close(s);
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
  // A read(2) reply goes straight from the mapping; the daemon publishes the new position right
  // after the kernel took the reply, a moment after read(2) may have returned (relay(7)).
  CHECK(wait_for([&] { return relay_reader_next(r, &sb) == 1 && sb.seq == 2; }));
  CHECK(sb.seq == 2);
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == model.subs[2]);
  // The mmap reader consumes 2: read(2) goes on with 3.
  REQUIRE(relay_reader_consumed(r, 1) == 0);
  relay_stats st{};
  CHECK(wait_for([&] { return relay_reader_stats(r, &st) == 0 && st.subbufs_consumed == 3; }));
  CHECK(read_exactly(fd, model.subs[3].size(), 4096) == model.subs[3]);
  CHECK(wait_for([&] { return relay_reader_next(r, &sb) == 1 && sb.seq == 4; }));
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
  const unsigned before = r->generation;
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
  CHECK(r->generation != before);  // seq 0 again, in a new generation
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
  const relay_options o{RELAY_OVERWRITE, 0, nullptr};
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

TEST_CASE("the example mmap consumer copies every sub-buffer of a blocking channel, then stops") {
  const char* prog = std::getenv("RELAYFS_MMAP_READER");
  REQUIRE_MESSAGE(prog != nullptr, "RELAYFS_MMAP_READER is not set");
  Mount m;
  // Blocking: the writer waits for the example to consume, so nothing may be lost.
  const relay_options opts{RELAY_BLOCKING, 10000, nullptr};
  rchan* c = open_global(m.dir, "ex", 4096, 4, {}, &opts);
  const std::string out = m.dir + ".mmap-out";
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::execl(prog, prog, m.path("ex0").c_str(), out.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // 40 sub-buffers' worth through a 4-sub-buffer buffer.
  const std::string want = write_records(c, 0, 15000);
  REQUIRE(relay_flush(c) == 0);  // as the spec says: the last sub-buffer becomes a whole one
  REQUIRE(relay_close(c) == 0);
  int st = -1;
  for (int i = 0; i < 2000 && ::waitpid(pid, &st, WNOHANG) == 0; ++i)
    std::this_thread::sleep_for(10ms);
  if (::waitpid(pid, &st, WNOHANG) == 0) {  // still running after 20 s: fail, but clean up
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &st, 0);
    FAIL("the example did not stop when the channel closed");
  }
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  std::ifstream in(out);
  const std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ::unlink(out.c_str());
  CHECK(got.size() == want.size());
  CHECK(got == want);
}

TEST_CASE("relay_reader_peek gives later sub-buffers without consuming; consumption stays in "
          "order") {
  Mount m;
  constexpr size_t kSub = 256;
  rchan* c = open_global(m.dir, "pk", kSub, 8);
  Model model(kSub);
  for (int i = 0; model.subs.size() < 5; ++i) {
    const std::string rec = record(i);
    REQUIRE(relay_write(c, rec.data(), rec.size()) == 0);
    model.written(rec);
  }
  relay_reader* r = relay_reader_open(m.path("pk0").c_str());
  REQUIRE(r != nullptr);
  relay_subbuf sb{};
  for (unsigned long long seq = 0; seq < 5; ++seq) {
    REQUIRE(relay_reader_peek(r, seq, &sb) == 1);
    CHECK(sb.seq == seq);
    CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == model.subs[seq]);
  }
  CHECK(relay_reader_peek(r, 5, &sb) == 0);   // being written
  CHECK(relay_reader_peek(r, 50, &sb) == 0);  // not produced yet
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 0);  // peeking consumed nothing
  REQUIRE(relay_reader_consumed(r, 3) == 0);
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 3);
  errno = 0;
  CHECK(relay_reader_peek(r, 2, &sb) == -1);  // behind the position
  CHECK(errno == ESTALE);
  CHECK(relay_reader_peek(r, 4, &sb) == 1);
  CHECK(relay_reader_peek(nullptr, 4, &sb) == -1);
  CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("once the producer closes the buffer, an mmap reader gets its tail, poll() says so, "
          "and consuming it drains the file") {
  Mount m;
  constexpr size_t kSub = 256;
  rchan* c = open_global(m.dir, "tl", kSub, 8);
  Model model(kSub);
  for (int i = 0; model.subs.size() < 2 || model.cur.empty(); ++i) {
    const std::string rec = record(i);
    REQUIRE(relay_write(c, rec.data(), rec.size()) == 0);
    model.written(rec);
  }
  relay_reader* r = relay_reader_open(m.path("tl0").c_str());
  REQUIRE(r != nullptr);
  relay_subbuf sb{};
  // While the producer may still write, the tail is not given.
  CHECK(relay_reader_peek(r, 2, &sb) == 0);
  REQUIRE(relay_reader_next(r, &sb) == 1);
  REQUIRE(relay_reader_consumed(r, 2) == 0);
  CHECK(relay_reader_next(r, &sb) == 0);
  pollfd p{r->fd, POLLIN, 0};
  CHECK(::poll(&p, 1, 0) == 0);
  REQUIRE(relay_close(c) == 0);  // no relay_flush: the last sub-buffer never closes
  p.revents = 0;
  CHECK(::poll(&p, 1, 5000) == 1);
  CHECK((p.revents & POLLIN) != 0);
  REQUIRE(relay_reader_next(r, &sb) == 1);
  CHECK(sb.seq == 2);
  CHECK(std::string(static_cast<const char*>(sb.data), sb.length) == model.cur);
  CHECK(sb.padding == kSub - model.cur.size());
  relay_subbuf peeked{};
  REQUIRE(relay_reader_peek(r, 2, &peeked) == 1);
  CHECK(peeked.length == sb.length);
  CHECK(relay_reader_valid(r, &sb) == 1);
  REQUIRE(relay_reader_consumed(r, 1) == 0);
  CHECK(relay_reader_next(r, &sb) == 0);  // nothing more, and not the tail again
  CHECK(relay_reader_peek(r, 2, &sb) == -1);
  relay_stats st{};
  REQUIRE(relay_reader_stats(r, &st) == 0);
  CHECK(st.bytes_consumed == st.bytes_produced);
  // Drained, the finalized buffer's file goes, as after cat.
  CHECK(wait_for([&] { return !exists(m.path("tl0")); }));
  CHECK(relay_reader_close(r) == 0);
}

// ---- The reader's own bell (core/bell.h) --------------------------------------------------------

namespace {

// SIGSTOPs the daemon for as long as it lives, and lets it go on however the test ends.
struct Stopped {
  explicit Stopped(pid_t pid) : pid(pid) { REQUIRE(::kill(pid, SIGSTOP) == 0); }
  ~Stopped() { ::kill(pid, SIGCONT); }
  pid_t pid;
};

// Reads every whole sub-buffer there is and releases it; returns how many.
int drain(relay_reader* r) {
  relay_subbuf sb{};
  int n = 0;
  while (relay_reader_next(r, &sb) == 1) {
    REQUIRE(relay_reader_consumed(r, 1) == 0);
    ++n;
  }
  return n;
}

// Whether r's poll() sleeps for 100 ms with nothing new, as it must once the reader has drained
// and armed its bell. One ring is allowed first: the producer rings a bell once when its event
// thread installs it (Bells::add), which may come after relay_reader_open returned and the reader
// armed; that wake-up must then find nothing (relay_reader_next returns 0), and the next poll
// sleep.
bool sleeps(relay_reader* r) {
  pollfd p{r->fd, POLLIN, 0};
  if (::poll(&p, 1, 100) == 0) return true;
  relay_subbuf sb{};
  if (relay_reader_next(r, &sb) != 0) return false;  // something new after all: not asleep
  p.revents = 0;
  return ::poll(&p, 1, 100) == 0;
}

// Polls r until the file says the channel ended and is drained (POLLERR or POLLHUP without
// POLLIN), reading what comes meanwhile. Returns the sub-buffers read, or -1 after 50 polls
// (a descriptor that keeps saying POLLIN with nothing to read spins) or a 5 s silence.
int read_to_end(relay_reader* r) {
  int n = 0;
  for (int polls = 0; polls < 50; ++polls) {
    n += drain(r);
    pollfd p{r->fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return -1;
    if ((p.revents & (POLLERR | POLLHUP)) && !(p.revents & POLLIN)) return n;
  }
  return -1;
}

}  // namespace

TEST_CASE("an mmap reader's poll() wakes through its own bell, rung by the producer while the "
          "daemon is stopped; with nothing new it sleeps") {
  Mount m;
  constexpr size_t kSub = 256;
  rchan* c = open_global(m.dir, "bell", kSub, 8);
  relay_reader* r = relay_reader_open(m.path("bell0").c_str());
  REQUIRE(r != nullptr);
  REQUIRE(r->fd != r->file);  // it has a bell: fd is the descriptor that waits on it
  // The first poll returns at once (the reader looks before it first sleeps), then none does
  // while nothing comes: relay_reader_next drained the bell before arming it.
  pollfd p{r->fd, POLLIN, 0};
  CHECK(::poll(&p, 1, 0) == 1);
  CHECK(drain(r) == 0);
  CHECK(sleeps(r));
  for (int i = 0; i < 2; ++i) {  // the one allowed ring is spent: no more
    p.revents = 0;
    CHECK(::poll(&p, 1, 100) == 0);
  }
  {
    // With the daemon stopped, nothing of the FUSE path can wake anybody: a wake-up now is the
    // producer's write to the reader's eventfd.
    Stopped stop(m.pid);
    write_records(c, 0, 3);
    REQUIRE(relay_flush(c) == 0);
    p.revents = 0;
    CHECK(::poll(&p, 1, 5000) == 1);
    CHECK((p.revents & POLLIN) != 0);
    relay_subbuf sb{};
    REQUIRE(relay_reader_next(r, &sb) == 1);  // the mapping reads without the daemon too
    CHECK(std::string(static_cast<const char*>(sb.data), sb.length) ==
          record(0) + record(1) + record(2));
  }
  REQUIRE(relay_reader_consumed(r, 1) == 0);
  CHECK(drain(r) == 0);
  p.revents = 0;
  CHECK(::poll(&p, 1, 100) == 0);
  REQUIRE(relay_close(c) == 0);
  CHECK(read_to_end(r) == 0);
  CHECK(relay_reader_close(r) == 0);
}

TEST_CASE("no wake-up is lost when the reader arms its bell while the producer commits: 3000 "
          "rounds of one record each, and poll() never returns for nothing twice in a row") {
  Mount m;
  constexpr size_t kSub = 256;
  rchan* c = open_global(m.dir, "race", kSub, 8);
  relay_reader* r = relay_reader_open(m.path("race0").c_str());
  REQUIRE(r != nullptr);
  REQUIRE(r->fd != r->file);
  constexpr int kRounds = 3000;
  std::atomic<int> taken{0};  // rounds the reader has consumed
  std::atomic<bool> stop{false};
  std::thread producer([&] {
    // Each round's record goes in as soon as the reader has taken the last one: right when it
    // is about to arm and sleep, or in the middle of it.
    for (int i = 0; i < kRounds && !stop; ++i) {
      while (taken.load() < i && !stop) {
      }
      const std::string rec = record(i);
      if (relay_write(c, rec.data(), rec.size()) != 0 || relay_flush(c) != 0) stop = true;
    }
  });
  int lost = 0, empty = 0, empty_in_a_row = 0, worst_in_a_row = 0;
  relay_subbuf sb{};
  for (int i = 0; i < kRounds && !stop;) {
    if (relay_reader_next(r, &sb) == 1) {
      if (std::string(static_cast<const char*>(sb.data), sb.length) != record(i)) break;
      REQUIRE(relay_reader_consumed(r, 1) == 0);
      taken = ++i;
      empty_in_a_row = 0;
      continue;
    }
    pollfd p{r->fd, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) {  // the record is in, the reader is asleep: lost
      ++lost;
      break;
    }
    // Woken: the next relay_reader_next must find the record, or (a ring already counted
    // for the record before) find nothing once and then sleep.
    if (relay_reader_next(r, &sb) == 0) {
      ++empty;
      worst_in_a_row = std::max(worst_in_a_row, ++empty_in_a_row);
      continue;
    }
    if (std::string(static_cast<const char*>(sb.data), sb.length) != record(i)) break;
    REQUIRE(relay_reader_consumed(r, 1) == 0);
    taken = ++i;
    empty_in_a_row = 0;
  }
  stop = true;
  producer.join();
  CHECK(lost == 0);
  CHECK(taken.load() == kRounds);
  CHECK(worst_in_a_row <= 1);  // never a spin
  MESSAGE("empty wake-ups: " << empty << " in " << kRounds << " rounds");
  CHECK(relay_reader_close(r) == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("a SIGKILLed producer's mmap reader with a bell is woken, reads what was flushed, and "
          "sees the end") {
  Mount m;
  constexpr size_t kSub = 256;
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    rchan_callbacks cb{};
    cb.create_buf_file = &make_global<0440>;
    rchan* c = relay_open("kp", m.dir.c_str(), kSub, 8, &cb, nullptr);
    if (!c) ::_exit(1);
    for (int i = 0; i < 3; ++i) {
      const std::string rec = record(i);
      if (relay_write(c, rec.data(), rec.size()) != 0) ::_exit(2);
    }
    if (relay_flush(c) != 0) ::_exit(3);
    char x = 1;
    if (::write(ready[1], &x, 1) != 1) ::_exit(4);
    ::pause();
    ::_exit(0);
  }
  ::close(ready[1]);
  char x;
  REQUIRE(::read(ready[0], &x, 1) == 1);
  ::close(ready[0]);
  relay_reader* r = relay_reader_open(m.path("kp0").c_str());
  REQUIRE(r != nullptr);
  CHECK(r->fd != r->file);
  CHECK(drain(r) == 1);
  pollfd p{r->fd, POLLIN, 0};
  CHECK(sleeps(r));  // armed, asleep
  ::kill(child, SIGKILL);
  int st;
  ::waitpid(child, &st, 0);
  // The daemon finalizes the channel and rings the bell itself: no producer will.
  p.revents = 0;
  CHECK(::poll(&p, 1, 5000) == 1);
  CHECK(read_to_end(r) == 0);
  CHECK(relay_reader_close(r) == 0);
}

// A reader may be hostile to its producer and to the daemon (core/bell.h). When the bell was an
// eventfd, shared by all three as one open file description, this reader's attack (clear
// O_NONBLOCK, write 2^64-2) made the producer's next ring block inside relay_write, and the
// daemon's ring when the channel was finalized.
TEST_CASE("a hostile reader's bell cannot make its producer's writes, or the daemon, block") {
  Mount m;
  const relay_options ow{RELAY_OVERWRITE, 0, nullptr};
  rchan* c = open_global(m.dir, "hostile", 4096, 4, {}, &ow);
  struct stat st;
  REQUIRE(::stat(m.path("hostile0").c_str(), &st) == 0);
  const int s = dial_control_timed(m.dir);
  REQUIRE(s >= 0);
  proto::Received r;
  REQUIRE(proto::send_message(
              s, proto::encode(proto::ReaderOpenRequest{st.st_ino, proto::kReaderBell}, 1)) == 0);
  REQUIRE(proto::recv_message(s, &r, 3) == 1);
  REQUIRE(r.fds.size() == 3);  // the buffer, the bell's page, the reader's bell descriptor
  const int bell = r.fds[2].get();
  // The attack: the descriptor filled, then made blocking for every holder that shares it. The
  // fill comes first, drained and non-blocking, so that this test never blocks itself: an
  // eventfd bell (before protocol 6) took it, and the producer's next ring then blocked.
  REQUIRE(::fcntl(bell, F_SETFL, O_NONBLOCK) == 0);
  char pending[64];
  (void)::read(bell, pending, sizeof pending);
  const uint64_t top = 0xfffffffffffffffeull;
  // A socket shut down for sending refuses it (EPIPE; SIGPIPE ignored here, not in the daemon).
  void (*was)(int) = ::signal(SIGPIPE, SIG_IGN);
  CHECK(::write(bell, &top, sizeof top) < 0);
  ::signal(SIGPIPE, was);
  (void)::fcntl(bell, F_SETFL, 0);
  // And the page kept armed, so that every sub-buffer the producer completes rings the bell,
  // which this reader never drains.
  core::Mapping page;
  REQUIRE(core::map_bell_page(r.fds[1].get(), &page) == 0);
  std::atomic<uint32_t>* armed = &reinterpret_cast<core::BellPage*>(page.bytes())->armed;
  std::atomic<bool> stop{false};
  std::thread rearm([&] {
    while (!stop.load()) armed->store(1);
  });
  // The producer fills a thousand sub-buffers, then closes (the daemon rings the bell once
  // more, ReaderBell::fall_back). In a thread of its own, detached: if it blocks, the case fails
  // after 20 s instead of hanging the run.
  auto done = std::make_shared<std::atomic<int>>(0);
  std::thread([c, done] {
    const std::string rec(64, 'h');
    for (int i = 0; i < 1000 * 4096 / 64; ++i) (void)relay_write(c, rec.data(), rec.size());
    done->store(1);
    done->store(relay_close(c) == 0 ? 2 : 3);
  }).detach();
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (done->load() < 2 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(10ms);
  stop = true;
  rearm.join();
  CHECK(done->load() == 2);  // 0: the writes blocked; 1: relay_close did
  // The daemon's loop still answers: another reader-open on a fresh connection.
  const int s2 = dial_control_timed(m.dir);
  REQUIRE(s2 >= 0);
  CHECK(control_answer(s2, proto::encode(proto::ReaderOpenRequest{st.st_ino, 0}, 1)) != 202);
  ::close(s2);
  ::close(s);
}

namespace {

// A producer in a child process that the test steps: the child opens global channel `base`
// (mode 0444) in dir and runs body(channel, steps), whose value is its exit status; it says
// "ready" and waits for "go" through the steps' pipes, as the body chooses.
struct Steps {
  Steps() {
    REQUIRE(::pipe(ready_) == 0);
    REQUIRE(::pipe(go_) == 0);
  }
  Steps(const Steps&) = delete;
  Steps& operator=(const Steps&) = delete;
  ~Steps() {
    for (int fd : {ready_[0], ready_[1], go_[0], go_[1]}) ::close(fd);
  }
  // The child's side: false if the test went away.
  bool ready() { return ::write(ready_[1], "r", 1) == 1; }
  bool wait_go() {
    char x;
    return ::read(go_[0], &x, 1) == 1;
  }
  // The test's side.
  void wait_ready() {
    char x;
    REQUIRE(::read(ready_[0], &x, 1) == 1);
  }
  void go() { REQUIRE(::write(go_[1], "g", 1) == 1); }

 private:
  int ready_[2], go_[2];
};

template <typename Body>
void fork_producer(ChildGuard* child, Steps* steps, const std::string& dir, const char* base,
                   Body body) {
  child->pid = ::fork();
  REQUIRE(child->pid >= 0);
  if (child->pid != 0) return;
  rchan_callbacks cb{};
  cb.create_buf_file = &make_global<0444>;
  rchan* c = relay_open(base, dir.c_str(), 4096, 4, &cb, nullptr);
  ::_exit(c ? body(c, *steps) : 100);
}

// Waits for the stepped producer to end, and checks that it ended with status 0; a status below
// 100 is the errno of its relay_close.
void producer_succeeded(ChildGuard* child) {
  int st = 0;
  REQUIRE(::waitpid(child->pid, &st, 0) == child->pid);
  child->pid = -1;
  REQUIRE(WIFEXITED(st));
  CHECK_MESSAGE(WEXITSTATUS(st) == 0,
                "the producer failed: " << std::string(std::strerror(WEXITSTATUS(st))));
}

}  // namespace

TEST_CASE("readers opening and closing while their producer does not read cannot cut it off") {
  // Each bell the daemon gives a reader goes to the producer with two descriptors. A producer
  // that does not read its socket for a while (stopped here) must not have them queued until
  // the daemon cuts it off for not reading, which would end its channels: the readers then go
  // without a bell.
  Mount m;
  Steps steps;
  ChildGuard child;
  fork_producer(&child, &steps, m.dir, "churn", [](rchan* c, Steps& s) {
    const std::string r = record(0);
    if (relay_write(c, r.data(), r.size()) != 0) return 101;
    if (!s.ready() || !s.wait_go()) return 102;
    return relay_close(c) == 0 ? 0 : errno;
  });
  steps.wait_ready();
  REQUIRE(::kill(child.pid, SIGSTOP) == 0);
  // More than the 64 queued descriptors, and than the socket holds, many times over.
  int opened = 0, without_bell = 0;
  for (int i = 0; i < 400; ++i) {
    relay_reader* r = relay_reader_open(m.path("churn0").c_str());
    if (!r) break;
    ++opened;
    without_bell += r->fd == r->file;
    relay_reader_close(r);
  }
  CHECK(opened == 400);
  CHECK(without_bell > 0);  // the producer's socket was full: the case ran
  CHECK(exists(m.path("churn0")));
  REQUIRE(::kill(child.pid, SIGCONT) == 0);
  steps.go();
  producer_succeeded(&child);
}

TEST_CASE(
    "a producer with no descriptor to spare for a reader's bell keeps its channel, and the "
    "reader wakes through its file") {
  // The bell's descriptors cannot be installed in the producer (at its limit). That must not
  // end the producer's connection, and so its channel; and the reader, given a bell that the
  // producer could not take, must not sleep on it: the daemon makes it fall back to its file.
  Mount m;
  Steps steps;
  ChildGuard child;
  fork_producer(&child, &steps, m.dir, "nofd", [](rchan* c, Steps& s) {
    // No descriptor can be made from now on: the lowest free one is the limit.
    const int lowest = ::dup(0);
    ::close(lowest);
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = static_cast<rlim_t>(lowest);
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) return 101;
    if (!s.ready() || !s.wait_go()) return 102;
    for (int i = 0; i < 3; ++i) {
      const std::string r = record(i);
      if (relay_write(c, r.data(), r.size()) != 0) return 103;
    }
    if (relay_flush(c) != 0) return 104;
    if (!s.wait_go()) return 105;
    return relay_close(c) == 0 ? 0 : errno;
  });
  steps.wait_ready();
  relay_reader* r = relay_reader_open(m.path("nofd0").c_str());
  REQUIRE(r != nullptr);
  CHECK(r->fd != r->file);  // given a bell, which the producer cannot take
  CHECK(drain(r) == 0);
  steps.go();  // the producer writes three records and flushes
  // Each poll must be woken, not time out: a spurious wake-up first (the fall-back's ring) is
  // allowed.
  int got = 0;
  for (int i = 0; i < 3 && got == 0; ++i) {
    pollfd p{r->fd, POLLIN, 0};
    const int n = ::poll(&p, 1, 5000);
    REQUIRE(n >= 0);
    if (n == 0) break;  // not woken
    got += drain(r);
  }
  CHECK_MESSAGE(got == 1, "the reader was not woken for the flushed sub-buffer");
  CHECK(exists(m.path("nofd0")));
  CHECK(relay_reader_close(r) == 0);
  steps.go();
  producer_succeeded(&child);
}

TEST_CASE("a buffer hands out at most 16 bells; the readers past them wake through the file, and "
          "a bell given back is handed out again") {
  Mount m;
  constexpr size_t kSub = 256;
  rchan* c = open_global(m.dir, "many", kSub, 8);
  std::vector<relay_reader*> rs;
  for (int i = 0; i < 20; ++i) {
    rs.push_back(relay_reader_open(m.path("many0").c_str()));
    REQUIRE(rs.back() != nullptr);
    CHECK((rs.back()->fd != rs.back()->file) == (i < 16));
  }
  for (auto* r : rs) CHECK(drain(r) == 0);
  write_records(c, 0, 3);
  REQUIRE(relay_flush(c) == 0);
  // Every reader is woken, with a bell or without: they share one position, so the first one
  // to take the sub-buffer takes it for all; the others must still be woken (and find nothing).
  for (auto* r : rs) {
    pollfd p{r->fd, POLLIN, 0};
    CHECK(::poll(&p, 1, 5000) == 1);
  }
  for (size_t i = 1; i < rs.size(); ++i) CHECK(relay_reader_close(rs[i]) == 0);
  rs.resize(1);
  // The daemon learns of the closes asynchronously: a bell comes back once it has.
  relay_reader* again = nullptr;
  CHECK(wait_for([&] {
    if (again) relay_reader_close(again);
    again = relay_reader_open(m.path("many0").c_str());
    return again && again->fd != again->file;
  }));
  if (again) relay_reader_close(again);
  CHECK(relay_reader_close(rs[0]) == 0);
  CHECK(relay_close(c) == 0);
}

TEST_CASE("RELAYFS_READER_BELL=0 keeps the relay file as the descriptor to poll") {
  Mount m;
  rchan* c = open_global(m.dir, "nb", 256, 8);
  ::setenv("RELAYFS_READER_BELL", "0", 1);
  relay_reader* r = relay_reader_open(m.path("nb0").c_str());
  ::unsetenv("RELAYFS_READER_BELL");
  REQUIRE(r != nullptr);
  CHECK(r->fd == r->file);
  CHECK(drain(r) == 0);
  write_records(c, 0, 3);
  REQUIRE(relay_flush(c) == 0);
  pollfd p{r->fd, POLLIN, 0};
  CHECK(::poll(&p, 1, 5000) == 1);
  CHECK(drain(r) == 1);
  REQUIRE(relay_close(c) == 0);
  CHECK(read_to_end(r) == 0);
  CHECK(relay_reader_close(r) == 0);
}
