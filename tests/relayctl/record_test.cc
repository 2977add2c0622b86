// relayctl record: a channel to disk, compared byte for byte with what the producer wrote and
// what cat gives; stopped by a signal, ended by the channel's close, and failing on a full disk.
#include <sys/mount.h>

#include <numeric>

#include "relayctl/tool.h"

using namespace relayfs::test;
using namespace std::chrono_literals;

namespace {

// The index's lines of one kind ("subbuf", "tail", "lapped", "total", "end"), split in words.
std::vector<std::vector<std::string>> index_lines(const std::string& index, const std::string& kind) {
  return lines_starting(index, kind);
}

// The index must describe the file: subbuf and tail entries back to back from offset 0.
void check_index_covers(const std::string& index, unsigned buffer, size_t file_size) {
  uint64_t off = 0;
  std::istringstream in(index);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string kind, seq;
    unsigned b;
    uint64_t at, len;
    if (!(f >> kind >> b >> seq >> at >> len) || b != buffer) continue;
    if (kind != "subbuf" && kind != "tail") continue;
    CHECK(at == off);
    off += len;
  }
  CHECK(off == file_size);
}

// A producer thread writing numbered records into c until stopped.
struct Producer {
  explicit Producer(rchan* c) : c(c) {
    t = std::thread([this] {
      for (int i = 0; !stop.load(); ++i) {
        const std::string r = record(i);
        if (relay_write(this->c, r.data(), r.size()) == 0) written += r;
        else ++failed;
        if (i % 64 == 0) std::this_thread::sleep_for(50us);  // a steady, not flat-out, stream
      }
    });
  }
  ~Producer() { join(); }
  void join() {
    stop = true;
    if (t.joinable()) t.join();
  }
  rchan* c;
  std::atomic<bool> stop{false};
  std::string written;
  int failed = 0;
  std::thread t;
};

}  // namespace

TEST_CASE("record: stopped by SIGINT while a producer writes; recorded + what is left = written") {
  Mount m;
  TempDir out;
  // Blocking, so the recording keeps up without loss; a short limit, so that the writer, left
  // without a reader once recording stops, gives up quickly (such a write fails and is counted,
  // and is not in `written`).
  const relay_options opts{RELAY_BLOCKING, 300, nullptr};
  rchan* c = open_global(m.dir, "live", 4096, 4, {}, &opts);
  Producer p(c);
  const pid_t rec = spawn_relayctl({"record", m.path("live"), out.path("rec")}, out.path("err"));
  // Until some 50 sub-buffers went to disk.
  CHECK(wait_for([&] { return read_file(out.path("rec/live0")).size() > 200000; }, 20s));
  ::kill(rec, SIGINT);
  CHECK(wait_exit(rec) == 0);
  p.join();
  REQUIRE(relay_close(c) == 0);
  const std::string recorded = read_file(out.path("rec/live0"));
  const std::string rest = slurp(m.path("live0"));  // what the recording left in the channel
  CHECK(recorded.size() > 200000);
  CHECK(recorded.size() + rest.size() == p.written.size());
  CHECK(recorded + rest == p.written);
  const std::string index = read_file(out.path("rec/live.index"));
  check_index_covers(index, 0, recorded.size());
  CHECK(index_lines(index, "end").at(0).at(1) == "stopped");
  CHECK(index_lines(index, "lapped").empty());
  const std::string err = read_file(out.path("err"));
  CHECK(err.find("stopped") != std::string::npos);  // the summary line, off a terminal
  CHECK(std::count(err.begin(), err.end(), '\n') == 1);
}

TEST_CASE("record: runs until the channel closes, every CPU's buffer into its own file") {
  Mount m;
  TempDir out;
  const relay_options opts{RELAY_BLOCKING, 10000, nullptr};
  rchan_callbacks cb{};
  rchan* c = relay_open_opts("pc", m.dir.c_str(), 4096, 4, &cb, nullptr, &opts);  // per CPU
  REQUIRE(c != nullptr);
  const pid_t rec = spawn_relayctl({"record", m.path("pc"), out.path("rec")}, out.path("err"));
  // One writer pinned to each CPU, 30 sub-buffers' worth each, then close without a flush: the
  // last sub-buffer of each never closes and must still be recorded.
  std::vector<std::string> wrote(c->n_buffers);
  std::vector<std::thread> ts;
  std::atomic<int> pinned_fail{0};
  for (unsigned cpu = 0; cpu < c->n_buffers; ++cpu)
    ts.emplace_back([&, cpu] {
      if (!pin_to(cpu)) {
        ++pinned_fail;
        return;
      }
      for (int i = 0; i < 11000; ++i) {
        const std::string r = record(i + 1000000 * static_cast<int>(cpu));
        if (relay_write(c, r.data(), r.size()) == 0) wrote[cpu] += r;
      }
    });
  for (auto& t : ts) t.join();
  REQUIRE(pinned_fail == 0);
  REQUIRE(relay_close(c) == 0);
  CHECK(wait_exit(rec) == 0);
  const std::string index = read_file(out.path("rec/pc.index"));
  for (unsigned cpu = 0; cpu < wrote.size(); ++cpu) {
    CAPTURE(cpu);
    const std::string got = read_file(out.path("rec/pc" + std::to_string(cpu)));
    CHECK(got.size() == wrote[cpu].size());
    CHECK(got == wrote[cpu]);
    check_index_covers(index, cpu, got.size());
  }
  CHECK(index_lines(index, "tail").size() >= 1);  // the unflushed sub-buffers
  CHECK(index_lines(index, "end").at(0).at(1) == "closed");
  // The daemon wrote every sub-buffer from its io_uring fixed (registered) buffers.
  CHECK(index_lines(index, "end").at(0).at(2) == "io=fixed");
  CHECK(index_lines(index, "total").size() == wrote.size());
  const std::string err = read_file(out.path("err"));
  CHECK(err.find("channel closed") != std::string::npos);
  CHECK(err.find("fixed-buffer writes in the daemon") != std::string::npos);
  size_t total = 0;
  for (auto& w : wrote) total += w.size();
  CHECK(err.find(total < (1 << 20) ? " KiB in " : " MiB in ") != std::string::npos);  // not 0.0 MiB
}

TEST_CASE("record: what relayctl write wrote comes out as cat gives it") {
  Mount m;
  TempDir t;
  std::string input;
  for (int i = 0; i < 20000; ++i) input += "line " + std::to_string(i * 7919 % 100003) + "\n";
  write_file(t.path("in"), input);
  // write (blocking) and record run at once; record ends when write closes the channel.
  const Outcome o = relayctl("write -b -s 8K -n 4 " + m.path("w") + " <" + t.path("in") +
                             " & until [ -e " + m.path("w0") + " ]; do sleep 0.01; done; '" +
                             relayctl_path() + "' record -q " + m.path("w") + " " +
                             t.path("rec") + "; wait");
  CHECK(o.status == 0);
  CHECK(o.err.empty());  // -q, and nothing lost
  CHECK(read_file(t.path("rec/w0")) == input);
}

TEST_CASE("record: overwrite mode never keeps a lapped sub-buffer's bytes") {
  Mount m;
  TempDir out;
  const relay_options opts{RELAY_OVERWRITE, 0, nullptr};
  rchan* c = open_global(m.dir, "ow", 4096, 2, {}, &opts);
  std::atomic<bool> stop{false};
  std::thread writer([&] {  // flat out: laps a 2-sub-buffer ring constantly
    for (int i = 0; !stop; ++i) {
      const std::string r = record(i % 1000000);
      relay_write(c, r.data(), r.size());
    }
  });
  const pid_t rec = spawn_relayctl({"record", m.path("ow"), out.path("rec")}, out.path("err"));
  std::this_thread::sleep_for(1s);
  ::kill(rec, SIGINT);
  CHECK(wait_exit(rec) == 0);
  stop = true;
  writer.join();
  relay_close(c);
  // Whatever was recorded is whole records, each sub-buffer's in order: no torn or mixed bytes.
  const std::string got = read_file(out.path("rec/ow0"));
  CHECK(got.size() % kRec == 0);
  size_t bad = 0;
  for (size_t i = 0; i + kRec <= got.size(); i += kRec) {
    const std::string r = got.substr(i, kRec);
    if (r.compare(0, 4, "rec ") != 0 || r.back() != '\n') ++bad;
  }
  CHECK(bad == 0);
  const std::string index = read_file(out.path("rec/ow.index"));
  check_index_covers(index, 0, got.size());
  MESSAGE("overwrite: " << index_lines(index, "subbuf").size() << " sub-buffers kept, "
                        << index_lines(index, "lapped").size() << " lapped and taken back");
}

TEST_CASE("record: a full disk is a clear error, and the sub-buffer it failed on stays") {
  Mount m;
  TempDir t;
  REQUIRE(::mkdir(t.path("small").c_str(), 0755) == 0);
  if (::mount("tmpfs", t.path("small").c_str(), "tmpfs", 0, "size=64k") != 0) {
    MESSAGE("cannot mount a tmpfs (" << std::strerror(errno) << "): not tested");
    return;
  }
  struct Unmount {
    std::string dir;
    ~Unmount() { ::umount2(dir.c_str(), MNT_DETACH); }
  } unmount{t.path("small")};
  // 40 sub-buffers of 4 KiB, 160 KiB, all closed and waiting: more than the 64 KiB disk holds.
  rchan* c = open_global(m.dir, "full", 4096, 40);
  const std::string data = write_records(c, 0, 14500);
  REQUIRE(relay_flush(c) == 0);
  const Outcome o = relayctl("record " + m.path("full") + " " + t.path("small/rec"));
  CHECK(o.status == 1);
  CHECK(o.err.find(t.path("small/rec/full0") + ": write: " + std::strerror(ENOSPC)) !=
        std::string::npos);
  CHECK(o.err.find("failed") != std::string::npos);
  // Consumed: only sub-buffers that reached the disk whole; the rest is still in the channel.
  // Each sub-buffer holds 372 records (4092 bytes; 4 of padding).
  const unsigned long long consumed = num(getfattr(m.path("full0")), "subbufs_consumed") * 4092;
  const std::string recorded = read_file(t.path("small/rec/full0"));
  CHECK(consumed > 0);
  CHECK(consumed <= recorded.size());
  CHECK(recorded.compare(0, consumed, data, 0, consumed) == 0);
  REQUIRE(relay_close(c) == 0);
  const std::string rest = slurp(m.path("full0"));
  CHECK(consumed + rest.size() == data.size());
  CHECK(data.compare(consumed, std::string::npos, rest) == 0);
}

namespace {

// Does the file's filesystem do direct I/O (statx reports an alignment for regular files)?
bool direct_io_supported(const std::string& file) {
  struct statx sx {};
  return ::statx(AT_FDCWD, file.c_str(), 0, STATX_DIOALIGN, &sx) == 0 &&
         (sx.stx_mask & STATX_DIOALIGN) && sx.stx_dio_offset_align != 0;
}

// The value of key=VALUE in the index's "total" line for buffer 0.
std::string total_field(const std::string& index, const std::string& key) {
  for (const auto& w : index_lines(index, "total"))
    for (const auto& kv : w)
      if (kv.rfind(key + "=", 0) == 0) return kv.substr(key.size() + 1);
  return "";
}

}  // namespace

TEST_CASE("record: sub-buffers that records fill exactly go with O_DIRECT where the disk allows") {
  Mount m;
  TempDir out;
  // 16 records of 4 KiB fill each 64 KiB sub-buffer with no padding: offsets and lengths stay
  // aligned, and the mapping is page aligned.
  rchan* c = open_global(m.dir, "dio", 65536, 8);
  std::string data;
  for (int i = 0; i < 64; ++i) {
    std::string r(4096, static_cast<char>('A' + i % 26));
    REQUIRE(relay_write(c, r.data(), r.size()) == 0);
    data += r;
  }
  REQUIRE(relay_flush(c) == 0);
  REQUIRE(relay_close(c) == 0);  // still readable: 4 sub-buffers wait
  SUBCASE("by default") {
    const Outcome o = relayctl("record " + m.path("dio") + " " + out.path("rec"));
    REQUIRE(o.status == 0);
    const std::string index = read_file(out.path("rec/dio.index"));
    CHECK(total_field(index, "direct") == (direct_io_supported(out.path("rec/dio0")) ? "4" : "0"));
    CHECK(read_file(out.path("rec/dio0")) == data);
  }
  SUBCASE("--no-direct") {
    const Outcome o = relayctl("record --no-direct " + m.path("dio") + " " + out.path("rec"));
    REQUIRE(o.status == 0);
    CHECK(total_field(read_file(out.path("rec/dio.index")), "direct") == "0");
    CHECK(read_file(out.path("rec/dio0")) == data);
  }
}

TEST_CASE("record: on a terminal it shows live progress") {
  if (run("command -v script >/dev/null") != 0) {
    MESSAGE("script(1) is missing: not tested");
    return;
  }
  Mount m;
  TempDir out;
  const relay_options opts{RELAY_BLOCKING, 300, nullptr};
  rchan* c = open_global(m.dir, "tty", 4096, 4, {}, &opts);
  Producer p(c);
  // script(1) gives relayctl a terminal; SIGINT after 3 s.
  const std::string cmd = "timeout -s INT 3 '" + relayctl_path() + "' record " + m.path("tty") +
                          " " + out.path("rec");
  const std::string typescript =
      capture("script -qec \"" + cmd + "\" /dev/null </dev/null 2>&1");
  p.join();
  relay_close(c);
  // Progress lines redraw in place, every 0.5 s: at least one before the final summary, which
  // replaces the last (a loaded machine may start relayctl late).
  size_t redraws = 0;
  for (size_t at = 0; (at = typescript.find("\r\033[Krelayctl record:", at)) != std::string::npos;
       ++at)
    ++redraws;
  CHECK(redraws >= 2);
  CHECK(typescript.find("B/s, ") != std::string::npos);  // the rate, in B, KiB or MiB
  CHECK(typescript.find("stopped") != std::string::npos);
}
