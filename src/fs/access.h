// Who may do what through the control socket: the permission checks path resolution and open(2)
// would make for a client's request, and the per-user limits (quota.h) a request must fit in.
// The kernel checks what comes through the mount (default_permissions); this checks the rest.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "fs/connection.h"
#include "fs/quota.h"
#include "fs/tree.h"

namespace relayfs::fs {

class RelayBuffer;

class Access {
 public:
  Access(Tree& tree, const Limits& limits) : tree_(tree), quota_(limits, ::getuid()) {}

  // May peer have `want` access (rwx bits, as for "other") to node n, and search every
  // directory above it? Requires Tree::mu held.
  bool may(const Node* n, mode_t want, const Peer& peer);
  // Creating entries in dir needs write and search permission on it. Requires Tree::mu held.
  bool may_create(const Node* dir, const Peer& peer);
  // The buffer of relay file ino, if peer may read it: 0, -ENOENT, -EINVAL (the merged view has
  // no one buffer), -EACCES. Takes Tree::mu.
  int readable_buffer(const Peer& peer, uint64_t ino, std::shared_ptr<RelayBuffer>* out);

  Quota& quota() { return quota_; }
  FdBudget& fds() { return fds_; }  // loop thread
  // Room for `more` descriptors a request of uid's would make the daemon keep: 0 for root and
  // the mounter, who may use the reserve, else FdBudget::admit's answer. Loop thread.
  int admit_fds(uid_t uid, uint64_t more) { return quota_.exempt(uid) ? 0 : fds_.admit(more); }
  // Says on stderr that a user was refused for limit `why`; at most once per 10 s. Loop thread.
  void note_refusal(uid_t uid, const char* what, const char* why);
  // The text of the users attribute (proto/names.h). Any thread; takes no tree lock (it lists
  // /proc/self/fd).
  std::string usage_report() const;

 private:
  Tree& tree_;
  Quota quota_;
  FdBudget fds_;                                               // loop thread
  std::chrono::steady_clock::time_point next_refusal_note_{};  // loop thread
  uint64_t refusals_unsaid_ = 0;                               // loop thread
};

}  // namespace relayfs::fs
