// The channel registry: every channel the daemon holds, by id, under a lock of its own, so that
// the event loop's doorbells and re-arms never wait for the tree.
//
// The daemon's lock order, written once here (tree.h refers to it):
//   Tree::mu  ->  Source::mu (a MergedView's before its RelayBuffers')
// Registry::mu, the Connections table's lock and each Connection's send lock are leaves: nothing
// else is taken while one of them is held. No lock is held across a system call that can block
// (the control sockets are non-blocking; memfd creation, mmap and io_uring registration happen
// with no lock held) nor across a FUSE reply, except that a Source's lock covers a reply built
// from its own shared mapping (a zero-copy read), which must not race with the consumer, and a
// spliced file's read(2), whose open file may be released as soon as the reply is out.
//
// A Channel's id, owner, flags and base are fixed when it is added; finalized, expired,
// idle_since and read_so_far are guarded by Tree::mu, since they decide whether its files stay
// in the tree.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "fs/channel.h"
#include "fs/table.h"

namespace relayfs::fs {

class Registry {
 public:
  uint32_t next_id() { return table_.next_id(); }
  void add(const std::shared_ptr<Channel>& ch) { table_.add(ch->id, ch); }
  std::shared_ptr<Channel> find(uint32_t id) { return table_.find(id); }
  // Takes it out; its last reference frees it.
  std::shared_ptr<Channel> take(uint32_t id) { return table_.take(id); }
  // The channels created by connection conn.
  std::vector<std::shared_ptr<Channel>> owned_by(uint64_t conn) {
    return table_.select([conn](const Channel& ch) { return ch.owner == conn; });
  }
  std::vector<std::shared_ptr<Channel>> all() {
    return table_.select([](const Channel&) { return true; });
  }

 private:
  Table<uint32_t, Channel> table_;
};

}  // namespace relayfs::fs
