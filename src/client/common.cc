#include "client/common.h"

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>

#include "core/layout.h"
#include "core/view.h"
#include "proto/protocol.h"
#include "proto/wire.h"

namespace relayfs::client {

int connect_daemon(const char* dir, core::UniqueFd* out) {
  return proto::connect_control(dir, static_cast<int>(kReplyTimeout.count()), out);
}

int refusal(const proto::Received& m) {
  proto::Status st;
  if (static_cast<proto::Type>(m.header.type) == proto::Type::kError &&
      proto::decode(m.payload.data(), m.payload.size(), &st) == 0 && st.status < 0)
    return st.status;
  return -EIO;
}

void read_stats(const core::Buffer& b, relay_stats* st) {
  const core::ShmHeader* h = b.header();
  const auto& g = b.geometry();
  *st = {};
  st->subbuf_size = g.subbuf_size;
  st->n_subbufs = g.n_subbufs;
  st->subbufs_produced = h->produced.load(std::memory_order_acquire);
  const uint64_t tagged = h->consumed.load(std::memory_order_acquire);
  const uint32_t gen = h->reset_gen.load(std::memory_order_relaxed);
  st->subbufs_consumed = core::consumed_count(tagged, gen);
  // Committed bytes, as the daemon counts them for the file's size (core/view.h): a record in
  // flight counts once it is committed.
  st->bytes_produced = core::View(b).committed_bytes();
  st->bytes_consumed = h->bytes_consumed.load(std::memory_order_relaxed);
  st->lost_full = h->lost_full.load(std::memory_order_relaxed);
  st->lost_too_big = h->lost_too_big.load(std::memory_order_relaxed);
  st->lost_wrap = h->lost_wrap.load(std::memory_order_relaxed);
  st->overruns = h->overruns.load(std::memory_order_relaxed);
  st->lost_uncommitted = h->lost_uncommitted.load(std::memory_order_relaxed);
  st->lost_overrun_bytes = h->lost_overrun_bytes.load(std::memory_order_relaxed);
  st->lost_reset_bytes = h->lost_reset_bytes.load(std::memory_order_relaxed);
  st->lost_readahead_bytes = h->lost_readahead_bytes.load(std::memory_order_relaxed);
  st->lost_expired_bytes = h->lost_expired_bytes.load(std::memory_order_relaxed);
  // What the balance leaves: the daemon's counters are the ones it last published.
  const unsigned long long gone = st->bytes_consumed + st->lost_uncommitted +
                                  st->lost_overrun_bytes + st->lost_reset_bytes +
                                  st->lost_readahead_bytes + st->lost_expired_bytes;
  st->bytes_unread = st->bytes_produced > gone ? st->bytes_produced - gone : 0;
}

}  // namespace relayfs::client
