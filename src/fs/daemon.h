// The relayfs daemon: the parts, wired together. It owns the tree, the channel registry, the
// event loop, the control server with its connections, the recorder, the relay files' read side
// and the FUSE operations on the tree; it implements what the parts ask of each other (Hooks)
// and what the loop hands over (LoopHandler). See doc/architecture.md.
//
// Threads: libfuse's workers call ops and files; the loop thread runs everything else.
#pragma once

#include <fuse_lowlevel.h>
#include <linux/time_types.h>
#include <pthread.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "fs/access.h"
#include "fs/connection.h"
#include "fs/control.h"
#include "fs/files.h"
#include "fs/forget.h"
#include "fs/hooks.h"
#include "fs/loop.h"
#include "fs/mountinfo.h"
#include "fs/ops.h"
#include "fs/options.h"
#include "fs/record.h"
#include "fs/registry.h"
#include "fs/tree.h"

namespace relayfs::fs {

class Daemon final : public Hooks, public LoopHandler {
 public:
  explicit Daemon(const Options& o);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Creates the control socket and the ring and starts the loop thread, for session se (its
  // /dev/fuse descriptor tells the kernel which names to forget). Called from the thread that
  // then runs the session loop. mount_dev: the device of the mount se made (mounted_dev), whose
  // disappearance from the mount table ends the session (unmounted.cc); "" for none. Returns 0
  // or -errno.
  int start(fuse_session* se, const std::string& mount_dev = {});
  // Stops the loop thread; parked reads are answered with EOF, or ENOTCONN if the mount is gone.
  // Call after the FUSE session ends.
  void stop();
  // True once the session was ended because the filesystem is mounted nowhere any more: the
  // mount point may hold another mount by now, which is not this daemon's to unmount. Read after
  // stop().
  bool mount_gone() const { return mount_gone_.load(std::memory_order_acquire); }

  const std::string& control_name() const { return control_.name(); }

  // Hooks.
  void news(const std::shared_ptr<Source>& s) override;
  void finalize(const std::shared_ptr<Channel>& ch) override;
  void maybe_remove(uint32_t channel_id) noexcept override;
  void notify_owner(const Source& s, bool mapped) noexcept override;
  void waiting() noexcept override { arm_recheck(); }

  // LoopHandler.
  void on_completions(const std::vector<Completion>& batch) override;
  void on_posted(const LoopEvent& ev) override;

 private:
  void dispatch(uint64_t ud, int res);
  void rearm(uint64_t ud);
  void remove_drained(uint32_t channel_id);
  void free_channel(uint32_t id);
  void on_doorbell(uint32_t channel_id);
  // -o orphan_timeout (expire.cc): the loop's timer, and what it frees when it fires.
  void arm_expiry();
  void expire_orphans();
  // The doorbell's backstop (recheck.cc): while a reader waits, every source is looked at again
  // each tick, so that a ring the kernel's membarrier let slip costs a tick, not the wait.
  void arm_recheck() noexcept;
  void recheck();
  // The mount table changed (unmounted.cc): the session ends if the mount is gone.
  void watch_mount(const std::string& dev);
  void on_mount_change();
  void end_session();

  const Options opts_;
  Tree tree_;
  // Before the channels and connections whose charges its quota holds, so it outlives them.
  Access access_;
  Registry registry_;
  Connections conns_;
  Loop loop_;
  // Tells the kernel which relay files left the tree, so that it forgets them and their
  // buffers can be freed (forget.h).
  Forgetter forgetter_;
  Recorder recorder_;
  ControlServer control_;
  __kernel_timespec expiry_tick_{};  // the expiry timer's period: read by the kernel while armed
  __kernel_timespec recheck_tick_{};  // the backstop's period: read by the kernel while armed
  bool recheck_armed_ = false;        // loop thread
  // Ending the session from the loop thread (unmounted.cc).
  fuse_session* se_ = nullptr;
  pthread_t session_thread_{};  // runs the session loop, which a signal wakes
  MountWatch mounts_;
  std::atomic<bool> mount_gone_{false};
  __kernel_timespec end_retry_{};  // read by the kernel while armed

 public:
  // What libfuse's callbacks call (main.cc).
  Files files;
  Ops ops;
};

}  // namespace relayfs::fs
