// Reattaching a channel to the next daemon after its daemon died (relay_open(3), "Daemon
// restarts"): where the channel lives, waiting cheaply for a relayfs to be mounted there again,
// and re-creating the directories it was in. The event thread of relay.cc drives it.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "core/fd.h"

namespace relayfs::client {

// Where a channel's files are: the root of the relayfs mount that holds its parent directory,
// and the directories from there down to the parent, with their permission bits.
struct Place {
  std::string root;  // absolute, no symbolic link: the mount point
  struct Dir {
    std::string name;  // one path component
    mode_t mode;
  };
  std::vector<Dir> dirs;  // root's subdirectories down to the parent, outermost first
};

// Finds parent's place: the highest directory above it on the same filesystem is the mount's
// root. Returns 0 or -errno.
int place_of(const char* parent, Place* out);

// Opens the mount's root as it is now, not through a symbolic link. Returns 0 or -errno
// (-ENOTCONN when a dead daemon's mount is still there).
int open_root(const Place& place, core::UniqueFd* root);

// The control socket name of the daemon serving root, an open directory (its kControlXattr),
// or -errno: -ENOTSUP when no relayfs is there.
int daemon_of(int root, std::string* name);

// Opens the parent directory under root, making the directories of place that are missing with
// their modes, as the calling process (the daemon checks its permission). Component by
// component, never through a symbolic link, and never off root's file system: only once the
// daemon at root is known to be the right one. Returns 0 with *ino its inode number, or -errno.
int open_parent(int root, const Place& place, ino_t* ino);

// Waits for the mount table to change: poll(2) on /proc/self/mountinfo, which reports every
// mount and unmount (POLLPRI), or on wake (POLLIN), or for timeout_ms. No busy loop: the thread
// sleeps in the kernel between changes.
class MountWatch {
 public:
  // Returns 0 or -errno.
  int open();
  // 1: the mount table changed; 2: wake is readable (its count is read); 0: timed out.
  int wait(int wake, int timeout_ms);

 private:
  core::UniqueFd mountinfo_;
};

}  // namespace relayfs::client
