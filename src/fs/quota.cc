#include "fs/quota.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/fd.h"

namespace relayfs::fs {

Limits default_limits() {
  struct sysinfo si {};
  Limits l;
  if (::sysinfo(&si) == 0) {
    const uint64_t ram = uint64_t{si.totalram} * si.mem_unit;
    // An eighth for one user, a quarter for all of them: however many attack, what they pin
    // leaves three quarters of RAM to everything else, the daemon's own heap included.
    l.user_memory = ram / 8;
    l.users_memory = ram / 4;
  }
  l.user_channels = 256;
  l.user_connections = 256;
  return l;
}

bool parse_limit(const std::string& text, bool size, uint64_t* out) {
  if (text == "unlimited") {
    *out = Limits::kUnlimited;
    return true;
  }
  if (text.empty() || text[0] < '0' || text[0] > '9') return false;  // no sign, no space
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0) return false;
  unsigned shift = 0;
  if (size && *end) {
    const char* suffixes = "KMGT";
    const char* s = std::strchr(suffixes, *end & ~0x20);  // either case
    if (!s) return false;
    shift = 10 * static_cast<unsigned>(s - suffixes + 1);
    ++end;
  }
  if (*end != '\0' || v > (ULLONG_MAX >> shift)) return false;
  *out = uint64_t{v} << shift;
  return *out != Limits::kUnlimited;  // that value means "unlimited": say so instead
}

Charge& Charge::operator=(Charge&& o) noexcept {
  if (this != &o) {
    reset();
    quota_ = std::exchange(o.quota_, nullptr);
    uid_ = o.uid_;
    channels_ = o.channels_;
    connections_ = o.connections_;
    memory_ = o.memory_;
  }
  return *this;
}

void Charge::reset() noexcept {
  if (Quota* q = std::exchange(quota_, nullptr)) q->release(*this);
}

namespace {

// a + b <= limit, without overflow.
bool fits(uint64_t a, uint64_t b, uint64_t limit) {
  return a <= limit && b <= limit - a;
}

}  // namespace

int Quota::charge_channel(uid_t uid, uint64_t memory, Charge* out, const char** why) {
  std::lock_guard lk(mu_);
  const bool limited = !exempt(uid);
  auto it = users_.find(uid);
  const Use now = it == users_.end() ? Use{} : it->second;
  *why = nullptr;
  if (limited) {
    if (!fits(now.channels, 1, limits_.user_channels))
      *why = "user_channels";
    else if (!fits(now.memory, memory, limits_.user_memory))
      *why = "user_memory";
    else if (!fits(others_.memory, memory, limits_.users_memory))
      *why = "users_memory";
    if (*why) return -EDQUOT;
  }
  Use& u = it == users_.end() ? users_[uid] : it->second;  // may throw: nothing changed yet
  out->reset();
  u.channels += 1;
  u.memory += memory;
  if (limited) {
    others_.channels += 1;
    others_.memory += memory;
  }
  out->quota_ = this;
  out->uid_ = uid;
  out->channels_ = 1;
  out->connections_ = 0;
  out->memory_ = memory;
  return 0;
}

int Quota::charge_connection(uid_t uid, Charge* out) {
  std::lock_guard lk(mu_);
  const bool limited = !exempt(uid);
  auto it = users_.find(uid);
  const uint64_t have = it == users_.end() ? 0 : it->second.connections;
  if (limited && !fits(have, 1, limits_.user_connections)) return -EDQUOT;
  Use& u = it == users_.end() ? users_[uid] : it->second;  // may throw: nothing changed yet
  out->reset();
  u.connections += 1;
  if (limited) others_.connections += 1;
  out->quota_ = this;
  out->uid_ = uid;
  out->channels_ = 0;
  out->connections_ = 1;
  out->memory_ = 0;
  return 0;
}

void Quota::release(const Charge& c) noexcept {
  std::lock_guard lk(mu_);
  auto it = users_.find(c.uid_);
  if (it == users_.end()) return;  // cannot be: every charge is in the table
  Use& u = it->second;
  u.channels -= std::min(u.channels, c.channels_);
  u.connections -= std::min(u.connections, c.connections_);
  u.memory -= std::min(u.memory, c.memory_);
  if (!exempt(c.uid_)) {
    others_.channels -= std::min(others_.channels, c.channels_);
    others_.connections -= std::min(others_.connections, c.connections_);
    others_.memory -= std::min(others_.memory, c.memory_);
  }
  // Only users holding something are listed; erase never throws.
  if (u.channels == 0 && u.connections == 0 && u.memory == 0) users_.erase(it);
}

std::string Quota::report(int64_t fds_open, uint64_t fd_limit, uint64_t fd_reserve) const {
  auto value = [](uint64_t v) {
    return v == Limits::kUnlimited ? std::string("unlimited") : std::to_string(v);
  };
  auto use = [](const Use& u) {
    return " channels=" + std::to_string(u.channels) +
           " connections=" + std::to_string(u.connections) + " memory=" + std::to_string(u.memory);
  };
  std::string out = "limits user_memory=" + value(limits_.user_memory) +
                    " users_memory=" + value(limits_.users_memory) +
                    " user_channels=" + value(limits_.user_channels) +
                    " user_connections=" + value(limits_.user_connections) + "\n";
  out += "descriptors open=" + (fds_open < 0 ? std::string("unknown") : std::to_string(fds_open)) +
         " limit=" + std::to_string(fd_limit) + " reserve=" + std::to_string(fd_reserve) + "\n";
  std::lock_guard lk(mu_);
  out += "limited" + use(others_) + "\n";
  for (const auto& [uid, u] : users_)
    out += "user uid=" + std::to_string(uid) + use(u) + (exempt(uid) ? " exempt\n" : "\n");
  return out;
}

void raise_nofile_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
  rl.rlim_cur = rl.rlim_max;
  if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) {
    // A hard limit above fs.nr_open (possible only for RLIM_INFINITY): take what is allowed.
    rl.rlim_cur = 1 << 20;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

void FdBudget::init() {
  rlimit rl{};
  limit_ = ::getrlimit(RLIMIT_NOFILE, &rl) == 0 ? rl.rlim_cur : 1024;
  // The reserve: what root and the mounter can still make when every other user is at the
  // edge. At least 256, which holds four per-CPU channels with their connections on up to 62
  // CPUs, and mmap readers and recordings besides; at least four such channels on a larger
  // machine; and an eighth of the limit, so that a daemon with a large limit (often 2^20)
  // keeps room in proportion while the others still get seven eighths of it.
  const uint64_t cpus = static_cast<uint64_t>(std::max(1, get_nprocs_conf()));
  reserve_ = std::max({uint64_t{256}, 4 * (cpus + 2), limit_ / 8});
}

int FdBudget::admit(uint64_t more) {
  const uint64_t room = limit_ > reserve_ ? limit_ - reserve_ : 0;
  if (fits(estimate_, more, room)) return 0;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_listing_) return -EDQUOT;  // listed a moment ago: the estimate stands
  const int64_t open = count_open();
  const auto took = std::chrono::steady_clock::now() - now;
  next_listing_ = now + 20 * took;
  if (open >= 0) estimate_ = static_cast<uint64_t>(open);
  return fits(estimate_, more, room) ? 0 : -EDQUOT;
}

int64_t FdBudget::count_open() {
  core::UniqueFd dir(::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return -1;
  // getdents64 straight: no DIR allocation, and a buffer of a few hundred entries per call.
  alignas(8) char buf[16384];
  int64_t n = 0;
  for (;;) {
    const long got = ::syscall(SYS_getdents64, dir.get(), buf, sizeof buf);
    if (got < 0) return -1;
    if (got == 0) break;
    for (long at = 0; at < got;) {
      const auto* e = reinterpret_cast<const dirent64*>(buf + at);
      if (e->d_name[0] != '.') ++n;
      at += e->d_reclen;
    }
  }
  return n - 1;  // less the descriptor of the listing itself
}

}  // namespace relayfs::fs
