// What users other than root and the mounter may hold in this daemon, so that none of them, nor
// all of them together, can take it down (relayfs(8), "Limits"):
//  - Quota: per-user accounting of channels, their memory and control connections, against the
//    mount's limits (-o user_memory, users_memory, user_channels, user_connections);
//  - FdBudget: the daemon's descriptors, of which a reserve stays for root and the mounter.
// A refusal is -EDQUOT. The usage is shown as the root directory's user.relayfs.users.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace relayfs::fs {

struct Limits {
  static constexpr uint64_t kUnlimited = UINT64_MAX;
  uint64_t user_memory = kUnlimited;   // bytes of channel buffers one user may hold
  uint64_t users_memory = kUnlimited;  // the same, all non-exempt users together
  uint64_t user_channels = kUnlimited;
  uint64_t user_connections = kUnlimited;
};

// The defaults: user_memory 1/8 and users_memory 1/4 of RAM (sysinfo(2)), 256 channels and
// 256 connections per user.
Limits default_limits();

// Parses a limit's value: a number, for a size with an optional K, M, G or T suffix (powers of
// 1024), or "unlimited". 0 is a limit too: nothing may be had. False if text is none of these or
// overflows.
bool parse_limit(const std::string& text, bool size, uint64_t* out);

class Quota;

// One channel's or one connection's share of its user's usage, held by the Channel or the
// Connection it is for and given back when that is freed (reset, or the destructor), however
// it is freed. Move-only.
class Charge {
 public:
  Charge() = default;
  Charge(const Charge&) = delete;
  Charge& operator=(const Charge&) = delete;
  Charge(Charge&& o) noexcept { *this = std::move(o); }
  Charge& operator=(Charge&& o) noexcept;
  ~Charge() { reset(); }
  void reset() noexcept;

 private:
  friend class Quota;
  Quota* quota_ = nullptr;
  uid_t uid_ = 0;
  uint64_t channels_ = 0, connections_ = 0, memory_ = 0;
};

// Each user's channels, their memory and control connections. Any thread: a leaf lock.
class Quota {
 public:
  Quota(const Limits& limits, uid_t mounter) : limits_(limits), mounter_(mounter) {}

  const Limits& limits() const { return limits_; }
  // Root and the mounter have no limits: the mounter's daemon is theirs, and root can do
  // anything anyway; so they can always make room (and open a channel to see what is wrong).
  bool exempt(uid_t uid) const { return uid == 0 || uid == mounter_; }

  // Charges uid one channel of `memory` bytes (every buffer's whole memfd: registration with
  // io_uring pins all of it). Returns 0 with *out holding the charge, or -EDQUOT: uid is not
  // exempt and would go over user_channels or user_memory, or all non-exempt users over
  // users_memory; *why then names the limit.
  int charge_channel(uid_t uid, uint64_t memory, Charge* out, const char** why);
  // Charges uid one control connection: 0, or -EDQUOT over user_connections.
  int charge_connection(uid_t uid, Charge* out);

  // The text of user.relayfs.users (relay(7), "Usage"); the descriptor figures come from the
  // caller.
  std::string report(int64_t fds_open, uint64_t fd_limit, uint64_t fd_reserve) const;

 private:
  friend class Charge;
  struct Use {
    uint64_t channels = 0, connections = 0, memory = 0;
  };
  void release(const Charge& c) noexcept;

  const Limits limits_;
  const uid_t mounter_;
  mutable std::mutex mu_;
  std::map<uid_t, Use> users_;  // every user holding something, exempt or not
  Use others_;                  // the sum over the non-exempt users: what users_memory limits
};

// The daemon's descriptors: RLIMIT_NOFILE (soft raised to hard at start, raise_nofile_limit),
// of which `reserve` stay for root and the mounter. Loop thread only, but for count_open.
//
// Counting: there is no system call for "how many descriptors are open"; /proc/self/fd has to
// be listed, at about 0.5 us per descriptor (12 ms at 18,000). So the budget keeps an estimate
// that cannot be below the truth: the exact count of the last listing plus every descriptor
// the loop made since (made()), closings ignored. Every descriptor that scales with what users
// do is made on the loop thread: accepted connections, doorbells and buffers of channels,
// descriptors received in messages, readers' read-only opens. The only others made after
// start are libfuse's (a /dev/fuse clone per worker thread with clone_fd), bounded by its
// thread count, far below the reserve. A request whose estimate reaches into the reserve lists
// /proc/self/fd again and decides by the exact count, but not more often than every 20 times
// as long as the last listing took: a user who keeps asking at the edge costs the loop at most
// 5%, at the price of refusals that may lag a freed descriptor by that long.
class FdBudget {
 public:
  // Reads the limit and sets the reserve. After raise_nofile_limit.
  void init();
  // Whether `more` descriptors may be made for a user who is not exempt: 0, or -EDQUOT when
  // the open ones and those would reach into the reserve.
  int admit(uint64_t more);
  // n descriptors were made (for anyone).
  void made(uint64_t n) { estimate_ += n; }

  uint64_t limit() const { return limit_; }
  uint64_t reserve() const { return reserve_; }
  // The exact number of descriptors open now, from /proc/self/fd; -1 if it cannot be listed
  // (then admit goes by its estimate). Any thread.
  static int64_t count_open();

 private:
  uint64_t limit_ = 0, reserve_ = 0;
  uint64_t estimate_ = UINT64_MAX / 2;  // unknown: the first request lists
  std::chrono::steady_clock::time_point next_listing_{};
  std::chrono::steady_clock::duration last_listing_{};
};

// Raises RLIMIT_NOFILE's soft limit to its hard limit, as far as the kernel lets it. At start,
// before any thread.
void raise_nofile_limit();

}  // namespace relayfs::fs
