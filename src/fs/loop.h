// The daemon's event loop: one thread waiting on one io_uring. It knows nothing of channels or
// connections: it hands each completion, and each event another thread posted, to its
// LoopHandler (the daemon, daemon.cc), and it owns the ring's resources: submissions, the
// eventfd other threads wake it with, and the table of registered (fixed) buffers.
//
// Threads: post() from any thread; everything else on the loop thread, or before run().
#pragma once

#include <linux/time_types.h>
#include <liburing.h>
#include <poll.h>

#include <atomic>
#include <boost/lockfree/queue.hpp>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "core/fd.h"

namespace relayfs::fs {

struct ParkedRead;

// What another thread hands to the loop thread.
struct LoopEvent {
  enum Kind : uint32_t {
    kPark,       // a FUSE worker parked a read (read)
    kInterrupt,  // the reader of parked read `id` was interrupted
    kFree,       // channel `id` may be freed (its files are gone and closed)
    kWritable,   // connection `id` queued a message: wait for its socket to have room
    kWake,       // nothing: stop() wakes the loop with it
    kArmed,      // a reader armed a doorbell: look again later, whatever rings (recheck.cc)
  } kind;
  uint64_t id;
  ParkedRead* read;
};

// One completion. more: a multishot request that goes on (IORING_CQE_F_MORE).
struct Completion {
  uint64_t ud;
  int res;
  bool more;
};

class LoopHandler {
 public:
  // The completions of one wake-up, in the ring's order. The handler re-arms what ended.
  virtual void on_completions(const std::vector<Completion>& batch) = 0;
  // One posted event. Exceptions are reported and the loop goes on.
  virtual void on_posted(const LoopEvent& ev) = 0;

 protected:
  ~LoopHandler() = default;
};

class Loop {
 public:
  Loop() = default;
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;
  ~Loop();

  // Sets up the ring, its eventfd and the fixed-buffer table. Returns 0 or -errno.
  int init();
  // Starts the loop thread.
  void run(LoopHandler* h);
  // Stops and joins the loop thread; posted events it did not handle are left for take_left().
  void stop();
  // After stop(): tears the ring down (the destructor does if this was not called).
  void exit();
  // After stop(): an event nobody handled (a parked read to answer). False when none are left.
  bool take_left(LoopEvent* ev) { return events_.pop(*ev); }

  // Any thread. Never fails: the queue grows, and the eventfd counter cannot overflow.
  void post(const LoopEvent& ev);

  // ---- Loop thread (or before run()). Each returns 0 or -errno; a submission that cannot be
  // had (-EBUSY: the queue is full even after submitting) is for the caller to handle.
  // A submission slot: when the queue is full, what is queued is submitted to make room.
  io_uring_sqe* sqe();
  // Multishot poll for events (POLLIN unless told) on fd; completions carry ud.
  int watch(int fd, uint64_t ud, unsigned events = POLLIN);
  // One-shot POLLOUT on fd.
  int watch_out(int fd, uint64_t ud);
  // Stops watching: the caller may close the descriptor at once (the pending poll holds its own
  // reference to the file until the removal completes).
  int retire(uint64_t ud);
  // Cancels the request with user_data ud, if it is still pending.
  int cancel(uint64_t ud);
  // A one-shot timeout after *ts, which the kernel reads while it is armed.
  int timeout(__kernel_timespec* ts, uint64_t ud);
  // The period of ms milliseconds, as timeout() takes it.
  static __kernel_timespec period_ms(uint64_t ms) {
    return {static_cast<long long>(ms / 1000), static_cast<long long>(ms % 1000) * 1'000'000};
  }
  // Closes fd through the ring: a filesystem's flush on close runs on a kernel worker, not here.
  void close_later(core::UniqueFd fd);
  void submit() { io_uring_submit(&ring_); }

  // Registers [addr, addr+len) as a fixed buffer. Returns its slot, or -errno (-ENOTSUP: the
  // table could not be had; -ENOSPC: full).
  int register_buffer(void* addr, size_t len);
  // Empties slot; writes already submitted keep their reference to the buffer.
  int unregister_buffer(int slot);

 private:
  void main(LoopHandler* h);
  // Fills a submission with prep and tags it ud: 0, or -EBUSY without room.
  template <typename Prep>
  int submit_one(uint64_t ud, Prep prep);
  void drain_posted(LoopHandler* h);

  io_uring ring_{};
  bool ring_ok_ = false;
  core::UniqueFd notify_fd_;  // eventfd: other threads wake the loop
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  boost::lockfree::queue<LoopEvent> events_{1024};
  std::vector<bool> fixed_used_;  // loop thread
};

}  // namespace relayfs::fs
