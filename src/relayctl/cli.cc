// What the subcommands share: messages, numbers and the names of relay files (relayctl.h).
#include <dirent.h>
#include <getopt.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "proto/names.h"
#include "relayctl/relayctl.h"

namespace relayctl {

int usage_error(const char* cmd, const std::string& message) {
  std::fprintf(stderr, "relayctl: %s\nTry 'relayctl %s--help'.\n", message.c_str(),
               cmd ? (std::string(cmd) + " ").c_str() : "");
  return kExitUsage;
}

std::string error_text(const std::string& path, const std::string& what, int err) {
  return path + ": " + what + (what.empty() ? "" : ": ") + std::strerror(-err);
}

int report(const std::string& path, const std::string& what, int err) {
  std::fprintf(stderr, "relayctl: %s\n", error_text(path, what, err).c_str());
  return err;
}

int sys_error(const std::string& path, const std::string& what, int err) {
  report(path, what, err);
  return kExitError;
}

void note(const std::string& message) {
  std::fprintf(stderr, "relayctl: %s\n", message.c_str());
}

void start_options() {
  opterr = 0;
  optind = 1;
}

int option_error(const char* cmd, int c, char** argv) {
  const std::string opt = argv[optind - 1];
  return usage_error(cmd, c == ':' ? "option '" + opt + "' needs an argument"
                                   : "unknown option '" + opt + "'");
}

bool parse_size(const char* text, unsigned long long* out, bool allow_zero) {
  if (!text || *text < '0' || *text > '9') return false;  // no sign, no space, no empty
  errno = 0;
  char* end = nullptr;
  unsigned long long v = std::strtoull(text, &end, 10);
  if (errno != 0) return false;
  unsigned shift = 0;
  switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; ++end; break;
    case 'm': case 'M': shift = 20; ++end; break;
    case 'g': case 'G': shift = 30; ++end; break;
    default: return false;
  }
  if (*end != '\0' || (v > (ULLONG_MAX >> shift))) return false;
  v <<= shift;
  if (v == 0 && !allow_zero) return false;
  *out = v;
  return true;
}

bool parse_int(const char* text, long long lo, long long hi, long long* out) {
  if (!text || !*text) return false;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

std::string amount(double bytes) {
  char out[32];
  if (bytes >= 1 << 20)
    std::snprintf(out, sizeof out, "%.1f MiB", bytes / (1 << 20));
  else if (bytes >= 1 << 10)
    std::snprintf(out, sizeof out, "%.1f KiB", bytes / (1 << 10));
  else
    std::snprintf(out, sizeof out, "%.0f B", bytes);
  return out;
}

std::string amount_and_rate(double bytes, double seconds) {
  char s[32];
  std::snprintf(s, sizeof s, " in %.1f s, ", seconds);
  return amount(bytes) + s + amount(seconds > 0 ? bytes / seconds : 0.0) + "/s";
}

bool split_path(const std::string& path, std::string* dir, std::string* name) {
  const auto slash = path.rfind('/');
  std::string d = slash == std::string::npos ? std::string(".")
                  : slash == 0               ? std::string("/")
                                             : path.substr(0, slash);
  *name = slash == std::string::npos ? path : path.substr(slash + 1);
  *dir = std::move(d);
  return !name->empty() && *name != "." && *name != "..";
}

bool suffix_number(const std::string& name, const std::string& prefix, unsigned long* n) {
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string digits = name.substr(prefix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  if (digits.size() > 1 && digits[0] == '0') return false;
  if (digits.size() > 9) return false;
  *n = std::strtoul(digits.c_str(), nullptr, 10);
  return true;
}

std::vector<std::string> channel_buffers(const std::string& dir, const std::string& name,
                                         bool* denied) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), &::closedir);
  std::vector<std::pair<unsigned long, std::string>> found;
  bool eacces = false;
  if (denied) *denied = false;
  if (!d) return {};
  const std::string channel_xattr = relayfs::proto::xattr_name(relayfs::proto::kAttrChannel);
  while (const dirent* e = ::readdir(d.get())) {
    unsigned long n;
    if (!suffix_number(e->d_name, name, &n)) continue;
    // log2 may be channel log's third buffer, or another channel's merged view: the file's
    // channel attribute tells.
    char base[256];
    const ssize_t len =
        ::getxattr((dir + "/" + e->d_name).c_str(), channel_xattr.c_str(), base, sizeof base);
    if (len < 0 && errno == EACCES) eacces = true;
    if (len >= 0 && name.compare(0, std::string::npos, base, static_cast<size_t>(len)) == 0)
      found.emplace_back(n, e->d_name);
  }
  // With some buffers found, an unreadable candidate is taken for another channel's file: a
  // producer's create_buf_file gives its buffers one owner and mode in practice.
  if (denied) *denied = eacces && found.empty();
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& [n, f] : found) out.push_back(f);
  return out;
}

int mount_root(const std::string& path, std::string* root, std::string* resolved) {
  char real[PATH_MAX];
  if (!::realpath(path.c_str(), real)) return -errno;
  if (resolved) *resolved = real;
  std::string cur = real;
  struct stat st;
  if (::stat(cur.c_str(), &st) != 0) return -errno;
  if (!S_ISDIR(st.st_mode)) cur = cur.substr(0, std::max<size_t>(cur.rfind('/'), 1));
  if (::stat(cur.c_str(), &st) != 0) return -errno;
  while (cur != "/") {
    const std::string up = cur.substr(0, std::max<size_t>(cur.rfind('/'), 1));
    struct stat ust;
    if (::stat(up.c_str(), &ust) != 0 || ust.st_dev != st.st_dev) break;
    cur = up;
  }
  *root = std::move(cur);
  return 0;
}

}  // namespace relayctl
