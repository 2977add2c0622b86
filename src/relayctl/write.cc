// relayctl write: standard input into a channel, as records: one per line (newline kept), or
// fixed-size records. Opens the channel with relay_open_opts, closes it at end of input, and
// reports on stderr the records the channel lost.
#include <getopt.h>
#include <relayfs/relay.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "relayctl/relayctl.h"

namespace relayctl {
namespace {

constexpr const char* kHelp =
    "Usage: relayctl write [OPTIONS] PATH\n"
    "Writes standard input into a new channel PATH (DIR/BASE: files BASE0.. in DIR, inside a\n"
    "mounted relayfs) as records, and closes the channel at end of input.\n"
    "\n"
    "  -r, --record-size N   fixed records of N bytes (the last one may be shorter);\n"
    "                        default: one record per line, newline included\n"
    "  -s, --subbuf-size N   sub-buffer size (K, M, G suffixes; default 256K)\n"
    "  -n, --n-subbufs N     sub-buffers per buffer (default 8)\n"
    "  -o, --overwrite       overwrite (\"flight recorder\") mode\n"
    "  -b, --blocking        wait for a reader when the buffer is full instead of dropping\n"
    "  -t, --timeout-ms MS   with --blocking: longest wait per record (default -1: no limit)\n"
    "  -p, --per-cpu         one buffer per CPU (default: one global buffer, BASE0, which\n"
    "                        keeps the input's order)\n"
    "  -m, --mode OCTAL      permission bits of the files (default 0400)\n"
    "  -c, --control         let relayctl flush and close act on the channel (RELAY_CONTROL;\n"
    "                        reset stays refused: this writer cannot pause for it)\n"
    "  -h, --help            this help\n"
    "Records the channel drops (full buffer, too big, ...) are counted and reported on stderr.\n";

struct WriteOptions {
  unsigned long long record_size = 0;  // 0: lines
  unsigned long long subbuf_size = 256 * 1024;
  unsigned long long n_subbufs = 8;
  bool overwrite = false;
  bool blocking = false;
  long long timeout_ms = -1;
  bool timeout_given = false;
  bool per_cpu = false;
  bool control = false;
  mode_t mode = 0400;
  std::string path;
};

// create_buf_file: decides the files' mode and global or per-CPU (relay.h).
int decide_files(const char*, const char*, mode_t* mode, rchan_buf* buf, int* is_global) {
  const auto* o = static_cast<const WriteOptions*>(buf->chan->private_data);
  *mode = o->mode;
  *is_global = o->per_cpu ? 0 : 1;
  return 0;
}

// The options and PATH into *o. Returns an exit status: kExitOk, or kExitUsage with the error
// reported.
int parse(int argc, char** argv, WriteOptions* o, bool* help) {
  static const option kLong[] = {
      {"record-size", required_argument, nullptr, 'r'},
      {"subbuf-size", required_argument, nullptr, 's'},
      {"n-subbufs", required_argument, nullptr, 'n'},
      {"overwrite", no_argument, nullptr, 'o'},
      {"blocking", no_argument, nullptr, 'b'},
      {"timeout-ms", required_argument, nullptr, 't'},
      {"per-cpu", no_argument, nullptr, 'p'},
      {"mode", required_argument, nullptr, 'm'},
      {"control", no_argument, nullptr, 'c'},
      {"help", no_argument, nullptr, 'h'},
      {nullptr, 0, nullptr, 0}};
  start_options();
  int c;
  while ((c = getopt_long(argc, argv, ":r:s:n:obt:pm:ch", kLong, nullptr)) != -1) {
    long long v;
    switch (c) {
      case 'r':
        if (!parse_size(optarg, &o->record_size))
          return usage_error("write", std::string("invalid record size '") + optarg + "'");
        break;
      case 's':
        if (!parse_size(optarg, &o->subbuf_size))
          return usage_error("write", std::string("invalid sub-buffer size '") + optarg + "'");
        break;
      case 'n':
        if (!parse_size(optarg, &o->n_subbufs))
          return usage_error("write", std::string("invalid sub-buffer count '") + optarg + "'");
        break;
      case 'o': o->overwrite = true; break;
      case 'b': o->blocking = true; break;
      case 't':
        if (!parse_int(optarg, -1, 1LL << 30, &v))
          return usage_error("write", std::string("invalid timeout '") + optarg + "'");
        o->timeout_ms = v;
        o->timeout_given = true;
        break;
      case 'p': o->per_cpu = true; break;
      case 'c': o->control = true; break;
      case 'm': {
        char* end = nullptr;
        const unsigned long m = std::strtoul(optarg, &end, 8);
        if (!*optarg || *end || m > 0777)
          return usage_error("write", std::string("invalid mode '") + optarg + "'");
        o->mode = static_cast<mode_t>(m);
        break;
      }
      case 'h': *help = true; return kExitOk;
      default: return option_error("write", c, argv);
    }
  }
  if (optind != argc - 1)
    return usage_error("write", optind == argc ? "missing PATH" : "too many arguments");
  o->path = argv[optind];
  if (o->overwrite && o->blocking)
    return usage_error("write", "--blocking and --overwrite exclude each other: an overwrite "
                                "buffer is never full");
  if (o->timeout_given && !o->blocking) return usage_error("write", "--timeout-ms needs --blocking");
  if (o->record_size && o->record_size > o->subbuf_size)
    return usage_error("write", "--record-size is larger than --subbuf-size: every record "
                                "would be dropped");
  return kExitOk;
}

// Reads records from standard input and writes them. Returns 0, or -errno of a failed read or
// of a write the channel failed (not a dropped record), reported.
int pump(rchan* chan, const WriteOptions& o, unsigned long long* records, unsigned long long* dropped) {
  // Read into a buffer larger than a sub-buffer, cut records out of it; an incomplete record
  // moves to the front. A line that fills the whole buffer cannot fit a sub-buffer: it is
  // offered once (the channel drops and counts it as too big) and the rest of it is skipped.
  std::vector<char> buf(std::max<size_t>(1 << 16, o.subbuf_size + 1));
  size_t have = 0;
  bool eof = false;
  bool skipping = false;  // inside an over-long line, until its newline
  while (!eof || have > 0) {
    if (!eof && have < buf.size()) {
      const ssize_t n = ::read(0, buf.data() + have, buf.size() - have);
      if (n < 0) {
        if (errno == EINTR) continue;
        return report("standard input", "read", -errno);
      }
      if (n == 0) eof = true;
      have += static_cast<size_t>(n);
    }
    size_t start = 0;
    for (;;) {
      size_t len;
      if (o.record_size) {
        if (have - start >= o.record_size) len = o.record_size;
        else if (eof && have > start) len = have - start;  // the short last record
        else break;
      } else {
        const void* nl = std::memchr(buf.data() + start, '\n', have - start);
        if (nl) len = static_cast<size_t>(static_cast<const char*>(nl) - (buf.data() + start)) + 1;
        else if (eof && have > start) len = have - start;      // a last line without newline
        else if (start == 0 && have == buf.size()) len = have;  // a line longer than buf
        else break;
        if (skipping) {  // the tail of an over-long line, already counted
          skipping = !nl;
          start += len;
          continue;
        }
        skipping = !nl && !eof;
      }
      if (relay_write(chan, buf.data() + start, len) != 0) {
        // ENOSPC, ETIMEDOUT, EMSGSIZE: the record was dropped and counted by the channel.
        if (errno != ENOSPC && errno != ETIMEDOUT && errno != EMSGSIZE)
          return report(o.path, "write", -errno);
        ++*dropped;
      }
      ++*records;
      start += len;
    }
    std::memmove(buf.data(), buf.data() + start, have - start);
    have -= start;
  }
  return 0;
}

}  // namespace

int cmd_write(int argc, char** argv) {
  WriteOptions o;
  bool help = false;
  if (int rc = parse(argc, argv, &o, &help); rc != kExitOk || help) {
    if (help) std::fputs(kHelp, stdout);
    return rc;
  }
  std::string dir, base;
  if (!split_path(o.path, &dir, &base))
    return usage_error("write", "'" + o.path + "' does not name a channel (DIR/BASE)");
  rchan_callbacks cb{};
  cb.create_buf_file = decide_files;
  relay_options ro{(o.overwrite ? RELAY_OVERWRITE : 0u) | (o.blocking ? RELAY_BLOCKING : 0u) |
                       (o.control ? RELAY_CONTROL : 0u),
                   static_cast<int>(o.timeout_ms), nullptr};
  rchan* chan = relay_open_opts(base.c_str(), dir.c_str(), o.subbuf_size, o.n_subbufs, &cb, &o, &ro);
  if (!chan) return sys_error(o.path, "cannot open channel", -errno);

  unsigned long long records = 0, dropped = 0;
  int status = pump(chan, o, &records, &dropped) == 0 ? kExitOk : kExitError;

  relay_stats total{};
  for (unsigned i = 0; i < chan->n_buffers; ++i) {
    relay_stats st{};
    if (relay_buf_stats(chan->buf[i], &st) != 0) continue;
    total.lost_full += st.lost_full;
    total.lost_too_big += st.lost_too_big;
    total.lost_wrap += st.lost_wrap;
  }
  // No-overwrite: close the last sub-buffer, so mmap readers (relayctl record) get it whole,
  // as the spec asks producers to do. Not in overwrite mode: the switch would lap the oldest
  // unread sub-buffer of a full buffer.
  if (!o.overwrite) relay_flush(chan);
  if (relay_close(chan) != 0 && status == kExitOk) status = sys_error(o.path, "close", -errno);
  const unsigned long long lost = total.lost_full + total.lost_too_big + total.lost_wrap;
  if (lost > 0 || dropped > 0) {
    char msg[256];
    std::snprintf(msg, sizeof msg,
                  "%s: %llu of %llu records lost (full %llu, too big %llu, wrap %llu)",
                  o.path.c_str(), std::max(lost, dropped), records, total.lost_full,
                  total.lost_too_big, total.lost_wrap);
    note(msg);
  }
  return status;
}

}  // namespace relayctl
