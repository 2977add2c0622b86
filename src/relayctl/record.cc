// relayctl record: drains a channel to files on disk, one per buffer, plus an index, until
// SIGINT/SIGTERM or until the channel closes and is drained.
//
// The recording itself runs in the daemon (src/fs/record.cc), which holds every channel buffer
// registered with its io_uring: relayctl creates the output files and the index with its own
// permissions (exclusively, in a directory no other user controls: record_disk.h) and passes
// their descriptors over the control socket (kRecord), one request per buffer. The daemon writes
// whole sub-buffers, padding cut, with fixed-buffer writes straight from the registered buffer
// (O_DIRECT where the file and the write's alignment allow), appends an index line for each, and
// consumes a sub-buffer only once its write completed. At the end it writes the committed part
// of the sub-buffer that never closed, so every file holds what `cat` of its buffer gives.
// relayctl shows the daemon's progress events, turns a signal into kRecordStop (writes in flight
// finish first), and writes the totals once every buffer ended.
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "proto/protocol.h"
#include "proto/wire.h"
#include "relayctl/record_disk.h"
#include "relayctl/relayctl.h"

namespace relayctl {
namespace {

namespace proto = relayfs::proto;
using Clock = std::chrono::steady_clock;

constexpr const char* kHelp =
    "Usage: relayctl record [OPTIONS] PATH OUTDIR\n"
    "Drains channel PATH (DIR/BASE; or one buffer file) into OUTDIR: a file per buffer, named\n"
    "as the buffer's file (BASE0, BASE1, ...), holding exactly what cat of it would give, and\n"
    "BASE.index (sub-buffers, offsets, lengths, totals and loss counters). Runs until SIGINT or\n"
    "SIGTERM (in-flight writes finish first) or until the channel closes and is drained.\n"
    "The daemon does the writing, from its io_uring-registered buffers.\n"
    "Files are created, never overwritten: an existing one is an error. OUTDIR (created if\n"
    "missing) and every directory above it must belong to you or root and, unless sticky, be\n"
    "writable by no one else. Files get the relay file's mode less the umask. A refused\n"
    "recording leaves nothing behind.\n"
    "\n"
    "  -D, --no-direct   never use O_DIRECT (default: where the filesystem and alignment allow)\n"
    "  -q, --quiet       no progress on a terminal and no summary line\n"
    "  -h, --help        this help\n";

constexpr int kProgressMs = 500;

struct Buf {
  std::string src, name;  // the relay file and its name
  ino_t ino = 0;          // the relay file's, for the daemon
  mode_t mode = 0;        // its permission bits less the umask: the output file's
  OutputFile out;
  unsigned cpu = 0;
  bool started = false;
  bool got_end = false;       // the daemon's end event came: last holds the final totals
  proto::RecordEvent last{};  // the daemon's latest totals for it
};

struct Recorder {
  std::string path, outdir, base, index_path;
  OutputDir dir;
  std::vector<Buf> bufs;
  relayfs::core::UniqueFd sock, index, sigfd;
  uint32_t seq = 1;
  bool fixed = true;  // every buffer is written from fixed buffers
  bool stopping = false, failed = false;
  bool lost = false;  // the connection to the daemon failed
  Clock::time_point t0 = Clock::now();

  // Reports a failure of the recording (err: -errno); returns kExitError.
  int fail(const std::string& p, const std::string& what, int err) {
    failed = true;
    return sys_error(p, what, err);
  }

  // A kRecordEvent: the buffer's new totals; at its end, why it ended.
  void on_event(const proto::RecordEvent& ev) {
    if (ev.cookie >= bufs.size()) return;
    Buf& b = bufs[ev.cookie];
    b.last = ev;
    if (ev.kind != proto::RecordKind::kEnd) return;
    b.got_end = true;
    if (ev.ended_by == proto::kEndFailed) fail(b.out.path(), "write", ev.status);
    if (ev.ended_by == proto::kEndIndexFailed) fail(index_path, "write", ev.status);
  }

  // Receives one message into *m. Returns 0, or -errno once the connection failed (reported;
  // -ECONNRESET when the daemon hung up).
  int receive(proto::Received* m) {
    const int rc = proto::recv_message(sock.get(), m);
    if (rc == 1) {
      if (static_cast<proto::Type>(m->header.type) == proto::Type::kRecordEvent) {
        proto::RecordEvent ev;
        if (proto::decode(m->payload.data(), m->payload.size(), &ev) == 0) on_event(ev);
      }
      return 0;
    }
    const int err = rc == 0 ? -ECONNRESET : rc;
    fail(path, "connection to the daemon", err);
    lost = true;  // nothing more will come
    return err;
  }

  // Asks the daemon to record buffer i; returns 0 or -errno (reported).
  int start(size_t i) {
    Buf& b = bufs[i];
    const bool direct = b.out.direct_fd() >= 0;
    const proto::RecordRequest req{static_cast<uint64_t>(b.ino), static_cast<uint32_t>(i),
                                   direct ? b.out.mem_align() : 0, direct ? b.out.off_align() : 0};
    const int fds[3] = {b.out.buffered_fd(), index.get(), b.out.direct_fd()};
    const uint32_t my_seq = seq++;
    if (int rc = proto::send_message(sock.get(), proto::encode(req, my_seq), fds, direct ? 3 : 2))
      return report(path, "connection to the daemon", proto::send_failure(sock.get(), rc));
    // Events of the buffers started before may come first.
    for (;;) {
      proto::Received m;
      if (int rc = receive(&m); rc) return rc;
      // The daemon refused the connection itself (a limit, relayfs(8)): it says so unasked.
      proto::Status st;
      if (static_cast<proto::Type>(m.header.type) == proto::Type::kError && m.header.seq == 0 &&
          proto::decode(m.payload.data(), m.payload.size(), &st) == 0 && st.status < 0) {
        lost = true;  // it hangs up next
        return report(b.src, "cannot record", st.status);
      }
      if (m.header.seq != my_seq) continue;
      proto::RecordReply reply;
      if (static_cast<proto::Type>(m.header.type) != proto::Type::kRecordReply ||
          proto::decode(m.payload.data(), m.payload.size(), &reply) != 0)
        return report(b.src, "cannot record", -EPROTO);
      if (reply.status < 0) return report(b.src, "cannot record", reply.status);
      b.started = true;
      b.cpu = reply.buffer;
      fixed = fixed && reply.fixed;
      return 0;
    }
  }

  void stop() {
    if (stopping) return;
    stopping = true;
    proto::send_message(sock.get(), proto::encode_status(proto::Type::kRecordStop, {0}, seq++));
  }

  bool all_ended() const {
    if (lost) return true;
    for (const Buf& b : bufs)
      if (b.started && !b.got_end) return false;
    return true;
  }

  struct Totals {
    unsigned long long bytes = 0, subbufs = 0, lapped = 0, lost = 0, overruns = 0, direct = 0;
  };
  Totals totals() const {
    Totals t;
    for (const Buf& b : bufs) {
      t.bytes += b.last.bytes;
      t.subbufs += b.last.subbufs;
      t.lapped += b.last.lapped;
      t.direct += b.last.direct;
#define RELAYCTL_ADD_LOST(name, what) t.lost += b.last.name;
      RELAYFS_LOST_RECORD_COUNTERS(RELAYCTL_ADD_LOST)
#undef RELAYCTL_ADD_LOST
      t.overruns += b.last.overruns;
    }
    return t;
  }

  // "12.3 MiB", "45.6 KiB" or "789 B": small recordings do not show as 0.0 MiB.
  static std::string amount(double bytes) {
    char out[32];
    if (bytes >= 1 << 20)
      std::snprintf(out, sizeof out, "%.1f MiB", bytes / (1 << 20));
    else if (bytes >= 1 << 10)
      std::snprintf(out, sizeof out, "%.1f KiB", bytes / (1 << 10));
    else
      std::snprintf(out, sizeof out, "%.0f B", bytes);
    return out;
  }

  std::string progress_text() const {
    const Totals t = totals();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    const double b = static_cast<double>(t.bytes);
    char line[256];
    std::snprintf(line, sizeof line,
                  "%s in %.1f s, %s/s, %llu sub-buffers, lost %llu records, "
                  "%llu sub-buffers lapped, %llu overruns",
                  amount(b).c_str(), s, amount(s > 0 ? b / s : 0.0).c_str(), t.subbufs, t.lost,
                  t.lapped, t.overruns);
    return line;
  }

  bool closed() const {
    for (const Buf& b : bufs)
      if (!b.started || b.last.ended_by != proto::kEndClosed) return false;
    return true;
  }

  // Cuts each output file to what the daemon kept: a lapped sub-buffer's bytes, or those of a
  // failed write, may lie past it (the daemon writes the next sub-buffer over them).
  void cut_outputs() {
    for (const Buf& b : bufs)  // without the end event the totals may be stale: keep all
      if (b.got_end && ::ftruncate(b.out.buffered_fd(), static_cast<off_t>(b.last.bytes)) != 0)
        fail(b.out.path(), "truncate", -errno);
  }

  // Whether any output file holds a byte (after cut_outputs).
  bool recorded_any() const {
    for (const Buf& b : bufs) {
      struct stat st;
      if (::fstat(b.out.buffered_fd(), &st) != 0 || st.st_size > 0) return true;
    }
    return false;
  }

  // A line per buffer: what was written, then the loss counters the events carry.
  void write_totals() {
    for (const Buf& b : bufs) {
      const proto::RecordEvent& e = b.last;
      std::string line = "total " + std::to_string(b.cpu) + " " + b.name;
      auto add = [&](const char* name, uint64_t v) {
        line.append(" ").append(name).append("=").append(std::to_string(v));
      };
      add("bytes", e.bytes);
      add("subbufs", e.subbufs);
      add("tail", e.tail);
      add("lapped", e.lapped);
      add("direct", e.direct);
#define RELAYCTL_ADD_COUNTER(name, what) add(#name, e.name);
      RELAYFS_LOSS_COUNTERS(RELAYCTL_ADD_COUNTER)
#undef RELAYCTL_ADD_COUNTER
      ::dprintf(index.get(), "%s\n", line.c_str());
    }
    if (::dprintf(index.get(), "end %s io=%s\n", outcome(), fixed ? "fixed" : "write") < 0)
      fail(index_path, "write", -errno);
  }

  const char* outcome() const { return failed ? "error" : closed() ? "closed" : "stopped"; }
};

// The options and arguments (argv[optind], argv[optind + 1]: PATH, OUTDIR). Returns an exit
// status: kExitOk, or kExitUsage with the error reported.
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

// relayctl's message for an output file it could not create (err: -errno); returns kExitError.
int create_error(const std::string& path, int err) {
  if (err != -EEXIST) return sys_error(path, "", err);
  note(path + ": " + std::strerror(-err) +
       "; relayctl record never overwrites: remove it or choose another OUTDIR");
  return kExitError;
}

// Finds the buffers, connects to the daemon, opens OUTDIR (OutputDir: nobody else may control
// it) and creates the output files and the index in it, and blocks the stop signals into a
// signalfd. Returns an exit status, failures reported; on failure the caller discards what was
// created.
int setup(Recorder* rec, bool direct) {
  std::string dir;
  if (!split_path(rec->path, &dir, &rec->base))
    return usage_error("record", "'" + rec->path + "' does not name a channel (DIR/BASE)");
  bool denied = false;
  std::vector<std::string> names = channel_buffers(dir, rec->base, &denied);
  if (denied) return sys_error(rec->path, "", -EACCES);
  if (names.empty()) {
    struct stat st;
    if (::stat(rec->path.c_str(), &st) != 0) return sys_error(rec->path, "", -errno);
    names.push_back(rec->base);  // one buffer file
  }
  // Each output gets its relay file's permission bits less the umask, as cp(1) gives a copy:
  // a recording is no more readable than its channel. The index, which describes them all,
  // gets what every one of them allows.
  const mode_t mask = ::umask(0);
  ::umask(mask);
  mode_t index_mode = 0777;
  rec->bufs.resize(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    Buf& b = rec->bufs[i];
    b.name = names[i];
    b.src = dir + "/" + names[i];
    struct stat st;
    if (::stat(b.src.c_str(), &st) != 0) return sys_error(b.src, "", -errno);
    b.ino = st.st_ino;
    b.mode = st.st_mode & 0777 & ~mask;
    index_mode &= b.mode;
  }
  if (int rc = relayfs::proto::connect_control(dir.c_str(), 30, &rec->sock); rc)
    return sys_error(dir, rc == -ENOTSUP ? "not a relayfs directory" : "cannot reach the daemon",
                     rc);
  OutputDir::Refusal why;
  if (int rc = rec->dir.open(rec->outdir, &why); rc) {
    if (why.controlled.empty()) return sys_error(why.path, why.what, rc);
    note(why.path + ": " + why.controlled +
         ": another user controls it; choose another OUTDIR (relayctl(1), record)");
    return kExitError;
  }
  for (Buf& b : rec->bufs) {
    const std::string out = rec->outdir + "/" + b.name;
    if (int rc = b.out.open(rec->dir, b.name, out, direct, b.mode); rc)
      return create_error(out, rc);
  }
  // O_APPEND: the daemon appends a line per sub-buffer, relayctl the header and the totals.
  rec->index_path = rec->outdir + "/" + rec->base + ".index";
  if (int rc = rec->dir.create(rec->base + ".index", O_APPEND, &rec->index); rc)
    return create_error(rec->index_path, rc);
  if (::fchmod(rec->index.get(), index_mode) != 0)
    return sys_error(rec->index_path, "chmod", -errno);
  if (::dprintf(rec->index.get(), "# relayctl record %s: KIND BUFFER SEQ OFFSET LENGTH\n",
                rec->path.c_str()) < 0)
    return sys_error(rec->index_path, "write", -errno);

  // SIGINT and SIGTERM arrive as reads on a signalfd: a stop is one more event to poll for.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  rec->sigfd.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!rec->sigfd) return sys_error("signalfd", "", -errno);
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
  if (int rc = setup(&rec, direct); rc != kExitOk) {
    rec.dir.discard();  // refused before anything was recorded: leave nothing behind
    return rc;
  }
  const bool live = !quiet && ::isatty(2);

  bool refused = false;
  for (size_t i = 0; i < rec.bufs.size() && !refused; ++i) refused = rec.start(i) != 0;
  if (refused) rec.stop();  // end the buffers that did start, and report nothing more

  auto last = Clock::now();
  while (!rec.all_ended()) {
    pollfd p[2] = {{rec.sock.get(), POLLIN, 0}, {rec.sigfd.get(), POLLIN, 0}};
    const int n = ::poll(p, 2, live ? kProgressMs : -1);
    if (n < 0 && errno != EINTR) {
      rec.fail("poll", "", -errno);
      break;
    }
    if (n > 0 && (p[1].revents & POLLIN)) {
      signalfd_siginfo si;
      while (::read(rec.sigfd.get(), &si, sizeof si) == sizeof si) {
      }
      rec.stop();
    }
    if (n > 0 && p[0].revents) {
      proto::Received m;
      if (rec.receive(&m) != 0) break;
    }
    if (live && Clock::now() - last >= std::chrono::milliseconds(kProgressMs)) {
      last = Clock::now();
      std::fprintf(stderr, "\r\033[Krelayctl record: %s", rec.progress_text().c_str());
    }
  }
  rec.cut_outputs();
  if (refused) {
    // The daemon refused a buffer (EACCES, EBUSY, ...). If nothing reached the disk, this run
    // leaves nothing behind; if a buffer started before did record something, that was consumed
    // from the channel and is kept, with its totals, as a failed recording.
    if (!rec.recorded_any()) {
      rec.dir.discard();
      return kExitError;
    }
    rec.failed = true;
  }
  rec.write_totals();
  if (!quiet) {
    const char* io = rec.fixed ? "fixed-buffer writes in the daemon"
                               : "writes from the mapping in the daemon (no fixed buffers)";
    std::fprintf(stderr, "%srelayctl record: %s: %s; %s; %s\n", live ? "\r\033[K" : "",
                 rec.path.c_str(), rec.progress_text().c_str(), io,
                 rec.failed ? "failed" : rec.closed() ? "channel closed" : "stopped");
  }
  return rec.failed ? kExitError : kExitOk;
}

}  // namespace relayctl
