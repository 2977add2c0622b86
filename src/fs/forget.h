// Forgetter: tells the kernel to drop the names of relay files the daemon took out of its tree,
// from a thread of its own.
//
// A node, and the buffer it holds (memfd and mapping), is freed only when the kernel sends
// FORGET, and the kernel keeps a dentry it has no reason to drop (entry_timeout 0 only makes it
// revalidate on the next lookup, which may never come): without this a daemon serving many
// short-lived channels kept every buffer it ever had. The notification (FUSE_NOTIFY_INVAL_ENTRY)
// takes the directory's lock in the kernel and can wait there for as long as a request holding
// that lock waits for the daemon; the soak test saw it block the event loop for over 5 s. So it
// runs here, where waiting delays nothing but the freeing, and writes to its own duplicate of
// the /dev/fuse descriptor, so that it never touches the session: at shutdown a notifier still
// blocked in the kernel is left behind rather than waited for.
#pragma once

#include <fuse_lowlevel.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/fd.h"

namespace relayfs::fs {

class Forgetter {
 public:
  Forgetter() = default;
  Forgetter(const Forgetter&) = delete;
  Forgetter& operator=(const Forgetter&) = delete;
  ~Forgetter() { stop(); }

  // Starts the thread with a duplicate of the session's /dev/fuse descriptor. Returns 0 or
  // -errno.
  int start(int fuse_fd);
  // Queues "name in directory parent is gone". Any thread; never blocks on the kernel.
  void gone(fuse_ino_t parent, const std::string& name);
  // Stops the thread: joins it, or leaves it behind if it is blocked in the kernel (it then ends
  // by itself when the kernel lets go, touching only its own state). Idempotent.
  void stop();

 private:
  struct Name {
    fuse_ino_t parent;
    std::string name;
  };
  // Shared with the thread, which may outlive this object (see stop).
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::vector<Name> queue;
    bool stopping = false;
    bool in_kernel = false;  // the thread is writing a notification
    core::UniqueFd fd;
  };
  static void run(std::shared_ptr<State> st);

  std::shared_ptr<State> st_;
  std::thread thread_;
};

}  // namespace relayfs::fs
