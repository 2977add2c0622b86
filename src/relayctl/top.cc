// relayctl top: a live view of every channel's write and read rates, fill level and losses,
// refreshed every --delay seconds, like top(1) and iotop(8); plain snapshots with --batch or
// when standard output is not a terminal. The counters are read as relayctl stat reads them
// (stat.h); a rate is a counter's growth between two readings over the time between them.
//
// The terminal is driven directly, without curses: the alternate screen, a few ANSI sequences,
// and termios with ICANON and ECHO off. It is given back as it was on every way out: q,
// SIGINT, SIGTERM, SIGHUP, an error, an exception (Screen's destructor), and around a stop
// (SIGTSTP, Ctrl-Z). Signals come through a signalfd, so no handler runs at an odd moment.
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/fd.h"
#include "core/stats.h"
#include "proto/mountinfo.h"
#include "relayctl/relayctl.h"
#include "relayctl/stat.h"

namespace relayctl {
namespace {

namespace core = relayfs::core;
namespace proto = relayfs::proto;
using Clock = std::chrono::steady_clock;

constexpr const char* kHelp =
    "Usage: relayctl top [OPTIONS] [PATH...]\n"
    "A live view of the channels PATH names (a directory: every channel below it; a channel\n"
    "DIR/BASE; a relay file), by default of every mounted relayfs, refreshed every second: each\n"
    "channel's write and read rates, fill level and losses per second, fastest writer first.\n"
    "Keys: q quits, p switches between a row per channel and a row per buffer, space\n"
    "refreshes now. With --batch, or when standard output is not a terminal, it prints a plain\n"
    "snapshot every interval instead.\n"
    "\n"
    "  -d, --delay SECONDS     time between refreshes (default 1; 0.1 to 86400, decimals allowed)\n"
    "  -n, --iterations N      stop after N refreshes\n"
    "  -b, --batch             plain snapshots on standard output, one per interval\n"
    "  -p, --per-buffer        a row per buffer (BASE0, BASE1, ...) instead of per channel\n"
    "  -h, --help              this help\n";

struct Options {
  double delay = 1.0;        // seconds
  long long iterations = 0;  // 0: until stopped
  bool batch = false;
  bool per_buffer = false;
  std::vector<std::string> paths;  // empty: every relayfs mount
};

// ---- Readings -----------------------------------------------------------------------------------

// A buffer's counters, from its attributes (attribute i < kCounterCount is counter i).
core::BufferStats stats_of(const Row& r) {
  core::BufferStats st;
  size_t i = 0;
#define RELAYCTL_COUNTER_READ(name, what) \
  st.name = std::strtoull(r.values[i++].c_str(), nullptr, 10);
  RELAYFS_BUFFER_COUNTERS(RELAYCTL_COUNTER_READ)
#undef RELAYCTL_COUNTER_READ
  return st;
}

// How much each counter grew from before to now. One that went down (relay_reset, or a channel
// of the same name opened again between readings) grew by nothing.
core::BufferStats growth(const core::BufferStats& now, const core::BufferStats& before) {
  core::BufferStats d;
#define RELAYCTL_COUNTER_GROWTH(name, what) \
  d.name = now.name >= before.name ? now.name - before.name : 0;
  RELAYFS_BUFFER_COUNTERS(RELAYCTL_COUNTER_GROWTH)
#undef RELAYCTL_COUNTER_GROWTH
  return d;
}

// The mount points of every relayfs this process sees, each filesystem once (a bind mount
// would show its channels twice).
std::vector<std::string> relayfs_mounts() {
  std::vector<std::string> points;
  std::set<std::string> devs;
  for (const auto& m : proto::read_mountinfo())
    if (m.type == proto::kFsType && devs.insert(m.dev).second) points.push_back(m.point);
  return points;
}

struct Buffer {
  std::string channel;  // DIR/BASE, as a PATH names the channel
  core::BufferStats st;
};

// One reading of every buffer the PATHs name.
struct Sample {
  Clock::time_point at{};
  std::time_t wall = 0;                   // the same moment, for the header
  std::map<std::string, Buffer> buffers;  // by path: a buffer two PATHs name counts once
  std::vector<std::string> failures;      // what could not be read, as messages
};

Sample take_sample(const std::vector<std::string>& paths) {
  Sample s;
  s.at = Clock::now();
  s.wall = std::time(nullptr);
  std::vector<Row> rows;
  for (const auto& p : paths) collect(p, &rows, &s.failures);
  if (paths.empty())
    for (const auto& p : relayfs_mounts()) {
      struct stat st;
      // Unmounted since the table was read (the directory often goes with it): not shown.
      if (::stat(p.c_str(), &st) != 0 && errno == ENOENT) continue;
      collect(p, &rows, &s.failures);
    }
  for (const Row& r : rows) {
    std::string dir, name;
    split_path(r.path, &dir, &name);
    s.buffers[r.path] = {(dir == "/" ? "" : dir) + "/" + r["channel"], stats_of(r)};
  }
  return s;
}

// ---- What is shown ------------------------------------------------------------------------------

// A row: a channel (the sums over its buffers) or one buffer. Rates are per second, over the
// buffers read both times; a row none of whose buffers was there the time before has none yet.
struct Line {
  std::string name;
  size_t buffers = 0;
  bool rated = false;
  double write = 0, read = 0, drops = 0, lost = 0;  // bytes, bytes, records, bytes per second
  uint64_t unread = 0, capacity = 0;                // bytes: fill is unread / capacity
};

struct View {
  std::vector<Line> lines;  // fastest writer first
  Line total;
  size_t buffers = 0, channels = 0;
  std::time_t wall = 0;  // when it was read
};

View view_of(const Sample& now, const Sample* before, bool per_buffer) {
  const double dt = before ? std::chrono::duration<double>(now.at - before->at).count() : 0.0;
  std::map<std::string, Line> by_name;
  std::set<std::string> channels;
  for (const auto& [path, b] : now.buffers) {
    channels.insert(b.channel);
    Line& l = by_name[per_buffer ? path : b.channel];
    ++l.buffers;
    // In overwrite mode bytes_unread may pass what the buffer holds: the bytes the writer
    // lapped count as lost only once a reader comes past them.
    const uint64_t capacity = b.st.n_subbufs * b.st.subbuf_size;
    l.unread += std::min(b.st.bytes_unread, capacity);
    l.capacity += capacity;
    // The same buffer the time before: same path, same channel.
    const Buffer* was = nullptr;
    if (before)
      if (auto it = before->buffers.find(path);
          it != before->buffers.end() && it->second.channel == b.channel)
        was = &it->second;
    if (!was || dt <= 0) continue;
    const core::BufferStats d = growth(b.st, was->st);
    l.rated = true;
    l.write += d.bytes_produced / dt;
    l.read += d.bytes_consumed / dt;
    l.drops += core::records_lost(d) / dt;
    l.lost += core::bytes_lost(d) / dt;
  }
  View v;
  v.wall = now.wall;
  v.buffers = now.buffers.size();
  v.channels = channels.size();
  v.total.rated = before != nullptr;
  for (auto& [name, l] : by_name) {
    l.name = name;
    v.total.write += l.write;
    v.total.read += l.read;
    v.total.drops += l.drops;
    v.total.lost += l.lost;
    v.lines.push_back(std::move(l));
  }
  // by_name gave them in name order: that stays the order among equal rates.
  std::stable_sort(v.lines.begin(), v.lines.end(),
                   [](const Line& a, const Line& b) { return a.write > b.write; });
  return v;
}

// A number in at most 5 characters or so: 3 significant digits, a unit prefix of base 1024
// (bytes: 512B, 1.50K, 12.3M) or 1000 (counts: 0.5, 999, 12.3k).
std::string human(double v, bool bytes) {
  static constexpr const char* kPrefixes[] = {"", "K", "M", "G", "T", "P"};
  static constexpr const char* kCountPrefixes[] = {"", "k", "M", "G", "T", "P"};
  const double base = bytes ? 1024 : 1000;
  size_t p = 0;
  while (v >= base * 0.9995 && p + 1 < std::size(kPrefixes)) {
    v /= base;
    ++p;
  }
  const char* unit = bytes ? kPrefixes[p] : kCountPrefixes[p];
  char buf[32];
  if (v == 0)
    std::snprintf(buf, sizeof buf, "0%s", bytes ? "B" : "");
  else if (p == 0 && bytes)
    std::snprintf(buf, sizeof buf, "%.0fB", v);
  else if (v < 9.995)
    std::snprintf(buf, sizeof buf, "%.2f%s", v, unit);
  else if (v < 99.95)
    std::snprintf(buf, sizeof buf, "%.1f%s", v, unit);
  else
    std::snprintf(buf, sizeof buf, "%.0f%s", v, unit);
  return buf;
}

// A name as shown: what could move the cursor or begin an escape sequence (C0 controls, DEL,
// and C1 controls, which UTF-8 spells 0xC2 0x80..0x9F) becomes '?'.
std::string printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    const bool c1 =
        c == 0xC2 && i + 1 < s.size() && (static_cast<unsigned char>(s[i + 1]) & 0xE0) == 0x80;
    if (c < 0x20 || c == 0x7F || c1) {
      out.push_back('?');
      i += c1;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::string format(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

// The columns: rates right-aligned, then the name, which may be long, last (as top's COMMAND).
std::string columns(const std::string& write, const std::string& read, const std::string& fill,
                    const std::string& drops, const std::string& lost, const std::string& name) {
  return format("%9s %9s %6s %8s %9s  %s", write.c_str(), read.c_str(), fill.c_str(), drops.c_str(),
                lost.c_str(), name.c_str());
}

// The text of a view: the header (time and counts; the totals, and failure, a message, if any),
// a blank line, the column titles (line kTitleLine), then a line per row.
constexpr size_t kTitleLine = 3;
std::vector<std::string> render(const View& v, bool per_buffer, double delay,
                                const std::string& failure) {
  std::vector<std::string> out;
  char clock[16];
  std::tm tm{};
  ::localtime_r(&v.wall, &tm);
  std::strftime(clock, sizeof clock, "%H:%M:%S", &tm);
  out.push_back(format("relayctl top - %s, %zu channel%s, %zu buffer%s, every %gs", clock,
                       v.channels, v.channels == 1 ? "" : "s", v.buffers, v.buffers == 1 ? "" : "s",
                       delay));
  auto rate = [](const Line& l, double x, bool bytes) { return l.rated ? human(x, bytes) : "-"; };
  const Line& t0 = v.total;
  out.push_back("Total: write " + rate(t0, t0.write, true) + "/s, read " + rate(t0, t0.read, true) +
                "/s, drops " + rate(t0, t0.drops, false) + "/s, lost " + rate(t0, t0.lost, true) +
                "/s" + (failure.empty() ? "" : "   relayctl: " + printable(failure)));
  out.push_back("");
  out.push_back(
      columns("WRITE/s", "READ/s", "FILL", "DROPS/s", "LOST/s", per_buffer ? "BUFFER" : "CHANNEL"));
  for (const Line& l : v.lines) {
    // Fill: what is unread, of what the buffers hold.
    const std::string fill = l.capacity ? format("%.1f%%", 100.0 * static_cast<double>(l.unread) /
                                                               static_cast<double>(l.capacity))
                                        : std::string("-");
    out.push_back(columns(rate(l, l.write, true), rate(l, l.read, true), fill,
                          rate(l, l.drops, false), rate(l, l.lost, true), printable(l.name)));
  }
  return out;
}

// ---- The terminal -------------------------------------------------------------------------------

// Writes all of text to fd. Returns 0 or -errno.
int write_all(int fd, const std::string& text) {
  for (size_t done = 0; done < text.size();) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    done += static_cast<size_t>(n);
  }
  return 0;
}

// The terminal on standard input and output while top owns it: keys unbuffered and not echoed,
// the alternate screen, no cursor. close() (or the destructor) gives it back as it was.
class Screen {
 public:
  Screen() = default;
  Screen(const Screen&) = delete;
  Screen& operator=(const Screen&) = delete;
  ~Screen() { close(); }

  // Returns 0 or -errno. The modes are read anew each time: after a stop, the shell's.
  int open() {
    if (::tcgetattr(STDIN_FILENO, &before_) != 0) return -errno;
    termios raw = before_;
    // ISIG stays: Ctrl-C and Ctrl-Z still send SIGINT and SIGTSTP, which the loop reads.
    raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    if (::tcsetattr(STDIN_FILENO, TCSANOW, &raw) != 0) return -errno;
    open_ = true;
    // Alternate screen, cursor hidden, cleared.
    return write_all(STDOUT_FILENO, "\033[?1049h\033[?25l\033[H\033[2J");
  }

  void close() {
    if (!open_) return;
    open_ = false;
    // Cursor shown, main screen back as it was, then the terminal's modes.
    write_all(STDOUT_FILENO, "\033[?25h\033[?1049l");
    ::tcsetattr(STDIN_FILENO, TCSANOW, &before_);
  }

  // Draws lines from the top left, each cut to the width, as many as fit; the column titles
  // (line title) in reverse video across the whole width. Returns 0 or -errno.
  int draw(const std::vector<std::string>& lines, size_t title) const {
    winsize ws{};
    const bool known = ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col && ws.ws_row;
    const size_t cols = known ? ws.ws_col : 80, rows = known ? ws.ws_row : 24;
    std::string frame = "\033[H";
    for (size_t i = 0; i < lines.size() && i < rows; ++i) {
      // Cut at a character boundary: UTF-8 continuation bytes take no column.
      size_t width = 0, end = 0;
      for (; end < lines[i].size(); ++end) {
        const bool starts = (static_cast<unsigned char>(lines[i][end]) & 0xC0) != 0x80;
        if (starts && width == cols) break;
        width += starts;
      }
      if (i) frame += "\r\n";
      if (i == title) frame += "\033[7m";
      frame.append(lines[i], 0, end);
      if (i == title) frame += std::string(cols - width, ' ') + "\033[m";
      // Erase the rest of the line, unless the cursor is past the last column (where some
      // terminals would erase the last character).
      else if (width < cols)
        frame += "\033[K";
    }
    frame += "\033[J";  // and every line below
    return write_all(STDOUT_FILENO, frame);
  }

 private:
  termios before_{};
  bool open_ = false;
};

// ---- The loop -----------------------------------------------------------------------------------

// What a key or a signal asks for.
enum class Event { kNone, kQuit, kRedraw, kRefresh, kToggle };

// Keys typed since the last look (standard input is non-blocking in raw mode). An escape
// sequence (arrows, function keys) is ignored whole: its letters are no commands.
Event read_keys() {
  char keys[64];
  const ssize_t n = ::read(STDIN_FILENO, keys, sizeof keys);
  if (n == 0) return Event::kQuit;  // the terminal hung up
  if (n < 0 || keys[0] == '\033') return Event::kNone;
  Event e = Event::kNone;
  for (ssize_t i = 0; i < n; ++i) {
    if (keys[i] == 'q' || keys[i] == 'Q') return Event::kQuit;
    if (keys[i] == 'p' || keys[i] == 'P')
      e = Event::kToggle;
    else if (keys[i] == ' ' && e == Event::kNone)
      e = Event::kRefresh;
  }
  return e;
}

// Signals read from sigfd. SIGTSTP gives the terminal back for the stop and takes it again
// after (the caller redraws).
Event read_signals(int sigfd, Screen* screen) {
  signalfd_siginfo si;
  Event e = Event::kNone;
  while (::read(sigfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
    switch (si.ssi_signo) {
      case SIGINT:
      case SIGTERM:
      case SIGHUP:
        return Event::kQuit;
      case SIGTSTP:
        if (screen) {
          screen->close();
          ::raise(SIGSTOP);  // returns at SIGCONT
          if (screen->open() != 0) return Event::kQuit;
        }
        e = Event::kRedraw;
        break;
      default:  // SIGWINCH, SIGCONT
        e = Event::kRedraw;
    }
  }
  return e;
}

// Runs the view until q, a signal, or the iterations are done. screen: null for batch, whose
// first snapshot comes after one interval (rates need two readings); on a screen the first
// comes at once, without rates. Returns an exit status.
int watch(const Options& o, Screen* screen, int sigfd) {
  const auto delay =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.delay));
  Sample before, now = take_sample(o.paths);
  bool rated = false, per_buffer = o.per_buffer;
  std::set<std::string> reported;  // batch: the failures already on stderr
  // A failure of the terminal or the loop: said on the main screen, where it stays.
  auto fail = [&](const char* what, int err) {
    if (screen) screen->close();
    return sys_error(what, "", err);
  };
  auto show = [&]() -> int {
    const View v = view_of(now, rated ? &before : nullptr, per_buffer);
    if (!screen) {
      for (const auto& f : now.failures)
        if (reported.insert(f).second) note(f);
      std::string text;
      for (const auto& l : render(v, per_buffer, o.delay, "")) text += l + "\n";
      return write_all(STDOUT_FILENO, text + "\n");
    }
    std::string failure = now.failures.empty() ? "" : now.failures[0];
    if (now.failures.size() > 1)
      failure += " (and " + std::to_string(now.failures.size() - 1) + " more)";
    return screen->draw(render(v, per_buffer, o.delay, failure), kTitleLine);
  };
  long long shown = 0;
  auto next = Clock::now() + (screen ? Clock::duration{} : delay);
  for (;;) {
    if (Clock::now() >= next) {
      if (!screen || shown > 0) {
        before = std::move(now);
        now = take_sample(o.paths);
        rated = true;
      }
      if (int err = show(); err != 0) return fail("standard output", err);
      if (++shown == o.iterations) return kExitOk;
      next = std::max(next + delay, Clock::now());
    }
    const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next - Clock::now());
    pollfd fds[2] = {{sigfd, POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
    if (::poll(fds, screen ? 2 : 1, static_cast<int>(std::max<long long>(wait.count(), 0))) < 0 &&
        errno != EINTR)
      return fail("poll", -errno);
    Event e = fds[0].revents ? read_signals(sigfd, screen) : Event::kNone;
    if (e == Event::kNone && screen && fds[1].revents)
      e = fds[1].revents & POLLIN ? read_keys() : Event::kQuit;
    if (e == Event::kQuit) return kExitOk;
    if (!screen) continue;  // only a quit concerns snapshots
    if (e == Event::kToggle) per_buffer = !per_buffer;
    if (e == Event::kRefresh) next = Clock::now();
    if (e == Event::kToggle || e == Event::kRedraw)
      if (int err = show(); err != 0) return fail("standard output", err);
  }
}

bool parse_seconds(const char* text, double* out) {
  if (!text || !*text || *text == '-' || *text == '+' || *text == ' ') return false;
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (errno != 0 || *end != '\0' || !std::isfinite(v) || v < 0.1 || v > 86400) return false;
  *out = v;
  return true;
}

// Options and PATHs into o. Returns an exit status; *help if --help was given.
int parse(int argc, char** argv, Options* o, bool* help) {
  static const option kLong[] = {
      {"delay", required_argument, nullptr, 'd'}, {"iterations", required_argument, nullptr, 'n'},
      {"batch", no_argument, nullptr, 'b'},       {"per-buffer", no_argument, nullptr, 'p'},
      {"help", no_argument, nullptr, 'h'},        {nullptr, 0, nullptr, 0}};
  start_options();
  int c;
  while ((c = getopt_long(argc, argv, ":d:n:bph", kLong, nullptr)) != -1) {
    switch (c) {
      case 'd':
        if (!parse_seconds(optarg, &o->delay))
          return usage_error("top",
                             std::string("bad --delay '") + optarg + "' (seconds, 0.1 to 86400)");
        break;
      case 'n':
        if (!parse_int(optarg, 1, LLONG_MAX, &o->iterations))
          return usage_error("top", std::string("bad --iterations '") + optarg + "'");
        break;
      case 'b':
        o->batch = true;
        break;
      case 'p':
        o->per_buffer = true;
        break;
      case 'h':
        *help = true;
        return kExitOk;
      default:
        return option_error("top", c, argv);
    }
  }
  o->paths.assign(argv + optind, argv + argc);
  return kExitOk;
}

}  // namespace

int cmd_top(int argc, char** argv) {
  Options o;
  bool help = false;
  if (int rc = parse(argc, argv, &o, &help); rc != kExitOk || help) {
    if (help) std::fputs(kHelp, stdout);
    return rc;
  }
  // What is to be watched must be there at the start; what goes later is only no longer shown.
  for (const auto& p : o.paths) {
    std::vector<Row> rows;
    if (collect(p, &rows) != kExitOk && rows.empty()) return kExitError;
  }
  if (o.paths.empty() && relayfs_mounts().empty()) {
    note("no relayfs is mounted; name a PATH");
    return kExitError;
  }
  // Signals arrive as reads on a signalfd: one more thing the loop polls. A screen also
  // follows the window's size and gives the terminal back for a stop.
  const bool batch = o.batch || !::isatty(STDOUT_FILENO) || !::isatty(STDIN_FILENO);
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, s);
  if (!batch)
    for (int s : {SIGWINCH, SIGTSTP, SIGCONT}) sigaddset(&set, s);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  core::UniqueFd sigfd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sigfd) return sys_error("signalfd", "", -errno);
  if (batch) return watch(o, nullptr, sigfd.get());
  Screen screen;
  if (int err = screen.open(); err != 0) {
    screen.close();
    return sys_error("terminal", "", err);
  }
  try {
    return watch(o, &screen, sigfd.get());
  } catch (...) {
    screen.close();  // before the message, on the main screen
    throw;
  }
}

}  // namespace relayctl
