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
#include "proto/record_state.h"
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
    "Files are created, never overwritten: an existing one is an error, unless --resume. OUTDIR\n"
    "(created if missing) and every directory above it must belong to you or root and, unless\n"
    "sticky, be writable by no one else. Files get the relay file's mode less the umask. A\n"
    "refused recording leaves nothing behind. Each file's BASEn.state says where it stands in\n"
    "the buffer's stream.\n"
    "\n"
    "  -a, --resume      go on with the recording in OUTDIR where it stopped (a daemon that died\n"
    "                    and was mounted again, a stop): no byte missed, none twice. Starts one\n"
    "                    if OUTDIR holds none\n"
    "  -D, --no-direct   never use O_DIRECT (default: where the filesystem and alignment allow)\n"
    "  -q, --quiet       no progress on a terminal and no summary line\n"
    "  -h, --help        this help\n";

constexpr int kProgressMs = 500;

struct Buf {
  std::string src, name;  // the relay file and its name
  ino_t ino = 0;          // the relay file's, for the daemon
  mode_t mode = 0;        // its permission bits less the umask: the output file's
  OutputFile out;
  relayfs::core::UniqueFd state;  // NAME.state, which the daemon keeps up to date
  std::string state_path;
  bool resume = false;            // goes on from `from` (the state an earlier run left)
  relayfs::proto::RecordState from{};
  uint64_t base = 0;              // bytes of the output before this run
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
  bool resume = false;  // --resume
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
    if (ev.ended_by == proto::kEndStateFailed) fail(b.state_path, "write", ev.status);
    if (ev.ended_by == proto::kEndResumeFailed) {
      failed = true;
      note(b.out.path() + ": cannot resume: " +
           (ev.status == -ESTALE ? std::string("the writer lapped the recording's end (overwrite "
                                               "mode): what of it the output holds is not known")
                                 : std::strerror(-ev.status)));
    }
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
    failed = true;
    lost = true;  // nothing more will come
    if (err == -ECONNRESET || err == -EPIPE) {
      // The daemon died, or its mount was detached: what reached OUTDIR stays, and each file's
      // state says where it ends in the stream.
      note(path + ": the relayfs daemon went away during the recording (it was killed, or its "
           "mount detached); " + outdir + " keeps what was recorded. Once relayfs is mounted "
           "again and the producer is back, 'relayctl record --resume " + path + " " + outdir +
           "' goes on where it stopped");
      return err;
    }
    fail(path, "connection to the daemon", err);
    return err;
  }

  // Asks the daemon to record buffer i; returns 0 or -errno (reported).
  int start(size_t i) {
    Buf& b = bufs[i];
    const bool direct = b.out.direct_fd() >= 0;
    proto::RecordRequest req{static_cast<uint64_t>(b.ino), static_cast<uint32_t>(i),
                             direct ? b.out.mem_align() : 0, direct ? b.out.off_align() : 0};
    req.flags = proto::kRecordState;
    if (b.resume) {
      req.flags |= proto::kRecordResume;
      req.offset = b.base;
      req.stream = b.from.stream;
      req.position = b.from.position;
    }
    const int fds[4] = {b.out.buffered_fd(), index.get(), b.state.get(), b.out.direct_fd()};
    const uint32_t my_seq = seq++;
    if (int rc = proto::send_message(sock.get(), proto::encode(req, my_seq), fds, direct ? 4 : 3))
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
      // A request the daemon could not take (no room for its descriptors: EMFILE) is answered
      // with kError, and the connection goes on.
      if (static_cast<proto::Type>(m.header.type) == proto::Type::kError &&
          proto::decode(m.payload.data(), m.payload.size(), &st) == 0 && st.status < 0)
        return report(b.src, "cannot record", st.status);
      proto::RecordReply reply;
      if (static_cast<proto::Type>(m.header.type) != proto::Type::kRecordReply ||
          proto::decode(m.payload.data(), m.payload.size(), &reply) != 0)
        return report(b.src, "cannot record", -EPROTO);
      if (reply.status == -ESTALE && b.resume) {
        note(b.state_path + ": the recording is of another buffer than " + b.src +
             " (its channel was opened anew): cannot resume; record into another OUTDIR");
        return reply.status;
      }
      if (reply.status == -ERANGE && b.resume) {
        note(b.state_path + ": the recording is ahead of " + b.src + " (position " +
             std::to_string(b.from.position) + ", more than the buffer ever held): cannot resume");
        return reply.status;
      }
      if (reply.status < 0) return report(b.src, "cannot record", reply.status);
      if (b.resume && reply.position > b.from.position)
        note(b.src + ": " + std::to_string(reply.position - b.from.position) +
             " bytes of its stream are not in the recording: read by another reader, or lost "
             "and counted, while it was interrupted (the index's resume line says where)");
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

  std::string progress_text() const {
    const Totals t = totals();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    const double b = static_cast<double>(t.bytes);
    char line[256];
    std::snprintf(line, sizeof line,
                  "%s, %llu sub-buffers, lost %llu records, %llu sub-buffers lapped, "
                  "%llu overruns",
                  amount_and_rate(b, s).c_str(), t.subbufs, t.lost, t.lapped, t.overruns);
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
      if (b.got_end &&
          ::ftruncate(b.out.buffered_fd(), static_cast<off_t>(b.base + b.last.bytes)) != 0)
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
int parse(int argc, char** argv, bool* direct, bool* quiet, bool* help, bool* resume) {
  static const option kLong[] = {{"resume", no_argument, nullptr, 'a'},
                                 {"no-direct", no_argument, nullptr, 'D'},
                                 {"quiet", no_argument, nullptr, 'q'},
                                 {"help", no_argument, nullptr, 'h'},
                                 {nullptr, 0, nullptr, 0}};
  start_options();
  int c;
  while ((c = getopt_long(argc, argv, "aDqh", kLong, nullptr)) != -1) {
    switch (c) {
      case 'a': *resume = true; break;
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

// relayctl's message for a file of an earlier recording it may not go on with (err: -errno,
// from OutputDir::reopen); returns kExitError.
int reopen_error(const std::string& path, int err) {
  switch (err) {
    case -ELOOP: note(path + ": a symbolic link: cannot resume; choose another OUTDIR"); break;
    case -EPERM: note(path + ": another user's file: cannot resume; choose another OUTDIR"); break;
    case -EINVAL:
      note(path + ": not a regular file with one link: cannot resume; choose another OUTDIR");
      break;
    default: return sys_error(path, "cannot resume", err);
  }
  return kExitError;
}

// Opens buffer b's output and its state: new ones, or with --resume the ones an earlier run left
// (then b.resume, b.from and b.base say where to go on; the output is cut to what its state
// says is the recording). Returns an exit status, failures reported.
int open_output(Recorder* rec, Buf& b, bool direct) {
  const std::string out = rec->outdir + "/" + b.name;
  const std::string state_name = b.name + ".state";
  b.state_path = out + ".state";
  bool existing = false;
  if (rec->resume) {
    const int rc = rec->dir.reopen(state_name, O_RDWR, &b.state);
    if (rc != 0 && rc != -ENOENT) return reopen_error(b.state_path, rc);
    existing = rc == 0;
    struct stat st;
    if (!existing && ::fstatat(rec->dir.fd(), b.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
      note(out + ": exists without " + state_name +
           ": not a recording relayctl record --resume can go on with; choose another OUTDIR");
      return kExitError;
    }
  }
  if (int rc = b.out.open(rec->dir, b.name, out, direct, b.mode, existing); rc)
    return existing ? reopen_error(out, rc) : create_error(out, rc);
  if (!existing) {
    if (int rc = rec->dir.create(state_name, 0, &b.state); rc)
      return create_error(b.state_path, rc);
    return kExitOk;
  }
  char text[relayfs::proto::kRecordStateSize + 1];
  const ssize_t n = ::pread(b.state.get(), text, sizeof text, 0);
  if (n < 0) return sys_error(b.state_path, "read", -errno);
  const int rc = relayfs::proto::parse_record_state(text, static_cast<size_t>(n), &b.from);
  uint64_t offset = 0;  // an empty state: the daemon never got to keep a byte
  if (rc == 0) {
    if (!b.from.exact) {
      note(b.state_path + ": the writer lapped the recording's end (overwrite mode), so where "
           "it stands in the stream is not known: cannot resume; record into another OUTDIR");
      return kExitError;
    }
    offset = b.from.offset;
    b.resume = true;
  } else if (rc != -ENODATA) {
    note(b.state_path + ": not a state relayctl record wrote (damaged, or changed since): "
         "cannot resume; record into another OUTDIR");
    return kExitError;
  }
  struct stat st;
  if (::fstat(b.out.buffered_fd(), &st) != 0) return sys_error(out, "", -errno);
  if (static_cast<uint64_t>(st.st_size) < offset) {
    note(out + ": " + std::to_string(st.st_size) + " bytes, shorter than the " +
         std::to_string(offset) + " its state says it holds (changed since): cannot resume");
    return kExitError;
  }
  // What lies past the state's offset is not part of the recording: a write whose extent the
  // daemon did not live to consume (delivered again, and written again from the offset).
  if (::ftruncate(b.out.buffered_fd(), static_cast<off_t>(offset)) != 0)
    return sys_error(out, "truncate", -errno);
  b.base = offset;
  return kExitOk;
}

// The bytes of buffer `buffer`'s output that the index describes: the end of its last subbuf,
// tail or unindexed line (they follow one another from 0).
uint64_t indexed_end(const std::string& index, uint32_t buffer) {
  uint64_t end = 0;
  size_t at = 0;
  while (at < index.size()) {
    size_t nl = index.find('\n', at);
    if (nl == std::string::npos) nl = index.size();
    char kind[16];
    unsigned b;
    unsigned long long off, len;
    const std::string line = index.substr(at, nl - at);
    if (std::sscanf(line.c_str(), "%15s %u %*s %llu %llu", kind, &b, &off, &len) == 4 &&
        b == buffer &&
        (!std::strcmp(kind, "subbuf") || !std::strcmp(kind, "tail") ||
         !std::strcmp(kind, "unindexed")))
      end = std::max<uint64_t>(end, off + len);
    at = nl + 1;
  }
  return end;
}

// Opens the index: a new one, or with --resume the one an earlier run left, which gets an
// `unindexed` line for the bytes of each output that the daemon which died kept but did not
// get to describe (its index lines come after the state). Returns an exit status.
int open_index(Recorder* rec, mode_t index_mode) {
  const std::string name = rec->base + ".index";
  rec->index_path = rec->outdir + "/" + name;
  bool existing = false;
  if (rec->resume) {
    const int rc = rec->dir.reopen(name, O_RDWR | O_APPEND, &rec->index);
    if (rc != 0 && rc != -ENOENT) return reopen_error(rec->index_path, rc);
    existing = rc == 0;
  }
  // O_APPEND: the daemon appends a line per sub-buffer, relayctl the header and the totals.
  if (!existing) {
    if (int rc = rec->dir.create(name, O_APPEND, &rec->index); rc)
      return create_error(rec->index_path, rc);
    if (::fchmod(rec->index.get(), index_mode) != 0)
      return sys_error(rec->index_path, "chmod", -errno);
  }
  std::string text;
  if (existing) {
    char chunk[65536];
    for (off_t at = 0;;) {
      const ssize_t n = ::pread(rec->index.get(), chunk, sizeof chunk, at);
      if (n < 0) return sys_error(rec->index_path, "read", -errno);
      if (n == 0) break;
      text.append(chunk, static_cast<size_t>(n));
      at += n;
    }
  }
  std::string head = "# relayctl record " + std::string(rec->resume ? "--resume " : "") +
                     rec->path + ": KIND BUFFER SEQ OFFSET LENGTH\n";
  for (const Buf& b : rec->bufs) {
    if (!b.resume) continue;
    const uint64_t indexed = indexed_end(text, b.from.buffer);
    if (indexed < b.base)
      head += "unindexed " + std::to_string(b.from.buffer) + " - " + std::to_string(indexed) +
              " " + std::to_string(b.base - indexed) + "\n";
  }
  if (::write(rec->index.get(), head.data(), head.size()) != static_cast<ssize_t>(head.size()))
    return sys_error(rec->index_path, "write", -errno);
  return kExitOk;
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
  for (Buf& b : rec->bufs)
    if (int rc = open_output(rec, b, direct); rc != kExitOk) return rc;
  if (int rc = open_index(rec, index_mode); rc != kExitOk) return rc;

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
  bool direct = true, quiet = false, help = false, resume = false;
  if (int rc = parse(argc, argv, &direct, &quiet, &help, &resume); rc != kExitOk || help) {
    if (help) std::fputs(kHelp, stdout);
    return rc;
  }
  Recorder rec;
  rec.path = argv[optind];
  rec.outdir = argv[optind + 1];
  rec.resume = resume;
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
