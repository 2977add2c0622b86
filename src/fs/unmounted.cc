// The daemon ends when its filesystem is mounted nowhere any more. `umount -l MOUNTPOINT` (or
// `fusermount3 -u -z`) detaches the mount at once, but the kernel keeps the detached filesystem,
// and its FUSE connection, for as long as any file of it is open: a `tail -F` would keep the old
// daemon serving nobody new while it goes on consuming its producers' buffers, which the next
// daemon mounted at the same place could then never take over (relayfs(8), "RESTARTS AND
// UPGRADES"). So the loop watches the mount table (MountWatch, mountinfo.h) and, once the mount
// is gone, ends the FUSE session as SIGTERM does: main() then stops the daemon and closes
// /dev/fuse, which aborts the connection, so the readers still holding files get ENOTCONN, as
// from a dead daemon, and the process exits, closing the producers' control connections.
#include <poll.h>

#include <csignal>
#include <cstdio>
#include <cstring>

#include "fs/daemon.h"
#include "fs/ring_tag.h"

namespace relayfs::fs {

void Daemon::watch_mount(const std::string& dev) {
  // Without the watch the daemon works on; it then lives, as before, until the kernel ends the
  // session (the last file of a detached mount closed) or a signal does.
  if (dev.empty() || !se_) return;
  int rc = mounts_.open(dev, proto::kFsType);
  if (rc == 0) rc = loop_.watch(mounts_.fd(), tag(kMounts, 0), POLLPRI);
  if (rc != 0)
    std::fprintf(stderr,
                 "relayfs: cannot watch the mount table (%s): a lazily unmounted relayfs "
                 "lives on until its last file closes\n",
                 std::strerror(-rc));
}

void Daemon::on_mount_change() {
  if (mount_gone() || !mounts_.gone()) return;
  mount_gone_.store(true, std::memory_order_release);
  std::fprintf(stderr, "relayfs: no longer mounted anywhere: ending the session\n");
  end_session();
}

// Ends the session as libfuse's SIGTERM handler does: fuse_session_exit, and the signal
// interrupts the session thread's wait in fuse_session_loop_mt. That wait checks the flag
// before it sleeps, so a signal that lands between the check and the sleep would be lost: the
// signal is sent again every 100 ms until main() stops the loop.
void Daemon::end_session() {
  fuse_session_exit(se_);
  ::pthread_kill(session_thread_, SIGTERM);
  end_retry_ = {0, 100'000'000};
  if (loop_.timeout(&end_retry_, tag(kEndSession, 0)) != 0)
    std::fprintf(stderr, "relayfs: no room in the ring to end the session again\n");
}

}  // namespace relayfs::fs
