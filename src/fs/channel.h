// A channel as the daemon holds it: its buffers (each the consumer side of one relay file), the
// merged view over them, the doorbell its producer rings, and who owns it.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/bell.h"
#include "core/buffer.h"
#include "core/consumer.h"
#include "core/fd.h"
#include "core/stats.h"
#include "fs/quota.h"

namespace relayfs::fs {

class Source;
class RelayBuffer;
struct Recording;

// Where the bytes of one consuming read came from, in order: which buffer, how many. The page
// cache's reads keep it, because bytes the page cache took and no reader was shown to receive
// are counted against their buffer (Files::page_read). The buffer outlives the record: its
// Source (a buffer, or the merged view holding its buffers) is kept by the open file.
struct Piece {
  RelayBuffer* buf;
  size_t len;
};
using Pieces = std::vector<Piece>;

// A read that found the file empty, in blocking mode: parked until data arrives, the channel is
// drained, or the reader is interrupted. Owned by the event loop once handed over.
struct ParkedRead {
  uint64_t id = 0;
  fuse_req_t req = nullptr;
  size_t size = 0;
  std::shared_ptr<Source> source;
  void* files = nullptr;  // the Files that parked it (files.h): its interrupt callback goes there
  // Set by the interrupt callback before it posts kInterrupt, which may reach the loop before
  // the read itself does (kPark): the loop then answers the read with EINTR when it arrives.
  // release/acquire: the store is seen by the loop's load in on_park.
  std::atomic<bool> interrupted{false};
};

// A poll() waiting for news. whole_subbufs: an mmap reader's descriptor (kIocSubbufPoll), which
// waits for a whole sub-buffer rather than for any record.
struct Poller {
  fuse_pollhandle* ph = nullptr;
  bool whole_subbufs = false;
  const void* file = nullptr;  // the open file it polls: the kernel keeps one handle per file
  // It asked for POLLIN. An mmap reader with a bell (core/bell.h) watches its file only for
  // POLLERR/POLLHUP: it is told about the end (finalize), and never arms the doorbell, since
  // the producer rings the reader itself.
  bool data = true;
};

// What a relay file reads from: one buffer, or the merged view of a channel's buffers. The
// members below are guarded by mu; the virtual functions require it held. Lock order: see
// registry.h.
class Source {
 public:
  Source(uint32_t channel_id, uint64_t owner) : channel_id_(channel_id), owner_(owner) {}
  // Poll handles still waiting belong to us: the kernel will not ask about them again.
  virtual ~Source() {
    for (auto& p : polls)
      if (p.ph) fuse_pollhandle_destroy(p.ph);
  }
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;

  std::mutex mu;
  fuse_ino_t ino = 0;
  int opens = 0;              // open file handles
  std::vector<Poller> polls;  // pollers waiting for news
  uint64_t last_size = 0;     // bytes_produced when mtime last moved
  timespec mtime{};
  bool unlinked = false;  // its file left the directory

  // Loop thread only.
  std::deque<ParkedRead*> parked;
  Recording* recording = nullptr;  // a buffer being recorded to disk (record.h)

  // The consuming read: padding removed, consumed for every reader. >= 0 bytes, or -errno.
  // from, if given, gets where the bytes came from.
  virtual ssize_t consume(void* dst, size_t count, Pieces* from = nullptr) = 0;
  // n bytes of part (this buffer, or one of the merged view's) that a read handed out went to
  // a page cache and were never shown to reach a reader (Consumer::readahead_lost).
  virtual void take_back(RelayBuffer& part, uint64_t n) = 0;
  // delta bytes of part that a page cache took are now unproven (> 0), or proven (< 0)
  // (core::Consumer::note_unproven).
  virtual void note_unproven(RelayBuffer& part, int64_t delta) = 0;
  // Around a reply that carries consumed bytes: what it carries counts as read, for the producer
  // and for a daemon that resumes after this one (core::Consumer::hold), only from release().
  virtual void hold() = 0;
  virtual void release() = 0;
  virtual bool data_available() = 0;
  virtual bool subbuf_ready() = 0;
  virtual bool finalized() = 0;
  virtual uint64_t bytes_produced() = 0;
  virtual void arm_doorbell(bool whole_subbufs) = 0;
  virtual core::BufferStats stats() = 0;
  // A read replied straight from the shared mapping, where nothing unread can be overwritten
  // (no-overwrite buffers): plans up to count bytes as at most max_iov spans of iov (*n_iov of
  // them). Returns the bytes planned (0: none, or this source cannot), or -errno. After a
  // planned read the caller replies, then calls end_direct(whether the reply went through);
  // nothing else may come in between, and mu stays held.
  virtual ssize_t plan_direct(iovec*, int, size_t, int*) { return 0; }
  virtual void end_direct(bool) {}
  // The one buffer this file reads, or nullptr for the merged view.
  virtual RelayBuffer* buffer() { return nullptr; }
  const RelayBuffer* buffer() const { return const_cast<Source*>(this)->buffer(); }
  bool drained() { return finalized() && !data_available(); }

  uint32_t channel_id() const { return channel_id_; }
  uint64_t owner() const { return owner_; }  // control connection of the producer
  int open_handles() const { return opens; }

 private:
  uint32_t channel_id_;
  uint64_t owner_;
};

// An mmap reader's bell (core/bell.h), as the daemon keeps it: to send the reader back to the
// FUSE file once the channel is finalized (`fallback`, then a ring), and to tell the producer
// when the reader goes (kBellGone). Owned by the reader's connection and listed in its buffer.
struct ReaderBell {
  uint32_t id = 0;
  core::Mapping page;  // core::BellPage; the daemon only writes `fallback`
  core::UniqueFd wake;  // the ringing socket (core::make_bell_sockets), shared with the producer

  // The channel is finalized: the reader polls its relay file again, which reports the tail
  // and then POLLERR, and is woken now to see it. Any thread, with its buffer's mu held: the
  // ring never blocks, whatever the producer or the reader did to their descriptors.
  void fall_back() noexcept {
    // release: nothing to publish but the flag; the reader's acquire load pairs with it.
    reinterpret_cast<core::BellPage*>(page.bytes())->fallback.store(1, std::memory_order_release);
    core::ring_bell(wake.get());
  }
};

// One channel buffer: one per-CPU (or the global) relay file: the daemon's side of a producer's
// shared buffer. Everything but the constructor's arguments requires mu held.
class RelayBuffer final : public Source {
 public:
  // adopted: a buffer a producer brought from a daemon that died, read on from its consumer
  // record (core::Consumer::resume).
  RelayBuffer(core::Buffer b, uint32_t channel_id, uint64_t owner, uint32_t index,
              bool zero_copy, bool adopted = false)
      : Source(channel_id, owner), buf_(std::move(b)), cons_(buf_), index_(index),
        zero_copy_(zero_copy) {
    if (adopted) cons_.resume();
    struct stat st;
    if (::fstat(buf_.fd(), &st) == 0) {  // a memfd: never waits
      file_ = {st.st_dev, st.st_ino};
    }
  }

  int fixed_index = -1;  // io_uring fixed-buffer slot, -1 if not registered (loop thread)
  // Bells of its mmap readers, at most core::kMaxBells: guarded by mu.
  std::vector<std::shared_ptr<ReaderBell>> bells;

  ssize_t consume(void* dst, size_t count, Pieces* from) override {
    const ssize_t n = cons_.read(dst, count);
    if (from && n > 0) from->push_back({this, static_cast<size_t>(n)});
    return n;
  }
  void take_back(RelayBuffer&, uint64_t n) override { cons_.readahead_lost(n); }
  void note_unproven(RelayBuffer&, int64_t delta) override { cons_.note_unproven(delta); }
  void hold() override { cons_.hold(); }
  void release() override { cons_.release(); }
  bool data_available() override { return cons_.data_available(); }
  bool subbuf_ready() override { return cons_.subbuf_ready(); }
  bool finalized() override { return cons_.finalized(); }
  uint64_t bytes_produced() override { return cons_.bytes_produced(); }
  void arm_doorbell(bool whole_subbufs) override { cons_.arm_doorbell(whole_subbufs); }
  core::BufferStats stats() override { return cons_.stats(); }
  ssize_t plan_direct(iovec* iov, int max_iov, size_t count, int* n_iov) override {
    return zero_copy_ ? cons_.plan_read(iov, max_iov, count, n_iov) : 0;
  }
  void end_direct(bool delivered) override {
    if (delivered)
      cons_.finish_read();
    else
      cons_.abort_read();  // the reader went away: the data stays for the next one
  }
  RelayBuffer* buffer() override { return this; }

  // The consumer's other ways in (core/consumer.h).
  void finalize() {
    cons_.finalize();
    for (auto& bell : bells) bell->fall_back();
  }
  uint64_t expire() { return cons_.expire(); }
  int subbufs_consumed(uint64_t n) { return cons_.subbufs_consumed(n); }
  int consume_upto(uint32_t gen, uint64_t seq) { return cons_.consume_upto(gen, seq); }
  int take_extent(core::Consumer::Extent* e) { return cons_.take_extent(e); }
  int finish_extent(const core::Consumer::Extent& e, uint32_t n) {
    return cons_.finish_extent(e, n);
  }
  bool extent_intact(const core::Consumer::Extent& e) { return cons_.extent_intact(e); }
  bool position(uint64_t* at) { return cons_.position(at); }

  // The shared buffer: fixed once made, so no lock needed.
  uint32_t index() const { return index_; }
  int memfd() const { return buf_.fd(); }
  // The memory file behind it (device, inode): no two channels may share one.
  std::pair<dev_t, ino_t> file() const { return file_; }
  // What names this buffer across daemon restarts, for a recording to resume on (record.cc):
  // the inode number of its memfd, which producers bring back to the next daemon (kAdopt).
  uint64_t stream() const { return file_.second; }
  const core::Geometry& geometry() const { return buf_.geometry(); }
  char* data() const { return buf_.data(); }

 private:
  friend class MergedView;  // reads its parts through the same consumer
  core::Buffer buf_;
  core::Consumer cons_;
  std::pair<dev_t, ino_t> file_{0, 0};
  uint32_t index_;
  // No-overwrite by declaration (no subbuf_start callback, no RELAY_OVERWRITE): nothing the
  // reader has not consumed can be overwritten, so reads reply straight from the mapping.
  bool zero_copy_;
};

// The merged view: one file that interleaves all of a channel's buffers, a sub-buffer at a time,
// padding removed. It consumes from the buffers exactly as their own files do. A read that runs
// out of room in the middle of a record stays on that buffer, so the next read finishes the
// record before another buffer's data comes: records are never interleaved byte-wise.
class MergedView final : public Source {
 public:
  MergedView(uint32_t channel_id, uint64_t owner, std::vector<std::shared_ptr<RelayBuffer>> parts)
      : Source(channel_id, owner), parts_(std::move(parts)) {}

  ssize_t consume(void* dst, size_t count, Pieces* from) override;
  void take_back(RelayBuffer& part, uint64_t n) override;
  void note_unproven(RelayBuffer& part, int64_t delta) override;
  void hold() override;
  void release() override;
  bool data_available() override;
  bool subbuf_ready() override;
  bool finalized() override;
  uint64_t bytes_produced() override;
  void arm_doorbell(bool whole_subbufs) override;
  core::BufferStats stats() override;

 private:
  std::vector<std::shared_ptr<RelayBuffer>> parts_;
  size_t cur_ = 0;  // the buffer the next read starts with
};

// A channel: see registry.h for which lock guards what.
class Channel {
 public:
  uint32_t id = 0;
  uint64_t owner = 0;       // the control connection that created it
  uint32_t flags = 0;       // proto::kFlag*: global, declared mode, blocking
  std::string base;         // base_filename: files BASE0..BASEn-1 and the merged view BASE
  bool finalized = false;   // producer closed or gone: nothing more will be written
  // For -o orphan_timeout: since when nobody has read it, once finalized, and how far readers
  // had got then (the bytes that left its buffers).
  std::chrono::steady_clock::time_point idle_since{};
  uint64_t read_so_far = 0;
  bool expired = false;     // its unread data was freed after orphan_timeout (expire.cc)
  core::UniqueFd doorbell;  // eventfd the producer writes when a reader waits
  std::vector<std::shared_ptr<RelayBuffer>> buffers;
  std::shared_ptr<MergedView> merged;
  // Its memory and count against its owner's limits (quota.h): given back when it is freed,
  // however that comes about.
  Charge charge;

  // Every file of the channel: the buffers, then the merged view.
  std::vector<std::shared_ptr<Source>> sources() const {
    std::vector<std::shared_ptr<Source>> all(buffers.begin(), buffers.end());
    if (merged) all.push_back(merged);
    return all;
  }
};

}  // namespace relayfs::fs
