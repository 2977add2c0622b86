#include "client/common.h"

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>

#include "client/stats.h"
#include "core/layout.h"
#include "core/stats.h"
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
  core::BufferStats s;  // corrupt stays 0: the daemon's alone, not in the control area
  s.subbuf_size = g.subbuf_size;
  s.n_subbufs = g.n_subbufs;
  s.subbufs_produced = h->produced.load(std::memory_order_acquire);
  const uint64_t tagged = h->consumed.load(std::memory_order_acquire);
  const uint32_t gen = h->reset_gen.load(std::memory_order_relaxed);
  s.subbufs_consumed = core::consumed_count(tagged, gen);
  // Committed bytes, as the daemon counts them for the file's size (core/view.h): a record in
  // flight counts once it is committed.
  s.bytes_produced = core::View(b).committed_bytes();
  s.bytes_consumed = h->bytes_consumed.load(std::memory_order_relaxed);
  // The loss counters, each under its own name in the control area.
#define RELAYFS_LOAD_COUNTER(name, what) s.name = h->name.load(std::memory_order_relaxed);
  RELAYFS_LOSS_COUNTERS(RELAYFS_LOAD_COUNTER)
#undef RELAYFS_LOAD_COUNTER
  // What the balance leaves: the daemon's counters are the ones it last published.
  const uint64_t gone = s.bytes_consumed + core::bytes_lost(s);
  s.bytes_unread = s.bytes_produced > gone ? s.bytes_produced - gone : 0;
  to_relay_stats(s, st);
}

}  // namespace relayfs::client
