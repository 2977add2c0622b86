// Permission checks and limits for control requests (access.h).
#include "fs/access.h"

#include <unistd.h>

#include <cstdio>
#include <utility>

#include "fs/channel.h"
#include "proto/names.h"

namespace relayfs::fs {

bool Access::may(const Node* node, mode_t want, const Peer& peer) {
  if (peer.uid == 0) return true;
  auto allowed = [&](const Node* n, mode_t bits) {  // bits: as for "other"
    if (n->uid == peer.uid) return (n->mode & (bits << 6)) == (bits << 6);
    bool member = n->gid == peer.gid;
    for (gid_t g : peer.groups) member = member || g == n->gid;
    if (member) return (n->mode & (bits << 3)) == (bits << 3);
    return (n->mode & bits) == bits;
  };
  if (!allowed(node, want)) return false;
  for (Node* n = tree_.get(node->parent); n;
       n = n->ino == FUSE_ROOT_ID ? nullptr : tree_.get(n->parent))
    if (!allowed(n, S_IXOTH)) return false;
  return true;
}

bool Access::may_create(const Node* dir, const Peer& peer) {
  return may(dir, S_IWOTH | S_IXOTH, peer);
}

int Access::readable_buffer(const Peer& peer, uint64_t ino, std::shared_ptr<RelayBuffer>* out) {
  std::lock_guard lk(tree_.mu);
  Node* n = tree_.get(ino);
  RelayBuffer* b = n && n->parent && n->source ? n->source->buffer() : nullptr;
  if (!b) return n && n->parent && !n->is_dir() ? -EINVAL : -ENOENT;  // the merged view: none
  if (!may(n, S_IROTH, peer)) return -EACCES;
  *out = std::shared_ptr<RelayBuffer>(n->source, b);
  return 0;
}

void Access::note_refusal(uid_t uid, const char* what, const char* why) {
  const auto now = std::chrono::steady_clock::now();
  if (now < next_refusal_note_) {
    ++refusals_unsaid_;  // a user at a limit may ask again and again: not a line each time
    return;
  }
  next_refusal_note_ = now + std::chrono::seconds(10);
  const unsigned long long before = std::exchange(refusals_unsaid_, 0);
  std::fprintf(stderr, "relayfs: refused user %u %s: no room within %s (usage: %s)", uid, what, why,
               proto::kUsersXattr);
  if (before) std::fprintf(stderr, "; %llu refusals before it went unsaid", before);
  std::fputc('\n', stderr);
}

std::string Access::usage_report() const {
  return quota_.report(FdBudget::count_open(), fds_.limit(), fds_.reserve());
}

}  // namespace relayfs::fs
