#include "client/common.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <sys/xattr.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>

#include "core/layout.h"
#include "core/protocol.h"

namespace relayfs::client {

namespace {
constexpr const char* kControlXattr = "user.relayfs.control";
}  // namespace

int connect_daemon(const char* dir, core::UniqueFd* out) {
  char name[108];
  const ssize_t n = ::getxattr(dir, kControlXattr, name, sizeof name - 1);
  if (n < 0) return errno == ENOENT ? ENOENT : ENOTSUP;  // not a relayfs directory
  if (n < 2 || name[0] != '@') return ENOTSUP;
  core::UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!s) return errno;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path + 1, name + 1, static_cast<size_t>(n - 1));  // abstract: leading NUL
  const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + static_cast<size_t>(n));
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) return errno;
  timeval tv{static_cast<time_t>(kReplyTimeout.count()), 0};
  ::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  *out = std::move(s);
  return 0;
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
