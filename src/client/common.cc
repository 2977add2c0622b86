#include "client/common.h"

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>

#include "core/layout.h"
#include "core/protocol.h"
#include "core/wire.h"

namespace relayfs::client {

int connect_daemon(const char* dir, core::UniqueFd* out) {
  return proto::connect_control(dir, static_cast<int>(kReplyTimeout.count()), out);
}

int refusal(const proto::Received& m) {
  proto::Status st;
  if (static_cast<proto::Type>(m.header.type) == proto::Type::kError &&
      proto::decode(m.payload.data(), m.payload.size(), &st) == 0 && st.status < 0)
    return -st.status;
  return EIO;
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
  // Closed sub-buffers, plus what was reserved in the current one.
  uint32_t off = core::word_off(h->wpos.load(std::memory_order_relaxed));
  if (off == core::kOffClosed) off = h->close_off.load(std::memory_order_relaxed);
  st->bytes_produced =
      h->bytes_produced.load(std::memory_order_relaxed) + (off <= g.subbuf_size ? off : 0);
  st->bytes_consumed = h->bytes_consumed.load(std::memory_order_relaxed);
  st->lost_full = h->lost_full.load(std::memory_order_relaxed);
  st->lost_too_big = h->lost_too_big.load(std::memory_order_relaxed);
  st->lost_wrap = h->lost_wrap.load(std::memory_order_relaxed);
  st->overruns = h->overruns.load(std::memory_order_relaxed);
  st->lost_uncommitted = h->lost_uncommitted.load(std::memory_order_relaxed);
}

}  // namespace relayfs::client
