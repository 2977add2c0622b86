// relayctl stat: every buffer's counters, read from the user.relayfs.* extended attributes the
// daemon puts on each relay file (relay(7) "Attributes"), as a table, as JSON, or in
// Prometheus's text format.
#include <dirent.h>
#include <getopt.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "core/stats.h"
#include "proto/names.h"
#include "relayctl/relayctl.h"
#include "relayctl/stat.h"

namespace relayctl {
namespace {

constexpr const char* kHelp =
    "Usage: relayctl stat [--json | --prometheus] PATH...\n"
    "       relayctl stat --users [--json] PATH\n"
    "Shows the counters of every buffer PATH names: a relay file (one buffer; the merged view\n"
    "BASE gives sums over its channel), a channel DIR/BASE (all of BASE0, BASE1, ...), or a\n"
    "directory (every channel buffer below it, recursively).\n"
    "With --users: each user's channels, connections and channel memory in the mount that\n"
    "holds PATH, and the mount's limits (relayfs(8)).\n"
    "\n"
    "  -j, --json      JSON for scripts: an array of objects, one per buffer (with --users one\n"
    "                  object)\n"
    "      --prometheus\n"
    "                  Prometheus's text format (0.0.4), for node_exporter's textfile\n"
    "                  collector: families relayfs_COUNTER (relayfs_COUNTER_total for the\n"
    "                  totals), labels mount, channel and cpu. Write it to a temporary file\n"
    "                  and mv(1) that onto the .prom file, only if relayctl succeeded\n"
    "  -u, --users     the usage of each user instead of the counters\n"
    "  -h, --help      this help\n";

namespace core = relayfs::core;
namespace proto = relayfs::proto;

// The attributes shown, in this order (--json's keys): what describes the buffer ("mode" is
// text), then its counters, in relay(7)'s order (the list in core/stats.h).
constexpr size_t kCount = 2 + core::kCounterCount;
constexpr auto kShown = [] {
  std::array<size_t, kCount> a{proto::kAttrMode, proto::kAttrBlocking};
  for (size_t i = 0; i < core::kCounterCount; ++i) a[2 + i] = i;
  return a;
}();

// A failure collect met: reported, or kept in failures. Returns kExitError.
int fail(std::vector<std::string>* failures, const std::string& path, const std::string& what,
         int err) {
  if (!failures) return sys_error(path, what, err);
  failures->push_back(error_text(path, what, err));
  return kExitError;
}

}  // namespace

int read_row(const std::string& path, Row* row) {
  row->path = path;
  for (size_t i = 0; i < proto::kAttrCount; ++i) {
    char v[NAME_MAX + 1];  // the longest value: a channel's name, one directory entry
    const ssize_t n = ::getxattr(path.c_str(), proto::xattr_name(i).c_str(), v, sizeof v);
    if (n < 0) return -errno;
    row->values[i].assign(v, static_cast<size_t>(n));
  }
  return 0;
}

namespace {

// Adds the buffers below dir (recursively), skipping merged views (they repeat their buffers).
// Returns an exit status; failures go to fail. A directory gone meanwhile (below the PATH
// given, which is given: true) is passed over, as a file is.
int walk(const std::string& dir, std::vector<Row>* rows, std::vector<std::string>* failures,
         bool given = true) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  if (!d) return !given && errno == ENOENT ? kExitOk : fail(failures, dir, "", -errno);
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d.get()))
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
      names.emplace_back(e->d_name);
  std::sort(names.begin(), names.end());
  int status = kExitOk;
  for (const auto& name : names) {
    const std::string p = dir == "/" ? "/" + name : dir + "/" + name;
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) continue;  // drained and gone meanwhile
    if (S_ISDIR(st.st_mode)) {
      if (walk(p, rows, failures, false) != kExitOk) status = kExitError;
    } else if (S_ISREG(st.st_mode)) {
      Row r;
      const int err = read_row(p, &r);
      // The merged view BASE is the one file whose name is its channel's (its buffers are
      // BASE0, BASE1, ...).
      if (err == 0 && r["channel"] != name) rows->push_back(std::move(r));
      else if (err != 0 && err != -ENODATA && err != -ENOTSUP && err != -ENOENT)
        status = fail(failures, p, "", err);
    }
  }
  return status;
}

}  // namespace

int collect(const std::string& path, std::vector<Row>* rows, std::vector<std::string>* failures) {
  struct stat st;
  const bool exists = ::stat(path.c_str(), &st) == 0;
  const int missing = exists ? 0 : -errno;  // before channel_buffers sets errno again
  if (exists && S_ISDIR(st.st_mode)) return walk(path, rows, failures);
  std::string dir, name;
  if (split_path(path, &dir, &name)) {
    bool denied = false;
    const auto bufs = channel_buffers(dir, name, &denied);
    // The buffers are there but not for the caller: PATH is then no single file to stat (it
    // would be the merged view, as unreadable).
    if (denied) return fail(failures, path, "", -EACCES);
    if (!bufs.empty()) {
      int status = kExitOk;
      for (const auto& b : bufs) {
        Row r;
        if (int err = read_row(dir + "/" + b, &r); err == 0) rows->push_back(std::move(r));
        else if (err != -ENOENT)
          status = fail(failures, dir + "/" + b, "", err);
      }
      return status;
    }
  }
  if (!exists) return fail(failures, path, "", missing);
  Row r;
  if (int err = read_row(path, &r); err != 0)
    return fail(failures, path, err == -EACCES ? "" : "not a relay file",
                err == -ENODATA ? -ENOTSUP : err);
  rows->push_back(std::move(r));
  return kExitOk;
}

namespace {

void print_json_string(const std::string& s) {
  std::putchar('"');
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') std::printf("\\%c", c);
    else if (c < 0x20) std::printf("\\u%04x", c);
    else std::putchar(c);
  }
  std::putchar('"');
}

// A counter's value as the daemon writes it: decimal digits.
bool is_decimal(const std::string& v) {
  return !v.empty() && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
}

void print_json(const std::vector<Row>& rows) {
  std::printf("[");
  for (size_t r = 0; r < rows.size(); ++r) {
    std::printf("%s\n  {\"path\": ", r ? "," : "");
    print_json_string(rows[r].path);
    for (size_t i : kShown) {
      std::printf(", \"%s\": ", proto::attr_name(i));
      const std::string& v = rows[r].values[i];
      if (is_decimal(v)) std::fputs(v.c_str(), stdout);
      else print_json_string(v);
    }
    std::printf("}");
  }
  std::printf("%s]\n", rows.empty() ? "" : "\n");
}

// --prometheus: the text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/). One family per counter, in
// core/stats.h's order, named relayfs_COUNTER: a gauge for a level (core::is_level), else a
// counter with the suffix _total; then relayfs_buffer_info, which carries the mode. No
// timestamps: node_exporter's textfile collector refuses them.

// s escaped as the format wants: backslash and line feed always, the double quote in a label
// value (label) only.
std::string prom_escape(std::string_view s, bool label) {
  std::string out;
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '"' && label) out += "\\\"";
    else out += c;
  }
  return out;
}

// Where the buffers of a directory are: the mount point, and the directory's path below it
// ("" at the root), or err (-errno) if the directory could not be resolved.
struct Place {
  int err = 0;
  std::string mount, below;
};

// The labels of the buffer r, as `mount="…",channel="…",cpu="…"`, in *out: channel is its
// channel's path below the mount root, cpu the buffer's number in the file name. *out is empty
// for a merged view, which repeats its buffers' counters (collect gives one only when its
// buffers were gone as it looked). places caches each directory's Place. Returns 0 or -errno.
int labels(const Row& r, std::map<std::string, Place>* places, std::string* out) {
  out->clear();
  const std::string& channel = r.values[proto::kAttrChannel];
  std::string dir, name;
  unsigned long cpu;
  if (!split_path(r.path, &dir, &name) || !suffix_number(name, channel, &cpu)) return 0;
  const auto [at, fresh] = places->try_emplace(dir);
  Place& p = at->second;
  if (fresh) {
    std::string real;
    p.err = mount_root(dir, &p.mount, &real);
    // real is p.mount, or p.mount + "/" + below (p.mount + below if the mount is at "/").
    if (p.err == 0 && real.size() > p.mount.size())
      p.below = real.substr(p.mount.size() + (p.mount == "/" ? 0 : 1));
  }
  if (p.err != 0) return p.err;
  *out = "mount=\"" + prom_escape(p.mount, true) + "\",channel=\"" +
         prom_escape(p.below.empty() ? channel : p.below + "/" + channel, true) + "\",cpu=\"" +
         std::to_string(cpu) + "\"";
  return 0;
}

// rows' counters, in *text; a buffer named twice is shown once (Prometheus refuses a series
// twice). Returns an exit status; a buffer that cannot be labelled is reported and left out.
int format_prometheus(const std::vector<Row>& rows, std::string* text) {
  std::vector<std::pair<std::string, const Row*>> series;  // labels, buffer
  std::map<std::string, Place> places;
  std::set<std::string> seen;
  int status = kExitOk;
  for (const Row& r : rows) {
    std::string l;
    if (int err = labels(r, &places, &l); err != 0) {
      status = sys_error(r.path, "", err);
    } else if (!std::all_of(r.values, r.values + core::kCounterCount, is_decimal)) {
      status = sys_error(r.path, "a counter is not a number", -EPROTO);
    } else if (!l.empty() && seen.insert(l).second) {
      series.emplace_back(std::move(l), &r);
    }
  }
  if (series.empty()) return status;
  std::string& t = *text;
  auto family = [&t](const std::string& name, const char* help, const char* type) {
    t += "# HELP " + name + " " + prom_escape(help, false) + "\n# TYPE " + name + " " + type + "\n";
  };
  for (size_t i = 0; i < core::kCounterCount; ++i) {
    const bool level = core::is_level(i);
    const std::string name =
        std::string("relayfs_") + core::kCounterNames[i] + (level ? "" : "_total");
    family(name, core::kCounterHelp[i], level ? "gauge" : "counter");
    for (const auto& [l, r] : series) t += name + "{" + l + "} " + r->values[i] + "\n";
  }
  family("relayfs_buffer_info",
         "always 1: the buffer's mode (overwrite, subbuf_start or no-overwrite), and blocking 1 "
         "for a RELAY_BLOCKING channel",
         "gauge");
  for (const auto& [l, r] : series)
    t += "relayfs_buffer_info{" + l + ",mode=\"" + prom_escape(r->values[proto::kAttrMode], true) +
         "\",blocking=\"" + prom_escape(r->values[proto::kAttrBlocking], true) + "\"} 1\n";
  return status;
}

// Writes text to standard output (with write(2), so that a failure's errno is known). Returns 0
// or -errno.
int write_out(const std::string& text) {
  for (size_t at = 0; at < text.size();) {
    const ssize_t n = ::write(STDOUT_FILENO, text.data() + at, text.size() - at);
    if (n < 0 && errno != EINTR) return -errno;
    if (n > 0) at += static_cast<size_t>(n);
  }
  return 0;
}

// The table: geometry, mode, then the counters; column widths fit the values. LOST_BYTES sums
// the byte counters of loss other than UNCOMMITTED (--json has each).
enum Kind { kAttr, kPath, kGeometry, kLostBytes };
struct Col {
  const char* title;
  Kind kind;
  const char* attr = nullptr;  // kAttr: the attribute shown
};
constexpr Col kCols[] = {
    {"FILE", kPath},          {"MODE", kAttr, "mode"},
    {"GEOMETRY", kGeometry},  {"PRODUCED", kAttr, "bytes_produced"},
    {"CONSUMED", kAttr, "bytes_consumed"}, {"UNREAD", kAttr, "bytes_unread"},
    {"SB_PROD", kAttr, "subbufs_produced"}, {"SB_CONS", kAttr, "subbufs_consumed"},
    {"LOST_FULL", kAttr, "lost_full"}, {"TOO_BIG", kAttr, "lost_too_big"},
    {"WRAP", kAttr, "lost_wrap"}, {"OVERRUNS", kAttr, "overruns"},
    {"UNCOMMITTED", kAttr, "lost_uncommitted"}, {"LOST_BYTES", kLostBytes},
    {"CORRUPT", kAttr, "corrupt"}, {"REDELIVERED", kAttr, "redelivered_bytes"}};
constexpr const char* kGeometryNames[] = {
#define RELAYCTL_COUNTER_NAME(name, what) #name,
    RELAYFS_GEOMETRY_COUNTERS(RELAYCTL_COUNTER_NAME)};
constexpr const char* kLostByteNames[] = {RELAYFS_LOST_BYTE_COUNTERS(RELAYCTL_COUNTER_NAME)};
#undef RELAYCTL_COUNTER_NAME

// Every column names an attribute, and every counter has a column: its own, GEOMETRY or
// LOST_BYTES.
constexpr bool table_covers_counters() {
  for (const Col& c : kCols)
    if (c.attr && proto::attr_index(c.attr) == proto::kAttrCount) return false;
  for (std::string_view n : core::kCounterNames) {
    bool shown = false;
    for (const Col& c : kCols) shown = shown || (c.attr && n == c.attr);
    for (std::string_view g : kGeometryNames) shown = shown || n == g;
    for (std::string_view l : kLostByteNames) shown = shown || n == l;
    if (!shown) return false;
  }
  return true;
}
static_assert(table_covers_counters(), "relayctl stat: give the new counter a column");

void print_table(const std::vector<Row>& rows) {
  auto cell = [](const Row& r, const Col& c) -> std::string {
    switch (c.kind) {
      case kAttr:
        return r[c.attr];
      case kPath:
        return r.path;
      case kGeometry:
        return r["subbuf_size"] + "x" + r["n_subbufs"] + (r["blocking"] == "1" ? " blk" : "");
      case kLostBytes:
        break;
    }
    unsigned long long lost = 0;
    for (const char* name : kLostByteNames) lost += std::strtoull(r[name].c_str(), nullptr, 10);
    return std::to_string(lost);
  };
  std::vector<size_t> width;
  for (const Col& c : kCols) {
    size_t w = std::strlen(c.title);
    for (const Row& r : rows) w = std::max(w, cell(r, c).size());
    width.push_back(w);
  }
  auto line = [&](auto text) {
    for (size_t i = 0; i < std::size(kCols); ++i) {
      const std::string t = text(kCols[i]);
      // Text left-aligned, numbers right-aligned.
      if (i < 3) std::printf("%s%-*s", i ? "  " : "", static_cast<int>(width[i]), t.c_str());
      else std::printf("  %*s", static_cast<int>(width[i]), t.c_str());
    }
    std::putchar('\n');
  };
  line([](const Col& c) { return std::string(c.title); });
  for (const Row& r : rows) line([&](const Col& c) { return cell(r, c); });
}

}  // namespace

int cmd_stat(int argc, char** argv) {
  static const option kLong[] = {{"json", no_argument, nullptr, 'j'},
                                 {"users", no_argument, nullptr, 'u'},
                                 {"prometheus", no_argument, nullptr, 'P'},
                                 {"help", no_argument, nullptr, 'h'},
                                 {nullptr, 0, nullptr, 0}};
  bool json = false, users = false, prometheus = false;
  start_options();
  int c;
  while ((c = getopt_long(argc, argv, "juh", kLong, nullptr)) != -1) {
    if (c == 'j') {
      json = true;
    } else if (c == 'u') {
      users = true;
    } else if (c == 'P') {
      prometheus = true;
    } else if (c == 'h') {
      std::fputs(kHelp, stdout);
      return kExitOk;
    } else {
      return option_error("stat", c, argv);
    }
  }
  if (prometheus && (json || users))
    return usage_error("stat", json ? "--prometheus and --json exclude each other"
                                    : "--prometheus and --users exclude each other");
  if (optind == argc) return usage_error("stat", "missing PATH");
  if (users && optind + 1 != argc) return usage_error("stat", "--users takes one PATH");
  if (users) return stat_users(argv[optind], json);
  std::vector<Row> rows;
  int status = kExitOk;
  for (int i = optind; i < argc; ++i)
    if (collect(argv[i], &rows) != kExitOk) status = kExitError;
  // Output that did not all reach its file (a full disk) is a failure: a script that writes it
  // to a temporary file and renames that only on success never publishes half of it.
  if (prometheus) {
    std::string text;
    if (format_prometheus(rows, &text) != kExitOk) status = kExitError;
    if (int err = write_out(text); err != 0) return sys_error("standard output", "", err);
    return status;
  }
  if (json) print_json(rows);
  else if (!rows.empty()) print_table(rows);
  const int out_err = std::fflush(stdout) != 0 ? errno : std::ferror(stdout) ? EIO : 0;
  if (out_err != 0) return sys_error("standard output", "", -out_err);
  return status;
}

}  // namespace relayctl
