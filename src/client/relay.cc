// librelayfs: the relay API over src/core's Producer and the daemon's control socket.
// Exceptions stop here: every exported function catches and reports errno.
#include "relayfs/relay.h"

#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "client/common.h"
#include "core/buffer.h"
#include "core/geometry.h"
#include "core/producer.h"
#include "core/protocol.h"
#include "core/wire.h"

namespace {

using relayfs::core::UniqueFd;
namespace core = relayfs::core;
namespace proto = relayfs::proto;

using relayfs::client::connect_daemon;

struct Chan;

// Events relay_open keeps while it waits for the daemon's reply (see open_channel).
constexpr size_t kMaxEarlyEvents = 4096;

struct Buf {
  rchan_buf pub{};
  core::Buffer buffer;
  std::unique_ptr<core::Producer> producer;
  // The producer, reachable from callbacks too: opening runs subbuf_start (which may call
  // relay_buf_full or subbuf_start_reserve) before the constructor has returned.
  core::Producer* p = nullptr;
  Chan* chan = nullptr;
};

struct Chan {
  rchan pub{};
  rchan_callbacks cb{};
  relay_options opts{};
  std::vector<std::unique_ptr<Buf>> bufs;
  std::vector<rchan_buf*> bufptrs;
  UniqueFd sock;
  UniqueFd doorbell;
  uint32_t id = 0;
  std::atomic<uint32_t> seq{1};
  std::thread events;
  std::mutex mu;
  std::condition_variable cv;
  bool close_replied = false;
  int close_status = 0;
};

Chan* impl(rchan* c) {
  return static_cast<Chan*>(c->impl);
}
Buf* impl(rchan_buf* b) {
  return static_cast<Buf*>(b->impl);
}

int fail(int err) {
  errno = err;
  return -1;
}

// CPUs the system may have: the daemon makes one buffer per CPU the same way.
unsigned ncpus_possible() {
  return static_cast<unsigned>(std::max(1, get_nprocs_conf()));
}

unsigned current_cpu() {
  // glibc 2.35+ reads the CPU from its registered rseq area: no system call.
  const int cpu = ::sched_getcpu();
  return cpu < 0 ? 0 : static_cast<unsigned>(cpu);
}

bool hook_subbuf_start(void* ctx, core::Producer& p, void* subbuf, void* prev, uint32_t pad) {
  Buf* b = static_cast<Buf*>(ctx);
  b->p = &p;
  return b->chan->cb.subbuf_start(&b->pub, subbuf, prev, pad) != 0;
}

// RELAY_OVERWRITE without a subbuf_start callback: always switch.
bool hook_overwrite(void*, core::Producer&, void*, void*, uint32_t) {
  return true;
}

void hook_deliver(void* ctx, core::Producer&, uint32_t slot, void* subbuf) {
  Buf* b = static_cast<Buf*>(ctx);
  b->chan->cb.deliver(&b->pub, slot, subbuf);
}

void hook_buf_full(void* ctx, core::Producer&, uint32_t slot, void* subbuf) {
  Buf* b = static_cast<Buf*>(ctx);
  b->chan->cb.buf_full(&b->pub, slot, subbuf);
}

void hook_wakeup(void* ctx, core::Producer&) {
  Buf* b = static_cast<Buf*>(ctx);
  const uint64_t one = 1;
  // Only when a reader armed the doorbell; a full eventfd counter cannot happen in practice.
  if (::write(b->chan->doorbell.get(), &one, sizeof one) < 0) {
  }
}

// buf_mapped / buf_unmapped, for an event about one of this channel's buffers.
void deliver_event(Chan* c, const proto::Received& r) {
  const auto type = static_cast<proto::Type>(r.header.type);
  proto::BufferEvent ev;
  if (proto::decode(r.payload.data(), r.payload.size(), &ev) != 0) return;
  if (ev.channel_id != c->id || ev.buffer >= c->bufs.size()) return;
  auto fn = type == proto::Type::kMapped ? c->cb.buf_mapped : c->cb.buf_unmapped;
  if (fn) fn(&c->bufs[ev.buffer]->pub, nullptr);
}

// A flush, reset or close asked for from outside (relay_control), if the producer allows it.
// Returns 0 or -errno for the requester.
int outside_control(Chan* c, proto::ControlOp op) {
  const int code = static_cast<int>(op);
  int verdict = c->opts.control ? c->opts.control(&c->pub, code)
                                : (op == proto::ControlOp::kReset ? -EBUSY : 0);
  if (verdict > 0) verdict = -EPERM;  // not a negative errno: take it as a refusal
  if (verdict != 0) return verdict;
  for (auto& b : c->bufs) {
    switch (op) {
      case proto::ControlOp::kFlush:
        if (int rc = b->producer->flush(); rc) return rc;
        break;
      case proto::ControlOp::kReset:
        b->producer->reset();
        break;
      case proto::ControlOp::kClose:
        b->producer->close();
        break;
    }
  }
  return 0;
}

// Receives the daemon's events: buf_mapped / buf_unmapped, requests from outside
// (relay_control), and the reply to relay_close.
void event_loop(Chan* c) {
  for (;;) {
    proto::Received r;
    const int rc = proto::recv_message(c->sock.get(), &r);
    if (rc == -EAGAIN || rc == -EPROTO) continue;  // receive timeout, or noise: keep listening
    if (rc <= 0) break;
    const auto type = static_cast<proto::Type>(r.header.type);
    if (type == proto::Type::kMapped || type == proto::Type::kUnmapped) {
      deliver_event(c, r);
    } else if (type == proto::Type::kControlRequest) {
      proto::ChannelControl req;
      int status = proto::decode(r.payload.data(), r.payload.size(), &req);
      if (status == 0) status = req.channel_id == c->id ? outside_control(c, req.op) : -ENOENT;
      proto::send_message(c->sock.get(), proto::encode_status(proto::Type::kControlDone,
                                                              {status}, r.header.seq));
    } else if (type == proto::Type::kCloseReply) {
      proto::Status st;
      std::lock_guard lk(c->mu);
      c->close_status =
          proto::decode(r.payload.data(), r.payload.size(), &st) == 0 ? st.status : -EIO;
      c->close_replied = true;
      c->cv.notify_all();
    }
  }
  // The daemon is gone (or the channel is closing): nobody will read these buffers again, so
  // writes fail with EPIPE from now on instead of filling a buffer no reader will drain (and
  // then reporting ENOSPC, which reads as "reader too slow"); writers blocked for room stop
  // waiting. Closing is idempotent and safe while threads write: relay_close closed them already.
  for (auto& b : c->bufs) {
    b->producer->close();
    b->producer->abandon();
  }
  std::lock_guard lk(c->mu);
  c->close_replied = true;  // nobody will confirm
  if (c->close_status == 0) c->close_status = -EIO;
  c->cv.notify_all();
}

int open_channel(Chan* c, const char* base, const char* parent, size_t subbuf_size,
                 size_t n_subbufs) {
  if (!base) return EINVAL;
  if (int bad = proto::name_error(base); bad) return bad;
  if (!parent || !*parent) parent = std::getenv("RELAYFS_MOUNT");
  if (!parent || !*parent) return EINVAL;
  core::Geometry g;
  if (int rc = core::make_geometry(subbuf_size, n_subbufs, &g); rc) return -rc;
  struct stat st;
  if (::stat(parent, &st) != 0) return errno;
  if (!S_ISDIR(st.st_mode)) return ENOTDIR;

  // create_buf_file decides the mode and whether the channel is global.
  mode_t mode = 0400;
  int is_global = 0;
  if (c->cb.create_buf_file) {
    const unsigned ncpu = ncpus_possible();
    rchan_buf probe{&c->pub, 0, nullptr};
    for (unsigned i = 0; i < ncpu && !is_global; ++i) {
      probe.cpu = i;
      const std::string file = std::string(base) + std::to_string(i);
      if (c->cb.create_buf_file(file.c_str(), parent, &mode, &probe, &is_global) != 0) return EPERM;
    }
  }
  if (int err = connect_daemon(parent, &c->sock); err) return err;

  proto::OpenRequest req;
  req.parent_ino = st.st_ino;
  req.subbuf_size = g.subbuf_size;
  req.n_subbufs = g.n_subbufs;
  req.mode = mode & 07777;
  req.flags = is_global ? proto::kFlagGlobal : 0;
  if (c->opts.flags & RELAY_OVERWRITE)
    req.flags |= proto::kFlagOverwrite;
  else if (c->cb.subbuf_start)
    req.flags |= proto::kFlagHookMode;
  if (c->opts.flags & RELAY_BLOCKING) req.flags |= proto::kFlagBlocking;
  if (c->opts.flags & RELAY_CONTROL) req.flags |= proto::kFlagControl;
  req.base_filename = base;
  const uint32_t seq = c->seq.fetch_add(1);
  if (int rc = proto::send_message(c->sock.get(), proto::encode(req, seq)); rc) return -rc;
  proto::Received r;
  // A reader may open a file of the new channel before the reply reaches us (the files exist
  // once the daemon made them): its buf_mapped event can come first. Such events are kept and
  // delivered once the channel is set up; a daemon that sent nothing but events is broken.
  std::vector<proto::Received> early;
  for (;;) {
    const int rc = proto::recv_message(c->sock.get(), &r, proto::kMaxFds);
    if (rc <= 0) return rc == 0 || rc == -EAGAIN ? EIO : -rc;
    const auto type = static_cast<proto::Type>(r.header.type);
    if (type != proto::Type::kMapped && type != proto::Type::kUnmapped) break;
    if (early.size() >= kMaxEarlyEvents) return EIO;
    early.push_back(std::move(r));
    r = {};
  }
  proto::OpenReply reply;
  if (static_cast<proto::Type>(r.header.type) != proto::Type::kOpenReply)
    return relayfs::client::refusal(r);
  if (proto::decode(r.payload.data(), r.payload.size(), &reply) != 0) return EIO;
  if (reply.status < 0) return -reply.status;
  if (reply.subbuf_size != g.subbuf_size || reply.n_subbufs != g.n_subbufs ||
      r.fds.size() != reply.n_buffers + 1)
    return EIO;

  c->id = reply.channel_id;
  c->doorbell = std::move(r.fds.back());
  c->pub.subbuf_size = g.subbuf_size;
  c->pub.n_subbufs = g.n_subbufs;
  c->pub.n_buffers = reply.n_buffers;
  c->pub.is_global = is_global;
  for (uint32_t i = 0; i < reply.n_buffers; ++i) {
    auto b = std::make_unique<Buf>();
    b->chan = c;
    b->pub = {&c->pub, i, b.get()};
    if (int err =
            core::Buffer::attach(std::move(r.fds[i]), g, PROT_READ | PROT_WRITE, true, &b->buffer))
      return -err;
    c->bufptrs.push_back(&b->pub);
    c->bufs.push_back(std::move(b));
  }
  c->pub.buf = c->bufptrs.data();
  // Opening runs subbuf_start with a NULL prev_subbuf, so every buffer must be in place first.
  for (auto& b : c->bufs) {
    core::ProducerHooks hooks;
    hooks.ctx = b.get();
    if (c->cb.subbuf_start)
      hooks.subbuf_start = &hook_subbuf_start;
    else if (c->opts.flags & RELAY_OVERWRITE)
      hooks.subbuf_start = &hook_overwrite;
    hooks.overwrite = c->opts.flags & RELAY_OVERWRITE;
    if (c->cb.deliver) hooks.deliver = &hook_deliver;
    if (c->cb.buf_full) hooks.buf_full = &hook_buf_full;
    hooks.wakeup = &hook_wakeup;
    b->producer = std::make_unique<core::Producer>(b->buffer, hooks);
    b->p = b->producer.get();
    // Buffer i is written only from CPU i (producer_for), so its writers can reserve with an
    // rseq section instead of a locked CAS. Not when a buffer serves several CPUs (fewer
    // buffers than possible CPUs) or all of them (global).
    if (!is_global && reply.n_buffers >= ncpus_possible()) b->producer->bind_cpu(b->pub.cpu);
    if (c->opts.flags & RELAY_BLOCKING)
      b->producer->set_blocking(
          true, c->opts.block_timeout_ms < 0 ? -1 : int64_t{c->opts.block_timeout_ms} * 1'000'000);
  }
  for (const auto& ev : early) deliver_event(c, ev);
  timeval none{0, 0};  // from now on the event thread waits for as long as the channel lives
  ::setsockopt(c->sock.get(), SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
  c->events = std::thread(event_loop, c);
  return 0;
}

core::Producer* producer_for(rchan* chan) {
  Chan* c = impl(chan);
  const unsigned i = c->pub.is_global ? 0 : current_cpu() % c->pub.n_buffers;
  return c->bufs[i]->producer.get();
}

// Runs op on the buffer of the CPU the thread runs on; again if the thread moved to another CPU
// between the choice and the write (a buffer bound to its CPU refuses it: core::kOtherCpu).
template <class Op>
int on_this_cpu(rchan* chan, Op op) {
  for (;;) {
    const int rc = op(producer_for(chan));
    if (rc != core::kOtherCpu) [[likely]]
      return rc;
  }
}

}  // namespace

extern "C" {

RELAY_API rchan* relay_open(const char* base_filename, const char* parent, size_t subbuf_size,
                            size_t n_subbufs, const rchan_callbacks* cb, void* private_data) {
  return relay_open_opts(base_filename, parent, subbuf_size, n_subbufs, cb, private_data, nullptr);
}

RELAY_API rchan* relay_open_opts(const char* base_filename, const char* parent, size_t subbuf_size,
                                 size_t n_subbufs, const rchan_callbacks* cb, void* private_data,
                                 const relay_options* opts) {
  if (opts && ((opts->flags & ~(RELAY_OVERWRITE | RELAY_BLOCKING | RELAY_CONTROL)) != 0 ||
               (opts->flags & RELAY_OVERWRITE && opts->flags & RELAY_BLOCKING))) {
    errno = EINVAL;
    return nullptr;
  }
  try {
    auto c = std::make_unique<Chan>();
    c->pub.private_data = private_data;
    c->pub.impl = c.get();
    if (cb) c->cb = *cb;
    if (opts) c->opts = *opts;
    if (int err = open_channel(c.get(), base_filename, parent, subbuf_size, n_subbufs); err) {
      errno = err;
      return nullptr;
    }
    return &c.release()->pub;
  } catch (const std::bad_alloc&) {
    errno = ENOMEM;
  } catch (...) {
    errno = EIO;
  }
  return nullptr;
}

RELAY_API int relay_close(rchan* chan) {
  if (!chan) return fail(EINVAL);
  std::unique_ptr<Chan> c(impl(chan));
  for (auto& b : c->bufs) b->producer->close();
  int status = 0;
  try {
    const uint32_t seq = c->seq.fetch_add(1);
    if (proto::send_message(c->sock.get(), proto::encode(proto::CloseRequest{c->id}, seq)) == 0) {
      std::unique_lock lk(c->mu);
      if (!c->cv.wait_for(lk, relayfs::client::kReplyTimeout, [&] { return c->close_replied; }))
        status = -EIO;
      else
        status = c->close_status;
    } else {
      status = -EIO;
    }
  } catch (...) {
    status = -EIO;
  }
  ::shutdown(c->sock.get(), SHUT_RDWR);  // ends the event thread
  if (c->events.joinable()) c->events.join();
  return status ? fail(EIO) : 0;
}

RELAY_API int relay_flush(rchan* chan) {
  if (!chan) return fail(EINVAL);
  for (auto& b : impl(chan)->bufs)
    if (int rc = b->producer->flush(); rc) return fail(-rc);
  return 0;
}

RELAY_API int relay_reset(rchan* chan) {
  if (!chan) return fail(EINVAL);
  for (auto& b : impl(chan)->bufs) b->producer->reset();
  return 0;
}

RELAY_API int relay_write(rchan* chan, const void* data, size_t length) {
  const int rc =
      on_this_cpu(chan, [&](core::Producer* p) noexcept { return p->write(data, length); });
  if (rc != 0) [[unlikely]]
    return fail(-rc);
  return 0;
}

RELAY_API int relay_vprintf(rchan* chan, const char* fmt, va_list ap) {
  if (!chan || !fmt) return fail(EINVAL);
  // Most records fit on the stack; a longer one is formatted again into the heap.
  char small[256];
  va_list again;
  va_copy(again, ap);
  const int n = std::vsnprintf(small, sizeof small, fmt, ap);
  int rc = 0;
  if (n < 0) {
    rc = fail(EINVAL);
  } else if (n == 0) {
    rc = 0;  // nothing to write: a zero-length record does not exist
  } else if (static_cast<size_t>(n) < sizeof small) {
    rc = relay_write(chan, small, static_cast<size_t>(n));
  } else {
    std::unique_ptr<char[]> big(new (std::nothrow) char[static_cast<size_t>(n) + 1]);
    if (!big)
      rc = fail(ENOMEM);
    else {
      std::vsnprintf(big.get(), static_cast<size_t>(n) + 1, fmt, again);
      rc = relay_write(chan, big.get(), static_cast<size_t>(n));
    }
  }
  va_end(again);
  return rc == 0 ? n : -1;
}

RELAY_API int relay_printf(rchan* chan, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const int n = relay_vprintf(chan, fmt, ap);
  va_end(ap);
  return n;
}

RELAY_API int relay_buf_stats(rchan_buf* buf, relay_stats* st) {
  if (!buf || !st) return fail(EINVAL);
  relayfs::client::read_stats(impl(buf)->buffer, st);
  return 0;
}

RELAY_API int __relay_write(rchan* chan, const void* data, size_t length) {
  return relay_write(chan, data, length);
}

RELAY_API void* relay_reserve(rchan* chan, size_t length) {
  core::Reservation r;
  if (int rc = on_this_cpu(chan, [&](core::Producer* p) noexcept { return p->reserve(length, &r); });
      rc) {
    errno = -rc;
    return nullptr;
  }
  ++core::tl_open_reservations;
  return r.ptr;
}

RELAY_API void relay_commit(rchan* chan, void* reserved, size_t count) {
  // The thread may have moved to another CPU since it reserved: find the buffer by address.
  for (auto& b : impl(chan)->bufs)
    if (b->producer->commit_at(reserved, count)) {
      // Another thread may commit what this one reserved: the count only ever guards waiting.
      if (core::tl_open_reservations > 0) --core::tl_open_reservations;
      return;
    }
}

RELAY_API int relay_subbufs_consumed(rchan* chan, unsigned int cpu, size_t subbufs_consumed) {
  Chan* c = impl(chan);
  if (cpu >= c->pub.n_buffers) return fail(EINVAL);
  if (subbufs_consumed == 0) return 0;
  try {
    const auto msg =
        proto::encode(proto::ConsumedRequest{c->id, cpu, subbufs_consumed}, c->seq.fetch_add(1));
    if (proto::send_message(c->sock.get(), msg) != 0) return fail(EIO);
  } catch (...) {
    return fail(ENOMEM);
  }
  return 0;
}

RELAY_API int relay_buf_full(rchan_buf* buf) {
  return impl(buf)->p->buf_full() ? 1 : 0;
}

RELAY_API void subbuf_start_reserve(rchan_buf* buf, size_t length) {
  impl(buf)->p->subbuf_start_reserve(length);
}

}  // extern "C"
