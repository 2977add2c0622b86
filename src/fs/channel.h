// A channel as the daemon holds it: its buffers (each the consumer side of one relay file), the
// doorbell its producer rings, and who owns it.
#pragma once

#include <fuse_lowlevel.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/consumer.h"
#include "core/fd.h"

namespace relayfs::fs {

class Channel;

// A read that found the buffer empty, in blocking mode: parked until data arrives, the channel is
// drained, or the reader is interrupted. Owned by the event loop once handed over.
struct ParkedRead {
  uint64_t id = 0;
  fuse_req_t req = nullptr;
  size_t size = 0;
  std::shared_ptr<class RelayBuffer> buffer;
};

class RelayBuffer {
 public:
  RelayBuffer(core::Buffer b, uint32_t channel_id, uint64_t owner, uint32_t index)
      : buf(std::move(b)), cons(buf), channel_id_(channel_id), owner_(owner), index_(index) {}

  // Guards cons and everything below it. Lock order: Tree::mu, then this.
  std::mutex mu;
  core::Buffer buf;
  core::Consumer cons;
  fuse_ino_t ino = 0;
  int opens = 0;                        // open file handles
  std::vector<fuse_pollhandle*> polls;  // pollers waiting for data
  uint64_t last_size = 0;               // bytes_produced when mtime last moved
  timespec mtime{};
  bool unlinked = false;  // its file left the directory
  int fixed_index = -1;   // io_uring fixed-buffer slot, -1 if not registered

  // Loop thread only.
  std::deque<ParkedRead*> parked;

  uint32_t channel_id() const { return channel_id_; }
  uint64_t owner() const { return owner_; }  // control connection of the producer
  uint32_t index() const { return index_; }
  int open_handles() const { return opens; }

 private:
  uint32_t channel_id_;
  uint64_t owner_;
  uint32_t index_;
};

class Channel {
 public:
  uint32_t id = 0;
  uint64_t owner = 0;       // the control connection that created it
  bool finalized = false;   // producer closed or gone: nothing more will be written
  core::UniqueFd doorbell;  // eventfd the producer writes when a reader waits
  std::vector<std::shared_ptr<RelayBuffer>> buffers;
};

}  // namespace relayfs::fs
