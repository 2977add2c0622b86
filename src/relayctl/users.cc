// relayctl stat --users: each user's channels, connections and channel memory in a mount, with
// the mount's limits, read from the user.relayfs.users attribute of its root directory
// (relay(7), "Usage"), as a table or as JSON.
#include <pwd.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "proto/names.h"
#include "relayctl/relayctl.h"

namespace relayctl {
namespace {

using relayfs::proto::kUsersXattr;

// One line of the attribute: its first word, then name=value words in order ("exempt" has no
// value).
struct Line {
  std::string kind;
  std::vector<std::pair<std::string, std::string>> fields;
  std::string get(const std::string& name) const {
    for (const auto& [k, v] : fields)
      if (k == name) return v;
    return "";
  }
  bool has(const std::string& name) const {
    return std::any_of(fields.begin(), fields.end(),
                       [&](const auto& f) { return f.first == name; });
  }
};

std::vector<Line> parse(const std::string& text) {
  std::vector<Line> lines;
  std::istringstream in(text);
  std::string s;
  while (std::getline(in, s)) {
    std::istringstream words(s);
    Line l;
    if (!(words >> l.kind)) continue;
    for (std::string w; words >> w;) {
      const auto eq = w.find('=');
      l.fields.emplace_back(w.substr(0, eq), eq == std::string::npos ? "" : w.substr(eq + 1));
    }
    lines.push_back(std::move(l));
  }
  return lines;
}

// The attribute's text, in *out. Returns 0 or -errno (-ERANGE if it kept growing).
int read_usage(const std::string& root, std::string* out) {
  for (int attempt = 0; attempt < 4; ++attempt) {
    const ssize_t size = ::getxattr(root.c_str(), kUsersXattr, nullptr, 0);
    if (size < 0) return -errno;
    std::vector<char> buf(static_cast<size_t>(size) + 4096);  // room for a user arriving
    const ssize_t n = ::getxattr(root.c_str(), kUsersXattr, buf.data(), buf.size());
    if (n >= 0) {
      out->assign(buf.data(), static_cast<size_t>(n));
      return 0;
    }
    if (errno != ERANGE) return -errno;
  }
  return -ERANGE;
}

std::string user_name(const std::string& uid) {
  char* end = nullptr;
  const unsigned long id = std::strtoul(uid.c_str(), &end, 10);
  const passwd* pw = uid.empty() || *end ? nullptr : ::getpwuid(static_cast<uid_t>(id));
  return pw ? pw->pw_name : "-";
}

// A value as JSON: digits as a number, "unlimited" and "unknown" as null, the rest as a string.
std::string json_value(const std::string& v) {
  if (!v.empty() && std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return v;
  if (v == "unlimited" || v == "unknown") return "null";
  std::string s = "\"";
  for (unsigned char c : v) {
    if (c == '"' || c == '\\') s += '\\';
    if (c < 0x20) continue;
    s += static_cast<char>(c);
  }
  return s + "\"";
}

std::string json_object(const Line& l) {
  std::string s = "{";
  for (const auto& [k, v] : l.fields)
    if (k != "exempt" && k != "uid")
      s += (s.size() > 1 ? ", \"" : "\"") + k + "\": " + json_value(v);
  return s + "}";
}

void print_json(const std::vector<Line>& lines) {
  std::string users;
  std::printf("{");
  bool first = true;
  for (const Line& l : lines) {
    if (l.kind == "user") {
      const std::string counts = json_object(l);  // "{...}"
      const std::string o = "{\"uid\": " + json_value(l.get("uid")) +
                            ", \"user\": " + json_value(user_name(l.get("uid"))) +
                            ", \"exempt\": " + (l.has("exempt") ? "true" : "false") +
                            (counts.size() > 2 ? ", " + counts.substr(1) : "}");
      users += (users.empty() ? "\n    " : ",\n    ") + o;
      continue;
    }
    std::printf("%s\n  \"%s\": %s", first ? "" : ",", l.kind.c_str(), json_object(l).c_str());
    first = false;
  }
  std::printf("%s\n  \"users\": [%s%s]\n}\n", first ? "" : ",", users.c_str(),
              users.empty() ? "" : "\n  ");
}

void print_table(const std::vector<Line>& lines) {
  std::vector<std::vector<std::string>> rows = {
      {"UID", "USER", "CHANNELS", "CONNECTIONS", "MEMORY", ""}};
  const Line* limits = nullptr;
  const Line* limited = nullptr;
  const Line* fds = nullptr;
  for (const Line& l : lines) {
    if (l.kind == "user")
      rows.push_back({l.get("uid"), user_name(l.get("uid")), l.get("channels"),
                      l.get("connections"), l.get("memory"), l.has("exempt") ? "exempt" : ""});
    else if (l.kind == "limits")
      limits = &l;
    else if (l.kind == "limited")
      limited = &l;
    else if (l.kind == "descriptors")
      fds = &l;
  }
  std::vector<size_t> width(rows[0].size());
  for (const auto& r : rows)
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  for (const auto& r : rows) {
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      // Text left-aligned, numbers right-aligned, as in relayctl stat's table.
      const std::string pad(width[i] - r[i].size(), ' ');
      line += (i ? "  " : "") + (i >= 2 && i <= 4 ? pad + r[i] : r[i] + pad);
    }
    line.erase(line.find_last_not_of(' ') + 1);
    std::printf("%s\n", line.c_str());
  }
  if (limits)
    std::printf("limits: each user %s channels, %s connections, %s bytes; all users %s bytes\n",
                limits->get("user_channels").c_str(), limits->get("user_connections").c_str(),
                limits->get("user_memory").c_str(), limits->get("users_memory").c_str());
  if (limited)
    std::printf("held by users with limits: %s channels, %s connections, %s bytes\n",
                limited->get("channels").c_str(), limited->get("connections").c_str(),
                limited->get("memory").c_str());
  if (fds)
    std::printf("daemon descriptors: %s open, limit %s, %s kept for root and the mounter\n",
                fds->get("open").c_str(), fds->get("limit").c_str(), fds->get("reserve").c_str());
}

}  // namespace

int stat_users(const std::string& path, bool json) {
  std::string root;
  if (int err = mount_root(path, &root); err) return sys_error(path, "", err);
  std::string text;
  if (int err = read_usage(root, &text); err)
    return err == -ENODATA || err == -ENOTSUP ? sys_error(path, "not in a relayfs mount", -ENOTSUP)
                                              : sys_error(root, "", err);
  const std::vector<Line> lines = parse(text);
  if (json)
    print_json(lines);
  else
    print_table(lines);
  return kExitOk;
}

}  // namespace relayctl
