// Recording to disk in the daemon (src/fs/record.cc), driven raw over the control socket the way
// relayctl record drives it: the checks on a request and its descriptors, writes from io_uring
// fixed buffers, what a recorder that hangs up leaves behind, and a cat reading the same buffer
// while it is recorded. relayctl's own tests (tests/relayctl/record_test.cc) cover the tool.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <relayfs/relay.h>
#include <sys/stat.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "proto/protocol.h"
#include "proto/wire.h"
#include "helpers.h"
#include "mount.h"

using namespace relayfs::test;
namespace proto = relayfs::proto;
using relayfs::core::UniqueFd;

namespace {

// Opens (creating) file name in dir with flags.
int open_in(const TempDir& dir, const std::string& name, int flags) {
  const int fd = ::open(dir.path(name).c_str(), flags | O_CREAT | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  return fd;
}

// Sends a record request with fds on s and returns the daemon's answer as an errno (0: it records),
// skipping events of recordings started before. *fixed: whether it writes from fixed buffers.
int ask_record(int s, uint64_t ino, uint32_t cookie, std::vector<int> fds, uint32_t* fixed = nullptr,
               uint32_t mem_align = 0, uint32_t off_align = 0) {
  static uint32_t seq = 100;
  const uint32_t my = seq++;
  REQUIRE(proto::send_message(s, proto::encode(proto::RecordRequest{ino, cookie, mem_align, off_align},
                                               my),
                              fds.data(), fds.size()) == 0);
  for (;;) {
    proto::Received r;
    REQUIRE(proto::recv_message(s, &r) == 1);
    if (r.header.seq != my) continue;
    if (static_cast<proto::Type>(r.header.type) == proto::Type::kError) return EPROTO;
    REQUIRE(static_cast<proto::Type>(r.header.type) == proto::Type::kRecordReply);
    proto::RecordReply reply;
    REQUIRE(proto::decode(r.payload.data(), r.payload.size(), &reply) == 0);
    if (fixed) *fixed = reply.fixed;
    return -reply.status;
  }
}

// Waits for the end event of recording cookie on s; returns it.
proto::RecordEvent wait_end(int s, uint32_t cookie) {
  for (;;) {
    proto::Received r;
    REQUIRE(proto::recv_message(s, &r) == 1);
    if (static_cast<proto::Type>(r.header.type) != proto::Type::kRecordEvent) continue;
    proto::RecordEvent ev;
    REQUIRE(proto::decode(r.payload.data(), r.payload.size(), &ev) == 0);
    if (ev.cookie == cookie && ev.kind == proto::RecordKind::kEnd) return ev;
  }
}

// The bytes the index says the output file holds: the lengths of its subbuf and tail lines.
uint64_t index_total(const std::string& index) {
  std::istringstream in(index);
  std::string kind, buffer, seq;
  uint64_t off, len, total = 0;
  for (std::string line; std::getline(in, line);) {
    std::istringstream f(line);
    if (f >> kind >> buffer >> seq >> off >> len && (kind == "subbuf" || kind == "tail"))
      total += len;
  }
  return total;
}

// Opens path for drain_until, in the caller's thread: a reader thread that opened it itself
// could come too late, once the recording drained the channel and its file was gone.
UniqueFd open_reader(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd.valid());
  return fd;
}

// A reader on fd (open all along, so the file stays while it drains) until done is set, then
// to the end; reads of chunk bytes.
std::string drain_until(UniqueFd fd_owner, const std::atomic<bool>& done, size_t chunk = 1 << 16) {
  std::string out;
  const int fd = fd_owner.get();
  std::vector<char> buf(chunk);
  for (;;) {
    const bool last = done.load();
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n > 0) {
      out.append(buf.data(), static_cast<size_t>(n));
      continue;
    }
    if (n < 0 || last) break;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return out;
}

// The records in s ("rec NNNNNN\n" each), as numbers; REQUIREs whole records.
std::multiset<int> records_in(const std::string& s) {
  REQUIRE(s.size() % kRec == 0);
  std::multiset<int> out;
  for (size_t i = 0; i < s.size(); i += kRec) {
    REQUIRE(s.compare(i, 4, "rec ") == 0);
    out.insert(std::stoi(s.substr(i + 4, 6)));
  }
  return out;
}

// a and b hold records 0 .. n-1 between them, each exactly once, each side in order.
bool same_records(const std::string& a, const std::string& b, int n) {
  std::multiset<int> all = records_in(a);
  for (int r : records_in(b)) all.insert(r);
  std::multiset<int> want;
  for (int i = 0; i < n; ++i) want.insert(i);
  const auto in_order = [](const std::string& s) {
    int prev = -1;
    for (size_t i = 0; i < s.size(); i += kRec) {
      const int r = std::stoi(s.substr(i + 4, 6));
      if (r <= prev) return false;
      prev = r;
    }
    return true;
  };
  return all == want && in_order(a) && in_order(b);
}

}  // namespace

TEST_CASE("a record request is checked: descriptors, the file, the caller; refusals change nothing") {
  Mount m;
  TempDir out;
  rchan* c = open_global(m.dir, "chk", 4096, 8);
  const std::string data = write_records(c, 0, 1000);  // 11000 bytes: two sub-buffers closed
  const int s = connect_control(m.dir);
  const uint64_t file = ino_of(m.path("chk0")), merged = ino_of(m.path("chk"));
  UniqueFd w(open_in(out, "out", O_WRONLY | O_TRUNC)), idx(open_in(out, "idx", O_WRONLY | O_APPEND));
  UniqueFd ro(open_in(out, "ro", O_RDONLY)), no_append(open_in(out, "na", O_WRONLY));
  UniqueFd other_direct(open_in(out, "other", O_WRONLY));
  int pipe_fds[2];
  REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
  UniqueFd pr(pipe_fds[0]), pw(pipe_fds[1]);

  CHECK(ask_record(s, file, 0, {w.get()}) == EBADF);                          // no index
  CHECK(ask_record(s, file, 0, {ro.get(), idx.get()}) == EBADF);              // not writable
  CHECK(ask_record(s, file, 0, {pw.get(), idx.get()}) == EINVAL);             // not a file
  CHECK(ask_record(s, file, 0, {w.get(), no_append.get()}) == EINVAL);        // index not O_APPEND
  CHECK(ask_record(s, file, 0, {w.get(), idx.get(), other_direct.get()}) == EINVAL);  // another file
  CHECK(ask_record(s, file, 0, {w.get(), idx.get(), w.get()}) == EINVAL);     // not O_DIRECT
  CHECK(ask_record(s, file, 0, {idx.get(), idx.get()}) == EINVAL);            // output O_APPEND
  UniqueFd proc(::open("/proc/self/comm", O_WRONLY | O_CLOEXEC));
  REQUIRE(proc.valid());
  CHECK(ask_record(s, file, 0, {proc.get(), idx.get()}) == EINVAL);           // a pseudo-fs file
  UniqueFd opath(::open(out.path("out").c_str(), O_PATH | O_CLOEXEC));
  CHECK(ask_record(s, file, 0, {opath.get(), idx.get()}) == EBADF);           // O_PATH
  CHECK(ask_record(s, merged, 0, {w.get(), idx.get()}) == EINVAL);            // the merged view
  CHECK(ask_record(s, ino_of(m.dir), 0, {w.get(), idx.get()}) == ENOENT);     // a directory
  CHECK(ask_record(s, 987654, 0, {w.get(), idx.get()}) == ENOENT);            // no such file
  CHECK(ask_record(s, file, 0, {w.get(), idx.get()}, nullptr, 3, 0) == EINVAL);  // alignment 3
  // Nothing was recorded or consumed by any of them.
  CHECK(read_file(out.path("out")).empty());
  CHECK(num(getfattr(m.path("chk0")), "bytes_consumed") == 0);

  // A valid one records; a second recorder of the same buffer is refused while it runs.
  uint32_t fixed = 0;
  REQUIRE(ask_record(s, file, 7, {w.get(), idx.get()}, &fixed) == 0);
  CHECK(fixed == 1);  // the daemon registered the buffer with its io_uring
  const int s2 = connect_control(m.dir);
  UniqueFd w2(open_in(out, "out2", O_WRONLY | O_TRUNC));
  CHECK(ask_record(s2, file, 0, {w2.get(), idx.get()}) == EBUSY);
  ::close(s2);
  REQUIRE(relay_close(c) == 0);
  const proto::RecordEvent end = wait_end(s, 7);
  ::close(s);
  CHECK(end.ended_by == 1);  // closed and drained
  CHECK(end.status == 0);
  CHECK(end.bytes == data.size());
  CHECK(end.subbufs == 2);
  CHECK(end.tail == data.size() - 2 * 4092);
  CHECK(end.fixed == 3);  // every write came from the fixed buffer: two sub-buffers and the tail
  CHECK(read_file(out.path("out")) == data);
  CHECK(read_file(out.path("out2")).empty());
  const std::string index = read_file(out.path("idx"));
  CHECK(index.find("subbuf 0 0 0 4092\n") != std::string::npos);
  CHECK(index.find("subbuf 0 1 4092 4092\n") != std::string::npos);
  CHECK(index.find("tail 0 - 8184 " + std::to_string(data.size() - 8184) + "\n") !=
        std::string::npos);
}

namespace {

// A blocking global channel BASE of 4 sub-buffers of 4 KiB, recorded into out/out by a raw
// recorder on connection s (recording `cookie`).
struct Recorded {
  Mount m;
  TempDir out;
  relay_options opts{RELAY_BLOCKING, 5000, nullptr};
  rchan* c;
  int s;
  UniqueFd w, idx;
  std::string file;
  Recorded(const char* base, uint32_t cookie)
      : c(open_global(m.dir, base, 4096, 4, {}, &opts)),
        s(connect_control(m.dir)),
        w(open_in(out, "out", O_WRONLY | O_TRUNC)),
        idx(open_in(out, "idx", O_WRONLY | O_APPEND)),
        file(m.path(std::string(base) + "0")) {
    REQUIRE(ask_record(s, ino_of(file), cookie, {w.get(), idx.get()}) == 0);
  }
  ~Recorded() {
    if (s >= 0) ::close(s);
  }
  // What the recording kept: the output file up to the end the index gives. (A sub-buffer
  // taken back may lie past it; relayctl cuts the file there at the end.)
  std::string recorded() const {
    return read_file(out.path("out")).substr(0, index_total(read_file(out.path("idx"))));
  }
};

}  // namespace

// A recorder hangs up in the middle of recording: every record is then either in what the
// recording kept (the output file up to its index's end) or left in the channel for a reader.
static void hang_up_mid_recording() {
  Recorded r("hup", 0);
  std::string written = write_records(r.c, 0, 20000);  // 54 sub-buffers through a ring of 4
  ::close(r.s);  // gone, maybe with a write in flight
  r.s = -1;
  // The daemon ends the recording; from then on a cat drains what it left, while more comes.
  std::atomic<bool> done{false};
  std::string rest;
  std::thread cat([&, fd = open_reader(r.file)]() mutable {
    rest = drain_until(std::move(fd), done, 5957 * kRec);
  });
  written += write_records(r.c, 20000, 22000);
  REQUIRE(relay_close(r.c) == 0);
  done = true;
  cat.join();
  // The index's last lines are written after the data, asynchronously: wait for them.
  CHECK(wait_for([&] { return r.recorded().size() + rest.size() >= written.size(); }));
  const std::string recorded = r.recorded();
  CHECK(recorded.size() > 0);
  CHECK(recorded.size() + rest.size() == written.size());
  CHECK(same_records(recorded, rest, 22000));
}

TEST_CASE("a recorder that hangs up mid-recording loses nothing: what it did not write stays") {
  hang_up_mid_recording();
}

TEST_CASE("a recorder that hangs up while index lines wait loses nothing: they are written") {
  // The daemon holds every index line back until the stop (fault index_hold): the stop then
  // finds the lines of consumed sub-buffers unwritten, every time. They used to be dropped, and
  // their sub-buffers lost from both the recording and the channel (now and then, when a stop
  // met an index write in flight).
  TestFaults faults("index_hold");
  hang_up_mid_recording();
}

TEST_CASE("a stop ends a recording whose index never answers, failed, within its deadline") {
  // Every index write hangs (fault index_stall), as on a filesystem that stopped answering. A
  // stop must still end the recording, saying the index failed, and free the buffer for
  // another recorder; it used to wait for the index for ever.
  TestFaults faults("index_stall");
  Recorded r("stall", 5);
  write_records(r.c, 0, 2000);  // sub-buffers closed, written and consumed; their lines hang
  timeval tv{20, 0};
  REQUIRE(::setsockopt(r.s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
  REQUIRE(proto::send_message(r.s, proto::encode_status(proto::Type::kRecordStop, {0}, 900)) == 0);
  const auto t0 = Clock::now();
  const proto::RecordEvent end = wait_end(r.s, 5);
  const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  MESSAGE("the stop ended the recording after " << waited << " s");
  CHECK(end.ended_by == 4);  // the index failed
  CHECK(end.status == -ETIMEDOUT);
  CHECK(end.bytes > 0);      // what was written and consumed is in the totals
  // The buffer is free again: another recorder is taken, not refused as busy.
  UniqueFd w2(open_in(r.out, "out2", O_WRONLY | O_TRUNC)), idx2(open_in(r.out, "idx2", O_WRONLY | O_APPEND));
  const int s2 = connect_control(r.m.dir);
  CHECK(ask_record(s2, ino_of(r.file), 6, {w2.get(), idx2.get()}) == 0);
  ::close(s2);
  REQUIRE(relay_close(r.c) == 0);
}

TEST_CASE("a cat reading a buffer while it is recorded: every record lands once, in one of them") {
  Recorded r("both", 3);
  std::atomic<bool> done{false};
  std::string cat;
  // Small reads, often mid-sub-buffer, each ending on a record boundary (64 records).
  std::thread reader([&, fd = open_reader(r.file)]() mutable {
    cat = drain_until(std::move(fd), done, 64 * kRec);
  });
  const std::string written = write_records(r.c, 0, 30000);
  REQUIRE(relay_close(r.c) == 0);
  const proto::RecordEvent end = wait_end(r.s, 3);
  done = true;
  reader.join();
  CHECK(end.ended_by == 1);
  const std::string recorded = r.recorded();  // the index is complete once the end event came
  CHECK(recorded.size() == end.bytes);
  MESSAGE("recorded " << recorded.size() << " bytes, cat read " << cat.size() << ", "
                      << end.lapped << " extents taken back after cat took part of them");
  CHECK(recorded.size() + cat.size() == written.size());
  CHECK(same_records(recorded, cat, 30000));
}

namespace {

// The daemon's open descriptors.
size_t daemon_fds(pid_t pid) {
  return std::stoul(capture("ls /proc/" + std::to_string(pid) + "/fd | wc -l"));
}

}  // namespace

TEST_CASE("descriptors sent along with any message are closed, not kept") {
  Mount m;
  TempDir out;
  rchan* c = open_global(m.dir, "fds");
  const int s = connect_control(m.dir);
  UniqueFd a(open_in(out, "a", O_WRONLY)), b(open_in(out, "b", O_WRONLY | O_APPEND));
  const int fds[3] = {a.get(), b.get(), a.get()};
  // Warm up (the daemon opens what it needs on first use), then count.
  REQUIRE(proto::send_message(s, proto::encode_status(proto::Type::kRecordStop, {0}, 1), fds, 3) ==
          0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const size_t before = daemon_fds(m.pid);
  for (uint32_t i = 0; i < 200; ++i) {
    // Messages that take no descriptors, and refused record requests.
    REQUIRE(proto::send_message(s, proto::encode_status(proto::Type::kRecordStop, {0}, i), fds,
                                3) == 0);
    CHECK(control_answer(s, proto::encode(proto::RecordRequest{987654, 0, 0, 0}, i), fds, 2) ==
          ENOENT);
  }
  CHECK(wait_for([&] { return daemon_fds(m.pid) <= before; }));
  MESSAGE("daemon descriptors: " << before << " before, " << daemon_fds(m.pid) << " after");
  ::close(s);
  relay_close(c);
}

TEST_CASE("end events reach a recorder that reads late: none is lost to a full socket") {
  Mount m;
  TempDir out;
  constexpr int kChannels = 5;
  const int s = connect_control(m.dir);
  std::vector<rchan*> chans;
  for (int i = 0; i < kChannels; ++i) {
    const std::string base = "e" + std::to_string(i) + "_";
    chans.push_back(open_global(m.dir, base.c_str()));
    write_records(chans.back(), 0, 3);
    UniqueFd w(open_in(out, base, O_WRONLY | O_TRUNC)), x(open_in(out, base + ".idx", O_WRONLY | O_APPEND));
    REQUIRE(ask_record(s, ino_of(m.path(base + "0")), static_cast<uint32_t>(i), {w.get(), x.get()}) ==
            0);
  }
  // Fill the socket towards us: requests whose replies we do not read (a refusal each, which the
  // daemon queues when the socket is full: a reply is never dropped). A daemon that stopped
  // reading us would block these sends: fail after 10 s instead of hanging.
  const timeval limit{10, 0};
  ::setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  for (uint32_t i = 0; i < 3000; ++i)
    REQUIRE(proto::send_message(s, proto::encode(proto::ReaderOpenRequest{987654}, i)) == 0);
  for (rchan* c : chans) REQUIRE(relay_close(c) == 0);  // every recording ends
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::set<uint32_t> ended;
  size_t messages = 0, refusals = 0;
  for (;;) {
    pollfd p{s, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) break;
    proto::Received r;
    if (proto::recv_message(s, &r) != 1) break;
    ++messages;
    refusals += static_cast<proto::Type>(r.header.type) == proto::Type::kReaderOpenReply;
    proto::RecordEvent ev;
    if (static_cast<proto::Type>(r.header.type) == proto::Type::kRecordEvent &&
        proto::decode(r.payload.data(), r.payload.size(), &ev) == 0 &&
        ev.kind == proto::RecordKind::kEnd) {
      CHECK(ev.ended_by == 1);
      CHECK(ev.bytes == 3 * kRec);
      ended.insert(ev.cookie);
      if (ended.size() == kChannels) break;
    }
  }
  MESSAGE(messages << " messages read until the last end event");
  CHECK(refusals == 3000);  // the socket was full: every refusal waited for room, in order
  CHECK(ended.size() == kChannels);
  ::close(s);
}
