// relayctl fetch's outputs (fetch_output.h).
#include "relayctl/fetch_output.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

namespace relayctl::fetch {
namespace {

constexpr const char* kStateMagic = "relayctl-fetch-state 1";
constexpr size_t kMaxStateBytes = 64 << 20;  // kMaxGenerations of kMaxGeneration, and more

bool printable_ascii(char c) {
  return c >= 0x20 && c <= 0x7e;
}

// "" if name may be a file name of an output path (one component), else why not.
std::string check_name(const std::string& name, size_t max) {
  if (name.empty()) return "an empty name";
  if (name.size() > max) return "a name longer than " + std::to_string(max) + " bytes";
  if (name == "." || name == "..") return "a name that is '.' or '..'";
  for (char c : name) {
    if (c == '/') return "a '/'";
    if (!printable_ascii(c)) return "a character that is not printable ASCII";
  }
  return "";
}

std::string check_channel(const std::string& channel) {
  if (channel.empty()) return "empty";
  if (channel.size() > kMaxChannel) return "longer than " + std::to_string(kMaxChannel) + " bytes";
  if (channel[0] == '/') return "begins with '/'";
  size_t at = 0;
  while (at <= channel.size()) {
    const size_t slash = std::min(channel.find('/', at), channel.size());
    if (std::string why = check_name(channel.substr(at, slash - at), kMaxComponent); !why.empty())
      return "has " + why;
    at = slash + 1;
  }
  return "";
}

// Decimal digits only (no sign, no space), at most max_digits of them, value below limit.
bool parse_decimal(const std::string& text, size_t max_digits, uint64_t limit, uint64_t* out) {
  if (text.empty() || text.size() > max_digits ||
      text.find_first_not_of("0123456789") != std::string::npos)
    return false;
  uint64_t v = 0;
  for (char c : text) {
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  if (v >= limit) return false;
  *out = v;
  return true;
}

std::string errno_text(int err) {
  return std::strerror(-err);
}

// The whole of a small file, through fd. Returns 0 or a negative errno (-EFBIG past max).
int read_all(int fd, size_t max, std::string* out) {
  out->clear();
  char chunk[65536];
  for (off_t at = 0;;) {
    const ssize_t n = ::pread(fd, chunk, sizeof chunk, at);
    if (n < 0) return -errno;
    if (n == 0) return 0;
    out->append(chunk, static_cast<size_t>(n));
    if (out->size() > max) return -EFBIG;
    at += n;
  }
}

int write_all(int fd, const void* data, size_t len, off_t at) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    const ssize_t n = ::pwrite(fd, p, len, at);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    p += n;
    len -= static_cast<size_t>(n);
    at += n;
  }
  return 0;
}

}  // namespace

std::string read_labels(natsMsg* msg, Labels* out) {
  auto header = [msg](const char* key, std::string* value) {
    const char* v = nullptr;
    if (natsMsgHeader_Get(msg, key, &v) != NATS_OK || v == nullptr) return false;
    *value = v;
    return true;
  };
  std::string cpu, subbuf;
  if (!header("Relayfs-Host", &out->host)) return "no Relayfs-Host header";
  if (!header("Relayfs-Channel", &out->channel)) return "no Relayfs-Channel header";
  if (!header("Relayfs-Cpu", &cpu)) return "no Relayfs-Cpu header";
  if (!header("Relayfs-Subbuf", &subbuf)) return "no Relayfs-Subbuf header";
  if (!header("Relayfs-Generation", &out->generation)) return "no Relayfs-Generation header";
  if (std::string why = check_name(out->host, kMaxHost); !why.empty())
    return "Relayfs-Host '" + printable(out->host) + "' has " + why;
  // A host name: letters, digits, '-', '_' and '.', nothing a shell or a terminal minds.
  if (out->host.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789-_.") != std::string::npos)
    return "Relayfs-Host '" + printable(out->host) +
           "' is not a host name (letters, digits, "
           "'-', '_', '.')";
  if (std::string why = check_channel(out->channel); !why.empty())
    return "Relayfs-Channel '" + printable(out->channel) + "' " + why;
  uint64_t v = 0;
  if (!parse_decimal(cpu, 4, kMaxCpu, &v))
    return "Relayfs-Cpu '" + printable(cpu) + "' is not a number below " + std::to_string(kMaxCpu);
  out->cpu = static_cast<unsigned>(v);
  if (!parse_decimal(subbuf, 20, UINT64_MAX, &out->subbuf))
    return "Relayfs-Subbuf '" + printable(subbuf) + "' is not a decimal number";
  const std::string& g = out->generation;
  if (g.empty() || g.size() > kMaxGeneration ||
      !std::all_of(g.begin(), g.end(), [](char c) { return c > 0x20 && c < 0x7f; }))
    return "Relayfs-Generation '" + printable(g) + "' is not 1 to " +
           std::to_string(kMaxGeneration) + " printable characters without spaces";
  return "";
}

std::string printable(const std::string& text, size_t max) {
  std::string out;
  for (unsigned char c : text) {
    if (out.size() >= max) return out + "...";
    if (printable_ascii(static_cast<char>(c)) && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out;
}

std::optional<uint32_t> OutputState::gen_index(const std::string& g) {
  if (auto it = index_.find(g); it != index_.end()) return it->second;
  if (gens.size() >= kMaxGenerations) return std::nullopt;
  const auto i = static_cast<uint32_t>(gens.size());
  gens.push_back(g);
  index_.emplace(g, i);
  return i;
}

bool OutputState::holds(Pos p) const {
  return (floor && p <= *floor) || written.count(p) != 0;
}

std::optional<Pos> OutputState::high() const {
  if (!written.empty()) return *written.rbegin();
  return floor;
}

void OutputState::add(Pos p, uint64_t bytes, size_t window) {
  written.insert(p);
  length += bytes;
  // The smallest leaves the set for the floor: every position below it is then taken as held.
  while (written.size() > std::max<size_t>(window, 1)) {
    floor = *written.begin();
    written.erase(written.begin());
  }
}

std::string OutputState::format() const {
  std::string s = std::string(kStateMagic) + "\nhost " + host + "\nchannel " + channel + "\ncpu " +
                  std::to_string(cpu) + "\nlength " + std::to_string(length) + "\n";
  for (const std::string& g : gens) s += "gen " + g + "\n";
  if (floor)
    s += "floor " + std::to_string(floor->gen) + " " + std::to_string(floor->subbuf) + "\n";
  if (!written.empty()) {
    s += "written";
    for (const Pos& p : written) s += " " + std::to_string(p.gen) + ":" + std::to_string(p.subbuf);
    s += "\n";
  }
  return s + "end\n";
}

int OutputState::parse(const std::string& text) {
  if (text.empty()) return -ENODATA;
  *this = OutputState();
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || line != kStateMagic) return -EINVAL;
  bool have_cpu = false, have_length = false;
  auto pos_of = [this](const std::string& g, const std::string& s, Pos* p) {
    uint64_t gi = 0;
    return parse_decimal(g, 10, gens.size(), &gi) && parse_decimal(s, 20, UINT64_MAX, &p->subbuf) &&
           ((p->gen = static_cast<uint32_t>(gi)), true);
  };
  while (std::getline(in, line)) {
    if (line == "end") {
      if (!have_cpu || !have_length || host.empty() || channel.empty()) return -EINVAL;
      for (const Pos& p : written)
        if (floor && p <= *floor) return -EINVAL;
      return 0;
    }
    const size_t sp = line.find(' ');
    if (sp == std::string::npos) return -EINVAL;
    const std::string key = line.substr(0, sp), value = line.substr(sp + 1);
    uint64_t v = 0;
    if (key == "host") {
      host = value;
    } else if (key == "channel") {
      channel = value;
    } else if (key == "cpu") {
      if (!parse_decimal(value, 4, kMaxCpu, &v)) return -EINVAL;
      cpu = static_cast<unsigned>(v);
      have_cpu = true;
    } else if (key == "length") {
      if (!parse_decimal(value, 20, UINT64_MAX, &length)) return -EINVAL;
      have_length = true;
    } else if (key == "gen") {
      if (value.empty() || index_.count(value) || gens.size() >= kMaxGenerations) return -EINVAL;
      index_.emplace(value, static_cast<uint32_t>(gens.size()));
      gens.push_back(value);
    } else if (key == "floor") {
      const size_t sp2 = value.find(' ');
      Pos p;
      if (sp2 == std::string::npos || !pos_of(value.substr(0, sp2), value.substr(sp2 + 1), &p))
        return -EINVAL;
      floor = p;
    } else if (key == "written") {
      std::istringstream words(value);
      for (std::string w; words >> w;) {
        const size_t colon = w.find(':');
        Pos p;
        if (colon == std::string::npos || !pos_of(w.substr(0, colon), w.substr(colon + 1), &p))
          return -EINVAL;
        written.insert(p);
      }
    } else {
      return -EINVAL;
    }
  }
  return -EINVAL;  // no "end": cut short
}

int Output::open(const OutputDir& outdir, const std::string& outdir_path, const Labels& labels,
                 mode_t mode, size_t window, std::string* why) {
  window_ = std::max<size_t>(window, 1);
  const size_t slash = labels.channel.rfind('/');
  const std::string rel =
      labels.host + (slash == std::string::npos ? "" : "/" + labels.channel.substr(0, slash));
  const std::string name = labels.channel.substr(slash == std::string::npos ? 0 : slash + 1) +
                           std::to_string(labels.cpu);
  const std::string state_name = name + ".state";
  const std::string dir_path = outdir_path + "/" + rel;
  path_ = dir_path + "/" + name;
  state_path_ = path_ + ".state";
  auto fail = [why](const std::string& where, const std::string& what, int err) {
    *why = where + ": " + what;
    return err;
  };
  // A system call's failure, errno read before anything else may change it.
  auto failed = [&fail](const std::string& where, const std::string& what = "") {
    const int err = -errno;
    return fail(where, what + errno_text(err), err);
  };

  OutputDir dir;
  if (int rc = outdir.open_below(rel, &dir); rc != 0) {
    switch (rc) {
      case -ELOOP:
        return fail(dir_path,
                    "a symbolic link on the way: fetch never follows one below OUTDIR",
                    rc);
      case -EPERM:
        return fail(dir_path, "another user controls a directory on the way", rc);
      case -ENOTDIR:
        return fail(dir_path,
                    "something that is not a directory on the way (another channel's "
                    "file of the same name?)",
                    rc);
      default:
        return fail(dir_path, errno_text(rc), rc);
    }
  }
  auto reopen_error = [&](const std::string& path, int rc) {
    switch (rc) {
      case -ELOOP:
        return fail(path, "a symbolic link (never followed)", rc);
      case -EPERM:
        return fail(path, "another user's file", rc);
      case -EINVAL:
        return fail(path, "not a regular file with one link", rc);
      default:
        return fail(path, errno_text(rc), rc);
    }
  };

  // The state first, the file second: a file without its state is never one fetch made.
  bool fresh = false;
  if (int rc = dir.reopen(state_name, O_RDWR, &state_fd_); rc == -ENOENT) {
    struct stat st;
    if (::fstatat(dir.fd(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0)
      return fail(path_,
                  "exists without " + state_name +
                      ": not a file relayctl fetch wrote; move it away or choose another OUTDIR",
                  -EEXIST);
    if ((rc = dir.create(state_name, 0, &state_fd_)) != 0)
      return fail(state_path_, errno_text(rc), rc);
    if (::fchmod(state_fd_.get(), mode) != 0) return failed(state_path_);
    fresh = true;
  } else if (rc != 0) {
    return reopen_error(state_path_, rc);
  }
  if (!fresh) {
    std::string text;
    if (int rc = read_all(state_fd_.get(), kMaxStateBytes, &text); rc != 0)
      return fail(state_path_, errno_text(rc), rc);
    const int rc = state_.parse(text);
    if (rc == -ENODATA) {
      fresh = true;  // made, then killed before its first state: nothing of the file counts
    } else if (rc != 0) {
      return fail(state_path_, "not a state relayctl fetch wrote (damaged, or changed since)", rc);
    } else if (state_.host != labels.host || state_.channel != labels.channel ||
               state_.cpu != labels.cpu) {
      return fail(path_,
                  "holds host " + printable(state_.host) + " channel " + printable(state_.channel) +
                      " cpu " + std::to_string(state_.cpu) +
                      ": two channels map to this one file name",
                  -EEXIST);
    }
  }
  if (fresh) {
    state_ = OutputState();
    state_.host = labels.host;
    state_.channel = labels.channel;
    state_.cpu = labels.cpu;
  }

  if (int rc = dir.reopen(name, O_RDWR, &data_); rc == -ENOENT) {
    if (state_.length != 0)
      return fail(path_,
                  "missing, though " + state_name + " says it holds " +
                      std::to_string(state_.length) + " bytes",
                  rc);
    if ((rc = dir.create(name, 0, &data_)) != 0) return fail(path_, errno_text(rc), rc);
    if (::fchmod(data_.get(), mode) != 0) return failed(path_);
  } else if (rc != 0) {
    return reopen_error(path_, rc);
  }
  struct stat st;
  if (::fstat(data_.get(), &st) != 0) return failed(path_);
  if (static_cast<uint64_t>(st.st_size) < state_.length)
    return fail(path_,
                std::to_string(st.st_size) + " bytes, fewer than the " +
                    std::to_string(state_.length) + " its state says it holds (changed since)",
                -EINVAL);
  // Bytes past the state's length were written by a run that did not live to save its state:
  // their messages were not acknowledged and come again.
  if (::ftruncate(data_.get(), static_cast<off_t>(state_.length)) != 0)
    return failed(path_, "truncate: ");
  return 0;
}

void Output::take(Pos p, nats::MsgPtr msg, std::vector<nats::MsgPtr>* ack, Totals* t) {
  if (state_.holds(p)) {
    ++t->duplicates;
    ack->push_back(std::move(msg));
    return;
  }
  auto [it, added] = pending_.try_emplace(p);
  if (!added) {
    // A redelivery (an acknowledgement wait that ran out), or the same sub-buffer published
    // twice: written once, and every copy acknowledged only then.
    ++t->duplicates;
    it->second.copies.push_back(std::move(msg));
    return;
  }
  pending_bytes_ += static_cast<uint64_t>(natsMsg_GetDataLength(msg.get()));
  it->second.msg = std::move(msg);
}

int Output::drain(bool all, std::vector<nats::MsgPtr>* ack, Totals* t, std::string* why) {
  while (!pending_.empty()) {
    auto it = pending_.begin();
    const Pos p = it->first;
    const std::optional<Pos> high = state_.high();
    const bool late = high && p < *high;
    const bool next = high && p.gen == high->gen && p.subbuf == high->subbuf + 1;
    if (!all && !late && !next && pending_.size() < window_) break;
    if (int rc = write(p, it->second, ack, t, why); rc != 0) return rc;
    if (late) ++t->late;
    pending_.erase(it);
  }
  return 0;
}

int Output::write(Pos p, Waiting& w, std::vector<nats::MsgPtr>* ack, Totals* t, std::string* why) {
  const auto len = static_cast<size_t>(natsMsg_GetDataLength(w.msg.get()));
  if (int rc = write_all(data_.get(), natsMsg_GetData(w.msg.get()), len,
                         static_cast<off_t>(state_.length));
      rc != 0) {
    *why = path_ + ": write: " + errno_text(rc);
    return rc;
  }
  pending_bytes_ -= len;
  state_.add(p, len, window_);
  dirty_ = true;
  t->bytes += len;
  ++t->messages;
  wrote_ = true;
  ack->push_back(std::move(w.msg));
  for (nats::MsgPtr& m : w.copies) ack->push_back(std::move(m));
  return 0;
}

int Output::save(std::string* why) {
  if (!dirty_) return 0;
  if (::fdatasync(data_.get()) != 0) {
    const int err = -errno;
    *why = path_ + ": sync: " + errno_text(err);
    return err;
  }
  const std::string text = state_.format();
  int rc = write_all(state_fd_.get(), text.data(), text.size(), 0);
  if (rc == 0 && ::ftruncate(state_fd_.get(), static_cast<off_t>(text.size())) != 0) rc = -errno;
  if (rc == 0 && ::fdatasync(state_fd_.get()) != 0) rc = -errno;
  if (rc != 0) {
    *why = state_path_ + ": write: " + errno_text(rc);
    return rc;
  }
  dirty_ = false;
  return 0;
}

}  // namespace relayctl::fetch
