// What the daemon's parts (files, control server, recorder) ask of the daemon when something
// concerns another part. The daemon (daemon.h) implements it: the parts call back through this
// interface, never through the daemon's class. (A part may hold a lower one it uses: the control
// server hands recordings to the Recorder, everyone submits to the Loop.)
#pragma once

#include <cstdint>
#include <memory>

namespace relayfs::fs {

class Channel;
class Source;

class Hooks {
 public:
  // Something changed on s (data came, was consumed, the channel finalized): its parked reads,
  // pollers and recording hear of it. Loop thread.
  virtual void news(const std::shared_ptr<Source>& s) = 0;
  // The producer closed ch or went away: nothing more will be written. Loop thread.
  virtual void finalize(const std::shared_ptr<Channel>& ch) = 0;
  // The drained files of a finalized channel leave the tree; a channel none of whose files is
  // left or open is freed. Any thread.
  virtual void maybe_remove(uint32_t channel_id) noexcept = 0;
  // buf_mapped (mapped) or buf_unmapped to the producer of s's buffer. Any thread.
  virtual void notify_owner(const Source& s, bool mapped) noexcept = 0;
  // A reader armed a doorbell and waits: the doorbell's backstop ticks while anyone does
  // (recheck.cc). Loop thread; other threads post LoopEvent::kArmed.
  virtual void waiting() noexcept = 0;

 protected:
  ~Hooks() = default;
};

}  // namespace relayfs::fs
