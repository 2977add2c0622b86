// relayctl record: drains a channel to files on disk, one per buffer, plus an index, until
// SIGINT/SIGTERM or until the channel closes and is drained.
//
// Each buffer is mapped with the reader API (relay_reader_open); whole sub-buffers go to disk
// from the mapping through one io_uring (record_disk.h: fixed buffers where the kernel takes
// them, O_DIRECT where aligned) and each is consumed (relay_reader_consumed) only once its write
// completed. The reader API hands out one sub-buffer at a time per buffer, so each buffer has at
// most one write in flight; buffers proceed in parallel. The part of the last sub-buffer that
// never closed (the producer closed the channel without relay_flush) is taken at the end with
// read(2), the one copy through user space, so every file holds what `cat` of its buffer gives.
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <relayfs/relay.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "relayctl/record_disk.h"
#include "relayctl/relayctl.h"

namespace relayctl {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kHelp =
    "Usage: relayctl record [OPTIONS] PATH OUTDIR\n"
    "Drains channel PATH (DIR/BASE; or one buffer file) into OUTDIR: a file per buffer, named\n"
    "as the buffer's file (BASE0, BASE1, ...), holding exactly what cat of it would give, and\n"
    "BASE.index (sub-buffers, offsets, lengths, totals and loss counters). Runs until SIGINT or\n"
    "SIGTERM (in-flight writes finish first) or until the channel closes and is drained.\n"
    "\n"
    "  -D, --no-direct   never use O_DIRECT (default: where the filesystem and alignment allow)\n"
    "  -q, --quiet       no progress on a terminal and no summary line\n"
    "  -h, --help        this help\n";

constexpr int kProgressMs = 500;

// Completion tags: kind in the top byte, buffer number below.
enum Kind : uint64_t { kWrite = 1, kPoll = 2, kSignal = 3 };
uint64_t tag(Kind k, size_t i) {
  return (uint64_t{k} << 56) | i;
}

struct ReaderClose {
  void operator()(relay_reader* r) const { relay_reader_close(r); }
};

struct Buf {
  std::string src, name;  // the relay file and its name
  std::unique_ptr<relay_reader, ReaderClose> r;
  OutputFile out;
  uint64_t off = 0;          // bytes in the output file
  relay_subbuf sb{};         // the sub-buffer being written, while writing
  size_t written = 0;        // of it, so far (a short write continues)
  bool writing = false, polling = false, done = false;
  unsigned long long subbufs = 0, bytes = 0, lapped = 0, tail = 0, direct = 0;
};

struct Recorder {
  std::string path, outdir, base;
  std::vector<Buf> bufs;
  Ring ring;
  int fixed_err = 0;  // why the ring writes without fixed buffers (0: it uses them)
  FILE* index = nullptr;
  relayfs::core::UniqueFd sigfd;
  signalfd_siginfo siginfo{};
  bool stopping = false, failed = false;
  Clock::time_point t0 = Clock::now();

  ~Recorder() {
    if (index) std::fclose(index);
  }

  int fail(const std::string& p, const std::string& what, int err) {
    failed = true;
    return sys_error(p, what, err);
  }

  void submit_write(size_t i) {
    Buf& b = bufs[i];
    const char* addr = static_cast<const char*>(b.sb.data) + b.written;
    const size_t len = b.sb.length - b.written;
    const uint64_t off = b.off + b.written;
    const int fd = b.out.fd_for(off, addr, len);
    // The ring has room for a write and a poll per buffer and the signal read, so this only
    // fails if the kernel refuses a submission.
    if (!ring.write(tag(kWrite, i), fd, addr, len, off, static_cast<int>(i))) {
      fail(b.out.path(), "io_uring", EBUSY);
      return;
    }
    if (fd != b.out.buffered_fd()) ++b.direct;  // writes that went with O_DIRECT
    b.writing = true;
  }

  // Starts the next write of buffer i, or waits in a poll for a sub-buffer.
  void advance(size_t i) {
    Buf& b = bufs[i];
    while (!b.writing && !b.done && !stopping && !failed) {
      const int rc = relay_reader_next(b.r.get(), &b.sb);
      if (rc < 0) {
        fail(b.src, "reader", errno);
        return;
      }
      if (rc == 0) {
        if (!b.polling && !ring.poll(tag(kPoll, i), b.r->fd, POLLIN)) fail(b.src, "io_uring", EBUSY);
        b.polling = true;
        return;
      }
      b.written = 0;
      if (b.sb.length > 0) {
        submit_write(i);
        return;
      }
      finish_subbuf(i);  // nothing but padding: nothing to write
    }
  }

  // Buffer i's sub-buffer is on disk: keep it if the writer did not lap it meanwhile, then
  // consume it.
  void finish_subbuf(size_t i) {
    Buf& b = bufs[i];
    b.writing = false;
    if (relay_reader_valid(b.r.get(), &b.sb) == 1) {
      std::fprintf(index, "subbuf %u %llu %llu %zu\n", b.r->cpu, b.sb.seq,
                   static_cast<unsigned long long>(b.off), b.sb.length);
      b.off += b.sb.length;
      b.bytes += b.sb.length;
      ++b.subbufs;
    } else {
      // Overwrite mode: the writer reused the sub-buffer while it went to disk, so what was
      // written may mix two laps. Take it back.
      std::fprintf(index, "lapped %u %llu %llu %zu\n", b.r->cpu, b.sb.seq,
                   static_cast<unsigned long long>(b.off), b.sb.length);
      ++b.lapped;
      if (int err = b.out.truncate(b.off); err) {
        fail(b.out.path(), "truncate", err);
        return;
      }
    }
    if (relay_reader_consumed(b.r.get(), 1) != 0) fail(b.src, "consume", errno);
  }

  void on_write(size_t i, int res) {
    Buf& b = bufs[i];
    if (res == -EINTR || res == -EAGAIN) {
      submit_write(i);
      return;
    }
    if (res <= 0) {
      // Not consumed: the sub-buffer stays in the channel for another reader.
      b.writing = false;
      fail(b.out.path(), "write", res == 0 ? EIO : -res);
      return;
    }
    b.written += static_cast<size_t>(res);
    if (b.written < b.sb.length) {  // short: write the rest, which reports the error if any
      submit_write(i);
      return;
    }
    finish_subbuf(i);
    advance(i);
  }

  // The channel is closed and no whole sub-buffer is left: what remains is the committed part
  // of the sub-buffer that never closed, which only read(2) gives.
  void drain_tail(size_t i) {
    Buf& b = bufs[i];
    relayfs::core::UniqueFd fd(::open(b.src.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      if (errno != ENOENT) fail(b.src, "open", errno);  // ENOENT: drained and removed
      b.done = true;
      return;
    }
    std::vector<char> buf(1 << 20);
    for (;;) {
      const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        fail(b.src, "read", errno);
        break;
      }
      if (n == 0) break;
      const uint64_t at = b.off;
      for (ssize_t done = 0; done < n;) {
        const ssize_t w = ::pwrite(b.out.buffered_fd(), buf.data() + done,
                                   static_cast<size_t>(n - done), static_cast<off_t>(b.off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
          // The bytes were consumed by the read; say how many did not reach the disk.
          fail(b.out.path(), "write (" + std::to_string(n - done) + " bytes of the tail lost)",
               w == 0 ? EIO : errno);
          b.done = true;
          return;
        }
        done += w;
        b.off += static_cast<uint64_t>(w);
      }
      std::fprintf(index, "tail %u - %llu %zd\n", b.r->cpu, static_cast<unsigned long long>(at),
                   n);
      b.tail += static_cast<unsigned long long>(n);
    }
    b.done = true;
  }

  void on_poll(size_t i, int res) {
    Buf& b = bufs[i];
    b.polling = false;
    if (res < 0 && res != -EINTR) {
      fail(b.src, "poll", -res);
      return;
    }
    // POLLERR without POLLIN: the channel is finalized and no whole sub-buffer is left. One may
    // still have closed just before: advance takes it first.
    const bool closed = res > 0 && (res & (POLLERR | POLLHUP)) && !(res & POLLIN);
    advance(i);
    if (closed && !b.writing && !b.done && !stopping && !failed) drain_tail(i);
  }

  struct Totals {
    unsigned long long bytes = 0, subbufs = 0, lapped = 0, lost = 0, overruns = 0, direct = 0;
  };
  Totals totals() const {
    Totals t;
    for (const Buf& b : bufs) {
      t.bytes += b.bytes + b.tail;
      t.subbufs += b.subbufs;
      t.lapped += b.lapped;
      t.direct += b.direct;
      relay_stats st{};
      if (relay_reader_stats(b.r.get(), &st) == 0) {
        t.lost += st.lost_full + st.lost_too_big + st.lost_wrap;
        t.overruns += st.overruns;
      }
    }
    return t;
  }

  std::string progress_text() const {
    const Totals t = totals();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    char line[256];
    std::snprintf(line, sizeof line,
                  "%.1f MiB in %.1f s, %.1f MiB/s, %llu sub-buffers, lost %llu records, "
                  "%llu sub-buffers lapped, %llu overruns",
                  static_cast<double>(t.bytes) / (1 << 20), s,
                  s > 0 ? static_cast<double>(t.bytes) / (1 << 20) / s : 0.0, t.subbufs, t.lost,
                  t.lapped, t.overruns);
    return line;
  }

  void write_totals() {
    for (const Buf& b : bufs) {
      relay_stats st{};
      relay_reader_stats(b.r.get(), &st);
      std::fprintf(index,
                   "total %u %s bytes=%llu subbufs=%llu tail=%llu lapped=%llu direct=%llu "
                   "lost_full=%llu lost_too_big=%llu lost_wrap=%llu overruns=%llu "
                   "lost_uncommitted=%llu\n",
                   b.r->cpu, b.name.c_str(), b.bytes + b.tail, b.subbufs, b.tail, b.lapped,
                   b.direct, st.lost_full, st.lost_too_big, st.lost_wrap, st.overruns,
                   st.lost_uncommitted);
    }
    std::fprintf(index, "end %s io=%s\n", failed ? "error" : stopping ? "stopped" : "closed",
                 ring.fixed() ? "fixed" : "mapped");
  }
};

int parse(int argc, char** argv, bool* direct, bool* quiet, bool* help) {
  static const option kLong[] = {{"no-direct", no_argument, nullptr, 'D'},
                                 {"quiet", no_argument, nullptr, 'q'},
                                 {"help", no_argument, nullptr, 'h'},
                                 {nullptr, 0, nullptr, 0}};
  start_options();
  int c;
  while ((c = getopt_long(argc, argv, "Dqh", kLong, nullptr)) != -1) {
    switch (c) {
      case 'D': *direct = false; break;
      case 'q': *quiet = true; break;
      case 'h': *help = true; return kExitOk;
      default: return option_error("record", c, argv);
    }
  }
  if (argc - optind != 2)
    return usage_error("record", argc - optind < 2 ? "missing PATH or OUTDIR" : "too many arguments");
  return kExitOk;
}

// Opens the buffers of PATH, the output files and the index.
int setup(Recorder* rec, bool direct) {
  std::string dir;
  if (!split_path(rec->path, &dir, &rec->base))
    return usage_error("record", "'" + rec->path + "' does not name a channel (DIR/BASE)");
  std::vector<std::string> names = channel_buffers(dir, rec->base);
  if (names.empty()) {
    struct stat st;
    if (::stat(rec->path.c_str(), &st) != 0) return sys_error(rec->path, "", errno);
    names.push_back(rec->base);  // one buffer file
  }
  if (::mkdir(rec->outdir.c_str(), 0755) != 0 && errno != EEXIST)
    return sys_error(rec->outdir, "mkdir", errno);
  rec->bufs.resize(names.size());
  std::vector<iovec> maps;
  for (size_t i = 0; i < names.size(); ++i) {
    Buf& b = rec->bufs[i];
    b.name = names[i];
    b.src = dir + "/" + names[i];
    b.r.reset(relay_reader_open(b.src.c_str()));
    if (!b.r) return sys_error(b.src, "cannot map buffer", errno);
    if (int err = b.out.open(rec->outdir + "/" + names[i], direct); err)
      return sys_error(rec->outdir + "/" + names[i], "", err);
    maps.push_back({const_cast<void*>(b.r->base), b.r->n_subbufs * b.r->subbuf_size});
  }
  const std::string index = rec->outdir + "/" + rec->base + ".index";
  rec->index = std::fopen(index.c_str(), "w");
  if (!rec->index) return sys_error(index, "", errno);
  std::fprintf(rec->index, "# relayctl record %s: KIND BUFFER SEQ OFFSET LENGTH\n",
               rec->path.c_str());
  if (int rc = rec->ring.init(static_cast<unsigned>(2 * names.size() + 8)); rc < 0)
    return sys_error("io_uring", "", -rc);
  if (int rc = rec->ring.register_buffers(maps); rc < 0) rec->fixed_err = -rc;

  // SIGINT and SIGTERM arrive as reads on a signalfd in the ring: a stop is one more event.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  rec->sigfd.reset(::signalfd(-1, &set, SFD_CLOEXEC));
  if (!rec->sigfd) return sys_error("signalfd", "", errno);
  rec->ring.read(tag(kSignal, 0), rec->sigfd.get(), &rec->siginfo, sizeof rec->siginfo);
  return kExitOk;
}

}  // namespace

int cmd_record(int argc, char** argv) {
  bool direct = true, quiet = false, help = false;
  if (int rc = parse(argc, argv, &direct, &quiet, &help); rc != kExitOk || help) {
    if (help) std::fputs(kHelp, stdout);
    return rc;
  }
  Recorder rec;
  rec.path = argv[optind];
  rec.outdir = argv[optind + 1];
  if (int rc = setup(&rec, direct); rc != kExitOk) return rc;
  const bool live = !quiet && ::isatty(2);

  for (size_t i = 0; i < rec.bufs.size(); ++i) rec.advance(i);
  std::vector<std::pair<uint64_t, int>> done;
  auto last = Clock::now();
  for (;;) {
    bool busy = false, all_done = true;
    for (const Buf& b : rec.bufs) {
      busy |= b.writing;
      all_done &= b.done;
    }
    // Stopping or failed: wait for the writes in flight (a write the kernel has must not be
    // torn from its sub-buffer), then stop.
    if (!busy && (all_done || rec.stopping || rec.failed)) break;
    if (int rc = rec.ring.wait(live ? kProgressMs : -1, &done); rc < 0) {
      rec.fail("io_uring", "wait", -rc);
      break;
    }
    for (auto [t, res] : done) {
      const size_t i = t & ((uint64_t{1} << 56) - 1);
      switch (static_cast<Kind>(t >> 56)) {
        case kWrite: rec.on_write(i, res); break;
        case kPoll: rec.on_poll(i, res); break;
        case kSignal: rec.stopping = true; break;
      }
    }
    if (live && Clock::now() - last >= std::chrono::milliseconds(kProgressMs)) {
      last = Clock::now();
      std::fprintf(stderr, "\r\033[Krelayctl record: %s", rec.progress_text().c_str());
    }
  }
  rec.write_totals();
  if (std::fflush(rec.index) != 0) rec.fail(rec.outdir + "/" + rec.base + ".index", "write", errno);
  if (!quiet) {
    std::string io = rec.ring.fixed() ? "fixed-buffer writes"
                                      : std::string("writes from the mapping (fixed buffers: ") +
                                            std::strerror(rec.fixed_err) + ")";
    std::fprintf(stderr, "%srelayctl record: %s: %s; %s; %s\n", live ? "\r\033[K" : "",
                 rec.path.c_str(), rec.progress_text().c_str(), io.c_str(),
                 rec.failed ? "failed" : rec.stopping ? "stopped" : "channel closed");
  }
  return rec.failed ? kExitError : kExitOk;
}

}  // namespace relayctl
