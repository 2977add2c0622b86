// relayctl ship: carries a channel, or every channel under a directory, to a NATS JetStream
// stream: one message per sub-buffer, and a sub-buffer is consumed only once JetStream
// acknowledged it and every earlier one of its buffer (relayctl(1), SHIP, has the message
// contract).
//
// Where it reads: through the mmap reader API (relay_reader_open, relay_reader_next,
// relay_reader_peek, relay_reader_consumed), not through the daemon's read(2). A read(2)
// consumes what it returns, so a ship killed between the read and JetStream's acknowledgement
// would lose it; an mmap reader consumes only when it says so, so the buffer itself holds what
// is in flight, and a ship started again after a SIGKILL finds it there and sends it again
// under the same message ids (JetStream drops the copies that had arrived). It also costs no
// copy before nats.c's own (natsMsg_Create copies from the mapping) and no FUSE round trip per
// sub-buffer: doc/performance.md has the measurement.
//
// Threads: the main thread reads, publishes and consumes; nats.c's thread calls on_ack, which
// only marks the message's entry and wakes the main thread through an eventfd.
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <relayfs/relay.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/fd.h"
#include "core/stats.h"
#include "proto/names.h"
#include "relayctl/nats_conn.h"
#include "relayctl/relayctl.h"

namespace relayctl {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr const char* kHelp =
    "Usage: relayctl ship [OPTIONS] PATH URL[,URL...]\n"
    "Carries channel PATH (DIR/BASE), or every channel under directory PATH (channels created\n"
    "later included), to the NATS JetStream servers at URL: one message per sub-buffer, on\n"
    "subject PREFIX.CPU, holding what read(2) would give of it. A sub-buffer is consumed only\n"
    "once JetStream acknowledged it; killed and started again, ship sends what was not\n"
    "acknowledged again under the same message ids, which JetStream's duplicate window drops.\n"
    "Runs until the channel closes and everything is acknowledged, or until SIGINT or SIGTERM\n"
    "(what is in flight is waited for). The message contract is in relayctl(1).\n"
    "\n"
    "  -s, --stream NAME     the stream (default RELAYFS), created if missing, with\n"
    "                        subjects FIRST.> (FIRST: the prefix's first token)\n"
    "  -r, --replicas N      its replicas when created (default 1)\n"
    "  -n, --no-create       fail if the stream does not exist\n"
    "  -S, --subject PREFIX  subject prefix (default relayfs.HOST.CHANNEL, the channel's path\n"
    "                        in the mount with dots for slashes; for a directory PATH, each\n"
    "                        channel's path below PATH is added to a PREFIX given)\n"
    "  -w, --window N        messages in flight per buffer (default 32, at most 1024)\n"
    "  -q, --quiet           no progress on a terminal and no summary line\n"
    "  -h, --help            this help\n";

constexpr long long kWindowDefault = 32;
constexpr int64_t kAckWaitMs = 5000;  // a publish not acknowledged by then is sent again
constexpr auto kRetryPause = 250ms;   // after a failure, before sending again
constexpr auto kStopGrace = 30s;      // after a signal, how long what is in flight may take
constexpr auto kRescan = 1s;          // a directory PATH: how often to look for new channels
constexpr auto kProgress = 500ms;
constexpr int64_t kDupWindowNs = 120LL * 1000 * 1000 * 1000;  // 2 minutes
constexpr int kMaxDepth = 32;

struct Options {
  std::string path, stream = "RELAYFS", subject;
  long long replicas = 1, window = kWindowDefault;
  bool no_create = false, quiet = false, help = false;
  nats::ConnectOptions conn;
};

// A message published and not settled yet.
struct Entry {
  uint64_t seq = 0;
  uint32_t len = 0;
  enum State { kSent, kAcked, kFailed } state = kSent;
  bool duplicate = false;  // JetStream had it already (sent by a run that was killed)
  natsStatus err = NATS_OK;
  int code = 0;  // JetStream's error code, when the server refused it
};

struct Buf {
  std::string file;     // the relay file
  std::string channel;  // the channel's path in the mount ("app/log"): Relayfs-Channel
  std::string subject;  // PREFIX.<cpu>
  ino_t ino = 0;        // the relay file's, to know it again when rescanning
  relay_reader* r = nullptr;
  bool overwrite = false;
  bool started = false;  // relay_reader_next gave the first position
  bool ended = false;    // drained and finalized, nothing in flight: the reader is closed
  uint64_t pos = 0;      // the first sub-buffer not consumed, as far as this run moved it
  uint64_t next = 0;     // the next sub-buffer to publish
  std::deque<Entry> inflight;  // in seq order; guarded by Shipper::mu
  Clock::time_point retry_at{};
  unsigned long long bytes = 0, msgs = 0, resent = 0, lapped = 0, duplicates = 0;
  relay_stats last{};  // the buffer's counters when it ended
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() {
    if (r) relay_reader_close(r);
  }
};

struct Shipper {
  Options opt;
  std::string host, boot;
  std::string mount_root;  // where the relayfs that holds PATH is mounted
  std::string top;         // a directory PATH, relative to the mount root ("" for the root)
  bool dir_mode = false;
  std::vector<std::string> stream_subjects;
  std::list<std::unique_ptr<Buf>> bufs;
  std::mutex mu;  // the entries' states, which on_ack sets from nats.c's thread
  std::map<natsMsg*, std::pair<Buf*, uint64_t>> sent;  // guarded by mu
  relayfs::core::UniqueFd wake, sigfd;
  bool stopping = false, failed = false;
  Clock::time_point t0 = Clock::now(), stop_deadline{};
  std::string waiting;  // the latest transient failure, while it lasts
  std::vector<std::string> skipped;  // channels a directory run cannot ship (said once)
  // Last, so that it goes first: closing the connection ends nats.c's thread, whose on_ack
  // touches the members above.
  nats::Connection nc;

  int fail(const std::string& what) {
    note(what);
    failed = true;
    return kExitError;
  }

  // nats.c's thread: JetStream's answer for msg, or the library's timeout.
  static void on_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
    auto* self = static_cast<Shipper*>(closure);
    {
      std::lock_guard lk(self->mu);
      if (auto it = self->sent.find(msg); it != self->sent.end()) {
        for (Entry& e : it->second.first->inflight) {
          if (e.seq != it->second.second) continue;
          if (pa) {
            e.state = Entry::kAcked;
            e.duplicate = pa->Duplicate;
          } else {
            e.state = Entry::kFailed;
            e.err = pae ? pae->Err : NATS_ERR;
            e.code = pae ? static_cast<int>(pae->ErrCode) : 0;
          }
          break;
        }
        self->sent.erase(it);
      }
    }
    natsMsg_Destroy(msg);
    const uint64_t one = 1;
    if (::write(self->wake.get(), &one, sizeof one) < 0) {
    }  // EAGAIN: the counter is full, and the poll wakes all the same
  }

  size_t in_flight(const Buf& b) {
    std::lock_guard lk(mu);
    return b.inflight.size();
  }
  size_t in_flight_total() {
    std::lock_guard lk(mu);
    size_t n = 0;
    for (const auto& b : bufs) n += b->inflight.size();
    return n;
  }

  int publish(Buf& b, const relay_subbuf& sb, bool again);
  int settle(Buf& b);
  int step(Buf& b);
  int add_buffer(const std::string& file, const std::string& channel, bool at_start);
  int scan(const std::string& dir, const std::string& rel, int depth, bool at_start);
  int setup_path();
  int ensure_stream();
  std::string subject_for(const std::string& channel, std::string* why) const;
  bool captured(const std::string& subject) const;
  bool all_ended() const;
  std::string progress_text();
  int run();
};

// The short host name, fit for a subject token.
std::string host_name() {
  char h[256] = {};
  if (::gethostname(h, sizeof h - 1) != 0) return "localhost";
  std::string s(h);
  s = s.substr(0, s.find('.'));
  for (char& c : s)
    if (static_cast<unsigned char>(c) <= ' ' || c == '*' || c == '>' || c == '/' || c == 0x7f)
      c = '_';
  return s.empty() ? "localhost" : s;
}

// The first 8 hex digits of this boot's id: the buffers' identities (memfd inode numbers) are
// unique only within a boot, and a message id must never be used twice.
std::string boot_id() {
  char id[64] = {};
  relayfs::core::UniqueFd fd(::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC));
  if (fd && ::read(fd.get(), id, sizeof id - 1) >= 8) return std::string(id, 8);
  return "00000000";
}

// Whether text may stand as one token of a NATS subject: not empty, no whitespace, dot or
// wildcard.
bool subject_token(const std::string& text) {
  if (text.empty() || text.size() > 255) return false;
  for (unsigned char c : text)
    if (c <= ' ' || c == '.' || c == '*' || c == '>' || c == 0x7f) return false;
  return true;
}

// Whether every dot-separated token of text is a subject token.
bool subject_tokens(const std::string& text) {
  size_t at = 0;
  for (;;) {
    const size_t dot = text.find('.', at);
    if (!subject_token(text.substr(at, dot == std::string::npos ? dot : dot - at))) return false;
    if (dot == std::string::npos) return true;
    at = dot + 1;
  }
}

// Whether subject (no wildcards) matches filter (NATS wildcards: '*' a token, a last '>' one or
// more tokens).
bool subject_matches(const std::string& filter, const std::string& subject) {
  size_t f = 0, s = 0;
  for (;;) {
    const size_t fe = filter.find('.', f), se = subject.find('.', s);
    const std::string ft = filter.substr(f, fe == std::string::npos ? fe : fe - f);
    if (ft == ">" && fe == std::string::npos) return s <= subject.size();
    const std::string st = subject.substr(s, se == std::string::npos ? se : se - s);
    if (ft != "*" && ft != st) return false;
    if (fe == std::string::npos || se == std::string::npos) return fe == se;
    f = fe + 1;
    s = se + 1;
  }
}

std::string with_dots(std::string path) {
  std::replace(path.begin(), path.end(), '/', '.');
  return path;
}

std::string Shipper::subject_for(const std::string& channel, std::string* why) const {
  std::string rest = channel;  // the default: the channel's path in the mount
  std::string prefix = "relayfs." + host;
  if (!opt.subject.empty()) {
    prefix = opt.subject;
    if (!dir_mode) return prefix;
    rest = top.empty() ? channel : channel.substr(top.size() + 1);  // below PATH
  }
  const std::string tokens = with_dots(rest);
  if (!subject_tokens(tokens)) {
    *why = "channel " + channel + ": its path cannot be part of a NATS subject (a space, dot, "
           "'*' or '>' in a name): name the subject with --subject";
    return "";
  }
  return prefix + "." + tokens;
}

bool Shipper::captured(const std::string& subject) const {
  for (const auto& f : stream_subjects)
    if (subject_matches(f, subject)) return true;
  return false;
}

// Starts shipping relay file `file` of channel `channel` (its path in the mount), unless it is
// shipped already. at_start: a failure ends the run (reported; kExitError), else it is said once
// and the channel left alone.
int Shipper::add_buffer(const std::string& file, const std::string& channel, bool at_start) {
  struct stat st;
  if (::stat(file.c_str(), &st) != 0) return at_start ? sys_error(file, "", -errno) : 0;
  for (const auto& b : bufs)
    if (b->file == file && b->ino == st.st_ino) return 0;  // shipped already
  auto say = [&](const std::string& why) {
    if (at_start) return fail(why);
    if (std::find(skipped.begin(), skipped.end(), why) == skipped.end()) {
      skipped.push_back(why);
      note(why + "; left alone");
    }
    return 0;
  };
  std::string why;
  const std::string prefix = subject_for(channel, &why);
  if (prefix.empty()) return say(why);
  auto b = std::make_unique<Buf>();
  b->file = file;
  b->channel = channel;
  b->ino = st.st_ino;
  b->r = relay_reader_open(file.c_str());
  if (!b->r) {
    const int err = errno;
    if (!at_start && err == ENOENT) return 0;  // drained and gone meanwhile
    return say(file + ": cannot read it: " + std::strerror(err));
  }
  b->subject = prefix + "." + std::to_string(b->r->cpu);
  if (!captured(b->subject))
    return say("subject " + b->subject + " is not one of stream " + opt.stream +
               "'s subjects: JetStream would not take it (choose --subject or --stream)");
  char mode[32] = {};
  const std::string attr = relayfs::proto::xattr_name(relayfs::proto::kAttrMode);
  const ssize_t n = ::fgetxattr(b->r->fd, attr.c_str(), mode, sizeof mode - 1);
  // Anything but no-overwrite may lap a sub-buffer while it is copied.
  b->overwrite = !(n > 0 && std::string(mode, static_cast<size_t>(n)) == "no-overwrite");
  bufs.push_back(std::move(b));
  return 0;
}

// A directory PATH: every channel's buffer files under dir (rel: its path in the mount), never
// through a symbolic link.
int Shipper::scan(const std::string& dir, const std::string& rel, int depth, bool at_start) {
  if (depth > kMaxDepth) return 0;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (!d) return at_start ? sys_error(dir, "", -errno) : 0;
  std::vector<std::string> subdirs, files;
  while (const dirent* e = ::readdir(d.get())) {
    const std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (::fstatat(dirfd(d.get()), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode)) subdirs.push_back(name);
    if (S_ISREG(st.st_mode)) files.push_back(name);
  }
  const std::string channel_attr = relayfs::proto::xattr_name(relayfs::proto::kAttrChannel);
  for (const auto& name : files) {
    // A buffer file is BASE followed by its number; BASE alone is the merged view.
    char base[256];
    const ssize_t n =
        ::getxattr((dir + "/" + name).c_str(), channel_attr.c_str(), base, sizeof base);
    if (n <= 0) continue;
    const std::string b(base, static_cast<size_t>(n));
    unsigned long cpu;
    if (!suffix_number(name, b, &cpu)) continue;
    const std::string channel = rel.empty() ? b : rel + "/" + b;
    if (int rc = add_buffer(dir + "/" + name, channel, at_start); rc) return rc;
  }
  for (const auto& name : subdirs)
    if (int rc = scan(dir + "/" + name, rel.empty() ? name : rel + "/" + name, depth + 1,
                      at_start);
        rc)
      return rc;
  return 0;
}

// The path of dir below the relayfs mount that holds it (its mount root in *root): cli.cc's
// mount_root, and what of the resolved path lies below it.
int mount_path(const std::string& dir, std::string* root, std::string* rel) {
  std::string resolved;
  if (int rc = mount_root(dir, root, &resolved); rc) return rc;
  const size_t skip = *root == "/" ? 1 : root->size() + 1;
  *rel = resolved.size() > skip ? resolved.substr(skip) : std::string();
  return 0;
}

// Finds what PATH names: a channel, a buffer file or a directory. Returns an exit status.
int Shipper::setup_path() {
  const std::string& path = opt.path;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    dir_mode = true;
    if (int rc = mount_path(path, &mount_root, &top); rc) return sys_error(path, "", rc);
    return kExitOk;
  }
  std::string dir, base;
  if (!split_path(path, &dir, &base))
    return usage_error("ship", "'" + path + "' does not name a channel (DIR/BASE) or a directory");
  bool denied = false;
  std::vector<std::string> names = channel_buffers(dir, base, &denied);
  if (denied) return sys_error(path, "", -EACCES);
  std::string channel = base;
  if (names.empty()) {
    // One buffer file: its channel is what its attribute says.
    if (::stat(path.c_str(), &st) != 0) return sys_error(path, "", -errno);
    char name[256];
    const std::string attr = relayfs::proto::xattr_name(relayfs::proto::kAttrChannel);
    const ssize_t n = ::getxattr(path.c_str(), attr.c_str(), name, sizeof name);
    if (n <= 0) return sys_error(path, "not a relay file", -ENOTSUP);
    channel.assign(name, static_cast<size_t>(n));
    if (channel == base) return sys_error(path, "the merged view: name the channel", -EINVAL);
    names.push_back(base);
  }
  std::string rel;
  if (int rc = mount_path(dir, &mount_root, &rel); rc) return sys_error(dir, "", rc);
  channel = rel.empty() ? channel : rel + "/" + channel;
  for (const auto& n : names)
    if (int rc = add_buffer(dir + "/" + n, channel, true); rc) return rc;
  return kExitOk;
}

// The stream: found, or made. Returns an exit status.
int Shipper::ensure_stream() {
  jsStreamInfo* raw = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&raw, nc.js.get(), opt.stream.c_str(), nullptr, &jerr);
  nats::StreamInfoPtr si(raw);
  if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
    if (opt.no_create)
      return fail("stream " + opt.stream + " does not exist (--no-create): create it, or leave "
                  "--no-create out");
    // What the stream takes: the prefix's first token and everything below it.
    const std::string prefix = opt.subject.empty() ? std::string("relayfs") : opt.subject;
    const std::string subjects = prefix.substr(0, prefix.find('.')) + ".>";
    const char* list[] = {subjects.c_str()};
    jsStreamConfig cfg;
    jsStreamConfig_Init(&cfg);
    cfg.Name = opt.stream.c_str();
    cfg.Subjects = list;
    cfg.SubjectsLen = 1;
    cfg.Replicas = opt.replicas;
    cfg.Duplicates = kDupWindowNs;
    cfg.Storage = js_FileStorage;
    raw = nullptr;
    s = js_AddStream(&raw, nc.js.get(), &cfg, nullptr, &jerr);
    si.reset(raw);
    if (s != NATS_OK)
      return fail("cannot create stream " + opt.stream + " (subjects " + subjects + ", replicas " +
                  std::to_string(opt.replicas) + "): " + nats::describe(s, jerr));
  } else if (s != NATS_OK) {
    return fail("stream " + opt.stream + ": " + nats::describe(s, jerr));
  }
  for (int i = 0; i < si->Config->SubjectsLen; ++i)
    stream_subjects.emplace_back(si->Config->Subjects[i]);
  if (si->Config->Duplicates < kDupWindowNs && !opt.quiet)
    note("stream " + opt.stream + ": its duplicate window is " +
         std::to_string(si->Config->Duplicates / 1000000000) +
         " s: a ship started again later than that after a kill may send a message twice");
  return kExitOk;
}

int Shipper::publish(Buf& b, const relay_subbuf& sb, bool again) {
  natsMsg* raw = nullptr;
  // natsMsg_Create copies the payload from the mapping: nats.c's own copy, the only one.
  if (natsMsg_Create(&raw, b.subject.c_str(), nullptr, static_cast<const char*>(sb.data),
                     static_cast<int>(sb.length)) != NATS_OK)
    return -ENOMEM;
  nats::MsgPtr msg(raw);
  // Overwrite mode: the writer may have reused the slot while it was copied.
  if (b.overwrite && relay_reader_valid(b.r, &sb) != 1) return -ESTALE;
  const std::string seq = std::to_string(sb.seq), cpu = std::to_string(b.r->cpu);
  const std::string gen =
      boot + "-" + std::to_string(b.r->stream) + "-" + std::to_string(b.r->generation);
  const std::string id = host + "/" + b.channel + "/" + cpu + "/" + gen + "/" + seq;
  if (natsMsgHeader_Set(raw, "Relayfs-Host", host.c_str()) != NATS_OK ||
      natsMsgHeader_Set(raw, "Relayfs-Channel", b.channel.c_str()) != NATS_OK ||
      natsMsgHeader_Set(raw, "Relayfs-Cpu", cpu.c_str()) != NATS_OK ||
      natsMsgHeader_Set(raw, "Relayfs-Subbuf", seq.c_str()) != NATS_OK ||
      natsMsgHeader_Set(raw, "Relayfs-Generation", gen.c_str()) != NATS_OK)
    return -ENOMEM;
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MsgId = id.c_str();
  po.MaxWait = kAckWaitMs;  // nats.c then fails it with NATS_TIMEOUT: sent again
  {
    std::lock_guard lk(mu);
    if (!again) b.inflight.push_back({sb.seq, static_cast<uint32_t>(sb.length)});
    for (Entry& e : b.inflight)
      if (e.seq == sb.seq) e.state = Entry::kSent;
    sent[raw] = {&b, sb.seq};
  }
  const natsStatus s = js_PublishMsgAsync(nc.js.get(), &raw, &po);
  if (s != NATS_OK) {
    // Not taken (the reconnect buffer is full, say): sent again after a pause.
    std::lock_guard lk(mu);
    sent.erase(msg.get());
    for (Entry& e : b.inflight)
      if (e.seq == sb.seq) {
        e.state = Entry::kFailed;
        e.err = s;
        e.code = 0;
      }
    return 0;
  }
  (void)msg.release();  // nats.c owns it now, and hands it to on_ack
  if (again) ++b.resent;
  return 0;
}

// Consumes the acknowledged prefix of b's messages in flight, and sends again those that failed.
// Returns 0, or kExitError for a failure that ends the run (reported).
int Shipper::settle(Buf& b) {
  uint64_t upto = 0;
  std::vector<uint64_t> again;
  std::string transient;
  {
    std::lock_guard lk(mu);
    while (!b.inflight.empty() && b.inflight.front().state == Entry::kAcked) {
      const Entry& e = b.inflight.front();
      upto = e.seq + 1;
      b.bytes += e.len;
      ++b.msgs;
      b.duplicates += e.duplicate;
      b.inflight.pop_front();
    }
    for (const Entry& e : b.inflight) {
      if (e.state != Entry::kFailed) continue;
      // JetStream refused it, and says why: sent again, it would be refused again. What came
      // before it is kept; the run ends, and it stays in the buffer.
      if (e.code != 0)
        return fail(b.file + ": sub-buffer " + std::to_string(e.seq) + ": JetStream refused it: " +
                    natsStatus_GetText(e.err) + " (JetStream error " + std::to_string(e.code) +
                    ")");
      transient = natsStatus_GetText(e.err);
      again.push_back(e.seq);
    }
  }
  if (upto > b.pos) {
    if (relay_reader_consumed(b.r, upto - b.pos) != 0) {
      const int err = errno;
      if (err == ENOTCONN)
        return fail(b.file + ": the relayfs daemon went away. What JetStream did not "
                    "acknowledge stays in the buffer: once relayfs is mounted again, run "
                    "relayctl ship again, and it is sent again under the same message ids");
      return fail(b.file + ": cannot consume: " + std::strerror(err));
    }
    b.pos = upto;
  }
  if (again.empty()) return 0;
  waiting = transient;
  if (Clock::now() < b.retry_at) return 0;
  b.retry_at = Clock::now() + kRetryPause;
  for (uint64_t seq : again) {
    relay_subbuf sb;
    const int rc = relay_reader_peek(b.r, seq, &sb);
    if (rc == 0) continue;  // a reset is in progress: next time
    if (rc == 1) {
      const int pr = publish(b, sb, true);
      if (pr == 0) continue;
      if (pr != -ESTALE) return fail(b.file + ": " + std::strerror(-pr));
    }
    // The writer lapped it (overwrite mode) before JetStream took it: gone, and counted by the
    // daemon as an overrun when the position passes it.
    std::lock_guard lk(mu);
    for (Entry& e : b.inflight)
      if (e.seq == seq) {
        e.state = Entry::kAcked;
        e.len = 0;
      }
    ++b.lapped;
  }
  return 0;
}

// Settles b, then publishes what it has ready, within its window. Returns 0 or kExitError.
int Shipper::step(Buf& b) {
  if (b.ended) return 0;
  if (int rc = settle(b); rc) return rc;
  size_t flying = in_flight(b);
  while (!stopping && flying < static_cast<size_t>(opt.window)) {
    relay_subbuf sb;
    int rc;
    if (!b.started) {
      rc = relay_reader_next(b.r, &sb);
      if (rc == 1) {
        b.started = true;
        b.pos = b.next = sb.seq;
      }
    } else {
      rc = relay_reader_peek(b.r, b.next, &sb);
      if (rc < 0 && errno == ESTALE) {
        // The writer lapped it (overwrite mode): go on at the oldest it left whole.
        relay_subbuf oldest;
        if (relay_reader_next(b.r, &oldest) == 1 && oldest.seq > b.next) {
          b.lapped += oldest.seq - b.next;
          b.next = oldest.seq;
          b.pos = std::max<uint64_t>(b.pos, oldest.seq);
          continue;
        }
        rc = 0;
      }
    }
    if (rc < 0) return fail(b.file + ": " + std::strerror(errno));
    if (rc == 0) break;
    const int pr = publish(b, sb, false);
    b.next = sb.seq + 1;
    if (pr == -ESTALE) {  // lapped while it was copied
      ++b.lapped;
      continue;
    }
    if (pr < 0) return fail(b.file + ": " + std::strerror(-pr));
    ++flying;
  }
  // Finalized and drained (POLLERR on the relay file), nothing in flight: done.
  if (flying == 0) {
    pollfd p{b.r->fd, POLLIN, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP)) && !(p.revents & POLLIN)) {
      relay_reader_stats(b.r, &b.last);
      relay_reader_close(b.r);
      b.r = nullptr;
      b.ended = true;
    }
  }
  return 0;
}

bool Shipper::all_ended() const {
  for (const auto& b : bufs)
    if (!b->ended) return false;
  return true;
}

std::string Shipper::progress_text() {
  unsigned long long bytes = 0, msgs = 0, resent = 0, lapped = 0, lost = 0, dups = 0;
  for (const auto& b : bufs) {
    dups += b->duplicates;
    bytes += b->bytes;
    msgs += b->msgs;
    resent += b->resent;
    lapped += b->lapped;
    relay_stats st = b->last;
    if (b->r) relay_reader_stats(b->r, &st);
#define RELAYCTL_ADD_LOST(name, what) lost += st.name;
    RELAYFS_LOST_RECORD_COUNTERS(RELAYCTL_ADD_LOST)
#undef RELAYCTL_ADD_LOST
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  char line[320];
  std::snprintf(line, sizeof line,
                "%s, %llu messages acknowledged (%llu of them JetStream had already), %zu in "
                "flight, %llu sent again, %llu sub-buffers lapped, producers lost %llu records",
                amount_and_rate(static_cast<double>(bytes), s).c_str(), msgs, dups,
                in_flight_total(), resent, lapped, lost);
  std::string out = line;
  if (!waiting.empty()) out += "; waiting for JetStream: " + waiting;
  return out;
}

int Shipper::run() {
  const bool live = !opt.quiet && ::isatty(2);
  auto last_progress = Clock::now(), last_scan = Clock::now();
  for (;;) {
    bool any_failed = false;
    size_t flying = 0;  // only this thread adds or removes entries: the count stays true
    waiting.clear();
    for (auto& b : bufs) {
      if (int rc = step(*b); rc) return rc;
      std::lock_guard lk(mu);
      flying += b->inflight.size();
      for (const Entry& e : b->inflight) any_failed |= e.state == Entry::kFailed;
    }
    if (stopping && flying == 0) break;
    if (stopping && Clock::now() >= stop_deadline) {
      note(std::to_string(flying) + " messages still unacknowledged after " +
           std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kStopGrace).count()) +
           " s: they stay in the buffer, and the next relayctl ship sends them again");
      failed = true;
      break;
    }
    if (!dir_mode && all_ended()) break;
    if (dir_mode && !stopping && Clock::now() - last_scan >= kRescan) {
      last_scan = Clock::now();
      scan(opt.path, top, 0, false);
    }
    // Wait: for a signal, an acknowledgement, or (nothing in flight for it) a buffer's next
    // whole sub-buffer. With messages in flight the relay file reports its oldest unconsumed
    // sub-buffer, which is in flight already: then a short timeout looks for new ones.
    std::vector<pollfd> p{{sigfd.get(), POLLIN, 0}, {wake.get(), POLLIN, 0}};
    for (const auto& b : bufs)
      if (!b->ended && in_flight(*b) == 0) p.push_back({b->r->fd, POLLIN, 0});
    int timeout = flying > 0 ? (any_failed ? 50 : 2) : live ? 500 : dir_mode ? 1000 : -1;
    if (stopping) timeout = 100;
    const int n = ::poll(p.data(), p.size(), timeout);
    if (n < 0 && errno != EINTR) return fail(std::string("poll: ") + std::strerror(errno));
    if (n > 0 && (p[0].revents & POLLIN)) {
      signalfd_siginfo si;
      while (::read(sigfd.get(), &si, sizeof si) == sizeof si) {
      }
      if (!stopping) {
        stopping = true;
        stop_deadline = Clock::now() + kStopGrace;
      }
    }
    if (n > 0 && (p[1].revents & POLLIN)) {
      uint64_t v;
      if (::read(wake.get(), &v, sizeof v) < 0) {
      }  // EAGAIN: another pass took it
    }
    if (live && Clock::now() - last_progress >= kProgress) {
      last_progress = Clock::now();
      std::fprintf(stderr, "\r\033[Krelayctl ship: %s", progress_text().c_str());
    }
  }
  if (!opt.quiet)
    std::fprintf(stderr, "%srelayctl ship: %s: %s; %s\n", live ? "\r\033[K" : "",
                 opt.path.c_str(), progress_text().c_str(),
                 failed ? "failed" : stopping ? "stopped" : "channel closed");
  return failed ? kExitError : kExitOk;
}

// The options and arguments. Returns an exit status: kExitOk, or kExitUsage (reported).
int parse(int argc, char** argv, Options* o) {
  const std::vector<option> longopts = nats::long_options({{"stream", required_argument, nullptr, 's'},
                                {"replicas", required_argument, nullptr, 'r'},
                                {"no-create", no_argument, nullptr, 'n'},
                                {"subject", required_argument, nullptr, 'S'},
                                {"window", required_argument, nullptr, 'w'},
                                {"quiet", no_argument, nullptr, 'q'},
                                {"help", no_argument, nullptr, 'h'}});
  start_options();
  int c;
  while ((c = getopt_long(argc, argv, ":s:r:nS:w:qh", longopts.data(), nullptr)) != -1) {
    if (nats::take_option(c, optarg, &o->conn)) continue;
    switch (c) {
      case 's': o->stream = optarg; break;
      case 'r':
        if (!parse_int(optarg, 1, 5, &o->replicas))
          return usage_error("ship", "--replicas: '" + std::string(optarg) +
                                         "' is not a number from 1 to 5");
        break;
      case 'n': o->no_create = true; break;
      case 'S': o->subject = optarg; break;
      case 'w':
        if (!parse_int(optarg, 1, 1024, &o->window))
          return usage_error("ship", "--window: '" + std::string(optarg) +
                                         "' is not a number from 1 to 1024");
        break;
      case 'q': o->quiet = true; break;
      case 'h': o->help = true; return kExitOk;
      default: return option_error("ship", c, argv);
    }
  }
  if (argc - optind != 2)
    return usage_error("ship", argc - optind < 2 ? "missing PATH or URL" : "too many arguments");
  o->path = argv[optind];
  o->conn.urls = argv[optind + 1];
  if (!subject_token(o->stream) || o->stream.find('/') != std::string::npos)
    return usage_error("ship", "--stream: '" + o->stream + "' is not a stream name (no spaces, "
                               "dots, '*', '>' or '/')");
  if (!o->subject.empty() && !subject_tokens(o->subject))
    return usage_error("ship", "--subject: '" + o->subject + "' is not a subject prefix (tokens "
                               "separated by single dots, no spaces or wildcards)");
  return kExitOk;
}

}  // namespace

int cmd_ship(int argc, char** argv) {
  Shipper sh;
  if (int rc = parse(argc, argv, &sh.opt); rc != kExitOk || sh.opt.help) {
    if (sh.opt.help) {
      std::fputs(kHelp, stdout);
      std::fputs(nats::kOptionsHelp, stdout);
    }
    return rc;
  }
  // SIGINT and SIGTERM arrive as reads on a signalfd: blocked before nats.c starts its threads,
  // which would otherwise take them with the default action.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  sh.sigfd.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sh.sigfd) return sys_error("signalfd", "", -errno);
  sh.host = host_name();
  sh.boot = boot_id();
  sh.wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!sh.wake) return sys_error("eventfd", "", -errno);
  // Nothing is read before the stream is known to take it: connect first.
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.AckHandler = &Shipper::on_ack;
  jo.PublishAsync.AckHandlerClosure = &sh;
  // The window is ours (per buffer); nats.c's own bound only guards against a runaway.
  jo.PublishAsync.MaxPending = 1 << 20;
  nats::Tuning tuning;
  tuning.js = &jo;
  tuning.reconnect_buffer = 64 << 20;  // publishes kept while reconnecting
  if (int rc = nats::connect(sh.opt.conn, "relayctl ship", &sh.nc, tuning); rc != kExitOk)
    return rc;
  if (int rc = sh.ensure_stream(); rc != kExitOk) return rc;
  if (int rc = sh.setup_path(); rc != kExitOk) return rc;
  if (sh.dir_mode) {
    if (int rc = sh.scan(sh.opt.path, sh.top, 0, true); rc != kExitOk) return rc;
  } else if (sh.bufs.empty()) {
    return sys_error(sh.opt.path, "", -ENOENT);
  }
  return sh.run();
}

}  // namespace relayctl
