// -o orphan_timeout: a finalized channel (its producer closed it, exited or was killed) whose
// files nobody drains holds its memory, charged to its owner, for as long as the mount lives.
// Once nobody has read from it for the timeout, the daemon frees what is unread, counted in each
// buffer's lost_expired_bytes and said on stderr, and the drained files go as any drained file
// does. A reader (or a recording) still draining it keeps it: what counts is the time since the
// last byte left it, or since it was finalized.
#include <cinttypes>
#include <cstdio>

#include "fs/channel.h"
#include "fs/daemon.h"
#include "fs/ring_tag.h"

namespace relayfs::fs {

void Daemon::arm_expiry() {
  if (opts_.orphan_timeout == 0) return;
  // A tick a quarter of the timeout, at most a second: a channel is freed within that of its
  // time.
  const uint64_t ms = std::min<uint64_t>(1000, uint64_t{opts_.orphan_timeout} * 250);
  expiry_tick_ = Loop::period_ms(ms);
  if (loop_.timeout(&expiry_tick_, tag(kExpire, 0)) != 0)
    std::fprintf(stderr, "relayfs: no room in the ring for the orphan_timeout tick: orphaned "
                 "channels are no longer freed\n");
}

void Daemon::expire_orphans() {
  const auto now = std::chrono::steady_clock::now();
  const auto limit = std::chrono::seconds(opts_.orphan_timeout);
  std::vector<std::shared_ptr<Channel>> due;
  const auto channels = registry_.all();
  {
    std::lock_guard lk(tree_.mu);
    for (auto& ch : channels) {
      if (!ch->finalized || ch->expired) continue;
      uint64_t left = 0;  // every byte that left its buffers: read, or counted lost
      for (auto& b : ch->buffers) {
        std::lock_guard blk(b->mu);
        const core::BufferStats st = b->stats();
        left += st.bytes_produced - st.bytes_unread;
      }
      if (left != ch->read_so_far) {  // read since the last tick: idle from now
        ch->read_so_far = left;
        ch->idle_since = now;
      } else if (now - ch->idle_since >= limit) {
        ch->expired = true;
        due.push_back(ch);
      }
    }
  }
  for (auto& ch : due) {
    uint64_t freed = 0;
    for (auto& b : ch->buffers) {
      std::lock_guard lk(b->mu);
      freed += b->expire();
    }
    if (freed)
      std::fprintf(stderr,
                   "relayfs: channel %s: %" PRIu64 " bytes nobody read freed after %u s "
                   "without a reader, its producer gone (orphan_timeout; counted in "
                   "lost_expired_bytes)\n",
                   ch->base.c_str(), freed, opts_.orphan_timeout);
    // Readers waiting get the end of file, pollers POLLERR; then the drained files go.
    for (auto& s : ch->sources()) news(s);
    maybe_remove(ch->id);
  }
}

}  // namespace relayfs::fs
