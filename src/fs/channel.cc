// The merged view of a channel's buffers.
#include "fs/channel.h"

namespace relayfs::fs {

ssize_t MergedView::consume(void* dst, size_t count, Pieces* from) {
  char* out = static_cast<char*>(dst);
  size_t done = 0;
  size_t idle = 0;  // buffers in a row that had nothing
  const size_t k = parts_.size();
  while (done < count && idle < k) {
    RelayBuffer& b = *parts_[cur_];
    ssize_t n;
    bool boundary;
    {
      std::lock_guard lk(b.mu);
      // One sub-buffer at a time: that is the unit of interleaving.
      n = b.cons_.read(out + done, count - done, true);
      boundary = b.cons_.at_record_boundary();
    }
    // A corrupt buffer (-EIO, counted in its own stats) must not stop the others, even in the
    // middle of a record: that record is lost with its buffer.
    if (n < 0) boundary = true;
    if (n > 0) {
      done += static_cast<size_t>(n);
      if (from) from->push_back({&b, static_cast<size_t>(n)});
    }
    if (!boundary) break;  // out of room mid-record: the next read finishes it first
    idle = n > 0 ? 0 : idle + 1;
    cur_ = (cur_ + 1) % k;
  }
  return static_cast<ssize_t>(done);
}

void MergedView::take_back(RelayBuffer& part, uint64_t n) {
  std::lock_guard lk(part.mu);  // lock order: the merged view's mu (held), then the buffer's
  part.cons_.readahead_lost(n);
}

void MergedView::note_unproven(RelayBuffer& part, int64_t delta) {
  std::lock_guard lk(part.mu);  // lock order: the merged view's mu (held), then the buffer's
  part.cons_.note_unproven(delta);
}

// Every part: a read of the merged view may take from any of them. Lock order: the merged
// view's mu (held), then each buffer's.
void MergedView::hold() {
  for (auto& b : parts_) {
    std::lock_guard lk(b->mu);
    b->cons_.hold();
  }
}

void MergedView::release() {
  for (auto& b : parts_) {
    std::lock_guard lk(b->mu);
    b->cons_.release();
  }
}

bool MergedView::data_available() {
  for (auto& b : parts_) {
    std::lock_guard lk(b->mu);
    if (b->cons_.data_available()) return true;
  }
  return false;
}

bool MergedView::subbuf_ready() {
  for (auto& b : parts_) {
    std::lock_guard lk(b->mu);
    if (b->cons_.subbuf_ready()) return true;
  }
  return false;
}

bool MergedView::finalized() {
  for (auto& b : parts_) {
    std::lock_guard lk(b->mu);
    if (!b->cons_.finalized()) return false;
  }
  return true;
}

uint64_t MergedView::bytes_produced() {
  uint64_t total = 0;  // each term never shrinks, so neither does the sum
  for (auto& b : parts_) {
    std::lock_guard lk(b->mu);
    total += b->cons_.bytes_produced();
  }
  return total;
}

void MergedView::arm_doorbell(bool whole_subbufs) {
  for (auto& b : parts_) {
    std::lock_guard lk(b->mu);
    b->cons_.arm_doorbell(whole_subbufs);
  }
}

core::BufferStats MergedView::stats() {
  core::BufferStats sum;
  for (auto& b : parts_) {
    std::lock_guard lk(b->mu);
    sum.add(b->cons_.stats());
  }
  return sum;
}

}  // namespace relayfs::fs
