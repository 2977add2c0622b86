// librelayfs: the relay API over src/core's Producer and the daemon's control socket.
// Exceptions stop here: every exported function catches and reports errno.
#include "relayfs/relay.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "client/common.h"
#include "client/reattach.h"
#include "core/buffer.h"
#include "core/geometry.h"
#include "core/producer.h"
#include "proto/protocol.h"
#include "proto/wire.h"

namespace {

using relayfs::core::UniqueFd;
namespace core = relayfs::core;
namespace proto = relayfs::proto;


struct Chan;

// Events relay_open keeps while it waits for the daemon's reply (see open_channel).
constexpr size_t kMaxEarlyEvents = 4096;

struct Buf {
  rchan_buf pub{};
  core::Buffer buffer;
  // Its mmap readers' bells (kBell), rung by the producer's writers: declared before the
  // producer, which uses it, so that it outlives it.
  core::Bells bells;
  std::unique_ptr<core::Producer> producer;
  // The producer, reachable from callbacks too: opening runs subbuf_start (which may call
  // relay_buf_full or subbuf_start_reserve) before the constructor has returned.
  core::Producer* p = nullptr;
  Chan* chan = nullptr;
};

// The channel's event thread, held by its pthread_t rather than by a std::thread: a fork child
// inherits the handle but not the thread, and must drop the handle without touching the thread.
// A std::thread cannot be dropped that way: destroying a joinable one calls std::terminate, and
// joining or detaching it in the child would act on a thread descriptor that glibc's fork has
// already recycled there (the child's glibc takes the other threads' stacks for reuse), waiting
// forever or freeing a stranger's. A pthread_t is a plain value that can simply be forgotten.
class EventThread {
 public:
  EventThread() = default;
  EventThread(const EventThread&) = delete;
  EventThread& operator=(const EventThread&) = delete;
  ~EventThread() { join(); }

  // Starts fn(arg). Returns 0 or -errno of pthread_create (-EAGAIN).
  int start(void* (*fn)(void*), void* arg) noexcept {
    const int err = ::pthread_create(&thread_, nullptr, fn, arg);
    started_ = err == 0;
    return -err;
  }
  // Waits for the thread to end; the caller has made it end (shutdown of the socket).
  void join() noexcept {
    if (started_) ::pthread_join(thread_, nullptr);
    started_ = false;
  }
  // Forgets the thread without waiting: in a fork child, where it does not exist.
  void release() noexcept { started_ = false; }
  // Lets the thread end by itself, unwaited for: relay_close giving up on a stuck thread.
  void detach() noexcept {
    if (started_) ::pthread_detach(thread_);
    started_ = false;
  }

 private:
  pthread_t thread_{};
  bool started_ = false;
};

struct Chan {
  rchan pub{};
  rchan_callbacks cb{};
  relay_options opts{};
  std::vector<std::unique_ptr<Buf>> bufs;
  std::vector<rchan_buf*> bufptrs;
  // The daemon's socket and doorbell. When the channel reattaches to a new daemon, the new
  // socket takes this descriptor's number (dup3), so a thread that uses it meanwhile reaches the
  // old daemon or the new one, never a closed or reused descriptor; the doorbell goes along to
  // the new daemon and stays.
  UniqueFd sock;
  UniqueFd doorbell;
  // The channel's number at its daemon; a new one after a reattach.
  std::atomic<uint32_t> id{0};
  std::atomic<uint32_t> seq{1};
  // What a reattach asks the next daemon for: the request relay_open made, and where.
  proto::OpenRequest request;
  relayfs::client::Place place;
  std::string daemon;  // the control socket name of the daemon it is attached to
  uid_t daemon_uid = 0;  // who ran the daemon relay_open reached: the buffers go only to them, or root
  // relay_close and the event thread: whether a daemon has the channel now, and whether
  // relay_close began. sock_mu orders a reattach against relay_close's request (relay_close).
  std::mutex sock_mu;
  bool attached = true;  // guarded by sock_mu
  bool shut = false;     // relay_close shut the socket down; guarded by sock_mu
  // relay_close and the event thread: the thread has ended its work (a futex word), and which of
  // the two frees the channel when relay_close stops waiting for a thread stuck in a file system
  // that does not answer (relay_close, event_main).
  std::atomic<uint32_t> thread_done{0};
  std::atomic<uint32_t> handoff{0};
  std::atomic<bool> closing{false};
  UniqueFd wake;  // eventfd: relay_close wakes an event thread that waits for a mount
  // The process that opened the channel, and the fork generation it was in (owns()).
  pid_t owner_pid = 0;
  uint64_t owner_gen = 0;
  EventThread events;
  // The answer to relay_close: the event thread sets close_status, then close_done (release),
  // and wakes the futex on close_done that relay_close sleeps on. A futex word, not a mutex and
  // condition variable: a fork child frees its copy of the channel, and glibc's
  // pthread_cond_destroy waits for every waiter registered on the variable, so a copy taken
  // while a parent thread waited in relay_close would hang the child's relay_close forever.
  std::atomic<uint32_t> close_done{0};
  int close_status = 0;  // written by the event thread only, before close_done
  // What the inline relay_write reads (relay_fast.h): filled once the producers are bound
  // (open_channel), then constant until relay_close frees it with the channel. pub.fast points
  // at it only if some buffer is on.
  relay_fast fast{};
  std::vector<relay_fast_buf> fast_bufs;
};

Chan* impl(rchan* c) {
  return static_cast<Chan*>(c->impl);
}
Buf* impl(rchan_buf* b) {
  return static_cast<Buf*>(b->impl);
}

// How long relay_close waits for an event thread that has no daemon: it answers at once unless
// a file system it is asking does not answer.
constexpr auto kNoDaemonWait = std::chrono::seconds(1);

// The C boundary: reports rc (-errno) in errno, and returns -1.
int fail(int rc) {
  errno = -rc;
  return -1;
}

// ---- fork(2) ------------------------------------------------------------------------------------
//
// A fork child inherits its parent's channels: the handle, a copy of the socket and buffer
// descriptors, the MAP_SHARED buffers, but not the event thread. The channel stays the parent's
// (relay_open(3), "fork(2)"): the child's writes land in the shared buffers as the parent's do,
// while relay_close only frees the child's handle and relay_reset, which needs the owner's
// promise that nobody writes, fails with EPERM. Nothing is checked on the write path; the slow
// paths that care ask owns().
//
// Two signs, each covering the other's blind spot: the pid recorded at relay_open, and a fork
// generation a pthread_atfork child handler bumps. The pid alone misses a grandchild that gets
// the pid of an opener that has exited (pid reuse), or a child in a new pid namespace that is
// pid 1 like its parent; the generation alone misses children made without fork's handlers
// (_Fork, a raw clone or syscall(SYS_fork)). getpid() is a system call, which is why only slow
// paths ask.

// Bumped in every child of fork(). relaxed: the handler runs while the child has one thread,
// and threads started later are ordered after it by pthread_create.
std::atomic<uint64_t> g_fork_gen{0};

void on_fork_child() {
  g_fork_gen.fetch_add(1, std::memory_order_relaxed);
}

// The current fork generation; registers the handler the first time (children inherit it). If
// registering fails (ENOMEM), the generation stays put and the pid alone decides.
uint64_t fork_generation() {
  static const bool registered = ::pthread_atfork(nullptr, nullptr, &on_fork_child) == 0;
  (void)registered;
  return g_fork_gen.load(std::memory_order_relaxed);
}

// Whether the calling process opened c, rather than inheriting it from a fork.
bool owns(const Chan* c) {
  return c->owner_pid == ::getpid() && c->owner_gen == fork_generation();
}

// The futex word of an atomic that only this process maps: a private futex.
uint32_t* futex_word(std::atomic<uint32_t>& a) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  return reinterpret_cast<uint32_t*>(&a);
}

// The event thread's side of relay_close: the answer is known.
void set_close_status(Chan* c, int status) {
  c->close_status = status;
  // release: relay_close reads close_status after its acquire load sees this.
  c->close_done.store(1, std::memory_order_release);
  ::syscall(SYS_futex, futex_word(c->close_done), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr,
            0);
}

// Waits up to limit for word to leave 0. Returns whether it did. acquire: pairs with the
// release store that set it, so what was written before is seen.
bool wait_word(std::atomic<uint32_t>& word, std::chrono::nanoseconds limit) {
  using Clock = std::chrono::steady_clock;
  const auto until = Clock::now() + limit;
  while (word.load(std::memory_order_acquire) == 0) {
    const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(until - Clock::now());
    if (left.count() <= 0) return false;
    const timespec ts{static_cast<time_t>(left.count() / 1'000'000'000),
                      static_cast<long>(left.count() % 1'000'000'000)};
    // Returns at once if the word is no longer 0; EINTR and spurious wake-ups just loop.
    ::syscall(SYS_futex, futex_word(word), FUTEX_WAIT_PRIVATE, 0, &ts, nullptr, 0);
  }
  return true;
}

// relay_close's side: waits up to limit for the event thread's answer. Returns it, or timeout
// when none came in time.
int wait_close_status(Chan* c, std::chrono::nanoseconds limit, int timeout) {
  return wait_word(c->close_done, limit) ? c->close_status : timeout;
}

// CPUs the system may have: the daemon makes one buffer per CPU the same way.
unsigned ncpus_possible() {
  return static_cast<unsigned>(std::max(1, get_nprocs_conf()));
}

// One more than the highest CPU number the system may ever use (/sys/devices/system/cpu/possible,
// e.g. "0-3,8-11" gives 12): above ncpus_possible() where the numbers have holes. A buffer may be
// bound to CPU i only if every CPU a thread can run on has a buffer of its own; otherwise a thread
// on CPU 8 of a 8-buffer channel would be sent to buffer 0, bound to CPU 0, forever. The whole
// list is read and every range looked at; a list that cannot be read or parsed gives UINT_MAX:
// no buffer is bound (the CAS path, which any CPU may take).
unsigned read_cpu_limit() {
  UniqueFd fd(::open("/sys/devices/system/cpu/possible", O_RDONLY | O_CLOEXEC));
  if (!fd) return UINT_MAX;
  std::string text;
  char chunk[512];
  for (;;) {
    const ssize_t n = ::read(fd.get(), chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return UINT_MAX;
    if (n == 0) break;
    text.append(chunk, static_cast<size_t>(n));
    if (text.size() > (1u << 20)) return UINT_MAX;  // no such list exists
  }
  // "A[-B](,A[-B])*\n": the limit is one more than the highest number in it.
  unsigned long hi = 0;
  bool any = false;
  const char* p = text.c_str();
  while (*p != '\0' && *p != '\n') {
    if (*p < '0' || *p > '9') return UINT_MAX;
    char* end = nullptr;
    const unsigned long v = std::strtoul(p, &end, 10);
    if (end == p || v >= 65536) return UINT_MAX;
    hi = std::max(hi, v);
    any = true;
    p = end;
    if (*p == '-' || *p == ',') ++p;
  }
  return any ? static_cast<unsigned>(hi + 1) : UINT_MAX;
}
unsigned cpu_limit() {
  static const unsigned limit = read_cpu_limit();  // the possible CPUs never change
  return limit;
}

unsigned current_cpu() {
  // glibc 2.35+ reads the CPU from its registered rseq area: no system call.
  const int cpu = ::sched_getcpu();
  return cpu < 0 ? 0 : static_cast<unsigned>(cpu);
}

// Gives the inline relay_write (relay.h) its descriptor: buffer i serves CPU i, and only a
// buffer bound to its CPU with rseq commits is on. RELAYFS_INLINE=0 in the environment keeps
// every write on the exported path (a measuring aid, and a way out if the inline path is ever
// suspected).
// The descriptor is ABI: a change of its layout, or of what the inline code may assume of the
// shared layout it points into, is a new RELAY_FAST_VERSION (relay_write(3)).
static_assert(RELAY_FAST_VERSION == 2 && sizeof(relay_fast_buf) == 88 && sizeof(relay_fast) == 16,
              "the inline path's descriptor changed: bump RELAY_FAST_VERSION and this check");
void publish_fast(Chan* c) {
  const char* env = std::getenv("RELAYFS_INLINE");
  if (env && std::strcmp(env, "0") == 0) return;
  bool any = false;
  c->fast_bufs.reserve(c->bufs.size());
  for (auto& b : c->bufs) {
    c->fast_bufs.push_back(b->producer->fast_desc());
    any = any || c->fast_bufs.back().on != 0;
  }
  if (!any) return;
  c->fast.version = RELAY_FAST_VERSION;
  c->fast.n_buffers = static_cast<uint32_t>(c->fast_bufs.size());
  c->fast.buf = c->fast_bufs.data();
  c->pub.fast = &c->fast;
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
  // Only when a reader armed the doorbell. The write fails only with EAGAIN, at a counter of
  // 2^64-2 the daemon has not read: it is awake already, and nothing is lost by dropping it.
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

// A reader's bell for one of this channel's buffers (kBell), or its end (kBellGone). Whatever the
// daemon sends is checked (Bells::add): a bad event, or one without its two descriptors, is
// dropped, and the descriptors close with r.
// Tells the daemon that this producer could not take the bell of ev: its reader then falls back
// to its relay file instead of waiting on a bell that nobody would ring.
void refuse_bell(Chan* c, const proto::BellEvent& ev) {
  proto::send_message(c->sock.get(), proto::encode_event(proto::Type::kBellRefused, ev));
}

// kBell or kBellGone. A kBell whose descriptors did not fit this process's descriptor table
// comes with fewer than its two.
void bell_event(Chan* c, proto::Received& r) {
  const auto type = static_cast<proto::Type>(r.header.type);
  proto::BellEvent ev;
  if (proto::decode(r.payload.data(), r.payload.size(), &ev) != 0) return;
  if (ev.channel_id != c->id || ev.buffer >= c->bufs.size()) return;
  core::Bells& bells = c->bufs[ev.buffer]->bells;
  if (type == proto::Type::kBellGone) return bells.remove(ev.bell);
  // Refused (no descriptors, full, a duplicate, not a page and a socket): said, so that the
  // reader wakes through its file.
  if (r.fds.size() != 2 || bells.add(ev.bell, std::move(r.fds[0]), std::move(r.fds[1])) != 0)
    refuse_bell(c, ev);
}

// Events that came before the reply to an open or adopt request, once the channel is set up.
void deliver_early(Chan* c, std::vector<proto::Received>& early) {
  for (auto& ev : early) {
    const auto type = static_cast<proto::Type>(ev.header.type);
    if (type == proto::Type::kBell || type == proto::Type::kBellGone)
      bell_event(c, ev);
    else
      deliver_event(c, ev);
  }
}

// A flush, reset or close asked for from outside (relay_control), if the producer allows it.
// Returns 0 or -errno for the requester.
int outside_control(Chan* c, proto::ControlOp op) {
  const int code = relayfs::client::control_code(op);
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
// (relay_control), and the reply to relay_close. Returns when the connection ends: relay_close
// shut it down, or the daemon is gone. *answered: relay_close has its answer.
void serve(Chan* c, bool* answered) {
  for (;;) {
    proto::Received r;
    // Two descriptors at most: a bell's (kBell). Any others are closed unread.
    const int rc = proto::recv_message(c->sock.get(), &r, 2);
    if (rc == -EAGAIN || rc == -EPROTO) continue;  // receive timeout, or noise: keep listening
    if (rc == -EMFILE) {
      // The message came, but this process had no room (its limit) for its descriptors, which
      // only a bell carries: bell_event finds them missing and refuses it. The connection is fine.
      if (static_cast<proto::Type>(r.header.type) == proto::Type::kBell) bell_event(c, r);
      continue;
    }
    if (rc <= 0) return;
    const auto type = static_cast<proto::Type>(r.header.type);
    if (type == proto::Type::kMapped || type == proto::Type::kUnmapped) {
      deliver_event(c, r);
    } else if (type == proto::Type::kBell || type == proto::Type::kBellGone) {
      bell_event(c, r);
    } else if (type == proto::Type::kControlRequest) {
      proto::ChannelControl req;
      int status = proto::decode(r.payload.data(), r.payload.size(), &req);
      if (status == 0) status = req.channel_id == c->id ? outside_control(c, req.op) : -ENOENT;
      proto::send_message(c->sock.get(), proto::encode_status(proto::Type::kControlDone,
                                                              {status}, r.header.seq));
    } else if (type == proto::Type::kCloseReply && !*answered) {
      proto::Status st;
      set_close_status(c, proto::decode(r.payload.data(), r.payload.size(), &st) == 0 ? st.status
                                                                                     : -EIO);
      *answered = true;
      if (c->closing.load(std::memory_order_acquire)) return;  // nothing more to serve
    }
  }
}

// How long a channel without a daemon waits between looks when the mount table says nothing:
// a slow fallback for a mount the table does not report (another mount namespace).
constexpr int kReattachFallbackMs = 5000;

// The daemon is gone: the buffers stay the producer's, and writes go on into them with nothing
// changed on their path (a full no-overwrite buffer drops and counts, or blocks with its
// timeout; an overwrite buffer overwrites). Nobody reads them until the next daemon, so nobody
// waits for the doorbell: disarmed, or every commit would ring a dead eventfd.
void detach(Chan* c) {
  {
    std::lock_guard lk(c->sock_mu);
    c->attached = false;
  }
  for (auto& b : c->bufs) {
    b->buffer.header()->waiters.store(0, std::memory_order_relaxed);  // a hint, re-armed later
    // Its readers' bells came from that daemon: they see POLLERR on their files and open them
    // again at the next one, which hands out new bells.
    b->bells.clear();
  }
}

// Who runs the daemon at the other end of sock. Returns 0 or -errno.
int peer_uid(int sock, uid_t* uid) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -errno;
  *uid = cred.uid;
  return 0;
}

// Reads the daemon's answer to an open or adopt request on sock (relay_open, reattach): 0 with
// *reply and its message *r, or -errno (the daemon's refusal, or -EIO).
int await_open(Chan* c, int sock, proto::OpenReply* reply, proto::Received* r,
               std::vector<proto::Received>* early) {
  // A reader may open a file of the new channel before the reply reaches us (the files exist
  // once the daemon made them): its buf_mapped event can come first. Such events are kept and
  // delivered once the channel is set up; a daemon that sent nothing but events is broken.
  for (;;) {
    const int rc = proto::recv_message(sock, r, proto::kMaxFds);
    if (rc <= 0) return rc == 0 || rc == -EAGAIN ? -EIO : rc;
    const auto type = static_cast<proto::Type>(r->header.type);
    if (type != proto::Type::kMapped && type != proto::Type::kUnmapped &&
        type != proto::Type::kBell && type != proto::Type::kBellGone)
      break;
    if (early->size() >= kMaxEarlyEvents) return -EIO;
    early->push_back(std::move(*r));
    *r = {};
  }
  if (static_cast<proto::Type>(r->header.type) != proto::Type::kOpenReply)
    return relayfs::client::refusal(*r);
  if (proto::decode(r->payload.data(), r->payload.size(), reply) != 0) return -EIO;
  if (reply->status < 0) return reply->status;
  if (reply->subbuf_size != c->request.subbuf_size || reply->n_subbufs != c->request.n_subbufs)
    return -EIO;
  return 0;
}

// One attempt to hand the channel to the daemon mounted where it was. Returns 0 once attached,
// or -errno: no relayfs there (yet), the same daemon that hung up, or its refusal.
int reattach(Chan* c) {
  // The root as it is now, and the daemon that serves it, asked through that open directory.
  UniqueFd root;
  if (int rc = relayfs::client::open_root(c->place, &root); rc) return rc;
  std::string name;
  if (int rc = relayfs::client::daemon_of(root.get(), &name); rc) return rc;
  if (name == c->daemon) return -EAGAIN;  // the daemon that hung up
  UniqueFd sock;
  if (int rc = proto::connect_named(name, static_cast<int>(relayfs::client::kReplyTimeout.count()),
                                    &sock);
      rc)
    return rc;
  // The buffers, with the data in them, go only to a daemon run by whoever ran the first one, or
  // by root: not to a file system another user mounted where a writable mount point let them.
  // Checked before anything is made there.
  uid_t uid = static_cast<uid_t>(-1);  // set by peer_uid on success
  if (int rc = peer_uid(sock.get(), &uid); rc) return rc;
  if (uid != c->daemon_uid && uid != 0) return -EPERM;
  ino_t parent;
  if (int rc = relayfs::client::open_parent(root.get(), c->place, &parent); rc) return rc;
  proto::OpenRequest req = c->request;
  req.parent_ino = parent;
  req.adopt = static_cast<uint32_t>(c->bufs.size());
  std::vector<int> fds;
  for (auto& b : c->bufs) fds.push_back(b->buffer.fd());
  // The doorbell too: the new daemon keeps it, so a ring from any thread or fork child holding
  // it, before or after this, reaches the new daemon.
  fds.push_back(c->doorbell.get());
  if (int rc = proto::send_message(sock.get(), proto::encode(req, c->seq.fetch_add(1)),
                                   fds.data(), fds.size());
      rc)
    return proto::send_failure(sock.get(), rc);
  proto::OpenReply reply;
  proto::Received r;
  std::vector<proto::Received> early;
  if (int rc = await_open(c, sock.get(), &reply, &r, &early); rc) return rc;
  if (reply.n_buffers != c->bufs.size() || !r.fds.empty()) return -EIO;
  timeval none{0, 0};  // as relay_open: the event thread waits as long as the channel lives
  if (::setsockopt(sock.get(), SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none) != 0) return -errno;
  bool close_now;
  {
    std::lock_guard lk(c->sock_mu);
    // relay_close gave up waiting and shut the old socket down: the new one must not replace it
    // (the channel, adopted over there, is finalized when this socket closes).
    if (c->shut) return -ECANCELED;
    // The new socket takes the old number: relay_close or relay_subbufs_consumed sending
    // meanwhile reach one daemon or the other, never a closed or reused descriptor.
    if (::dup3(sock.get(), c->sock.get(), O_CLOEXEC) < 0) return -errno;
    c->id.store(reply.channel_id, std::memory_order_relaxed);
    c->daemon = name;
    c->attached = true;
    close_now = c->closing.load(std::memory_order_relaxed);
  }
  deliver_early(c, early);
  // relay_close came while this was under way, and found no daemon to ask: ask this one.
  if (close_now)
    proto::send_message(c->sock.get(), proto::encode(proto::CloseRequest{c->id}, c->seq.fetch_add(1)));
  return 0;
}

// The channel's event thread: serves its daemon, and when the daemon is gone waits for the next
// one to reattach to, until relay_close.
void event_loop(Chan* c) {
  bool answered = false;  // relay_close has its answer: close_status is final
  relayfs::client::MountWatch watch;
  bool watching = false;
  for (;;) {
    serve(c, &answered);
    if (c->closing.load(std::memory_order_acquire)) break;  // relay_close shut the socket
    detach(c);
    if (!watching) {
      watch.open();  // without /proc the fallback alone paces the looks
      watching = true;
    }
    // Until a daemon takes the channel or relay_close ends it. The first look is at once: the
    // next daemon may be mounted already.
    int woke = 1;
    while (!c->closing.load(std::memory_order_acquire)) {
      if (woke != 0 && reattach(c) == 0) break;
      woke = watch.wait(c->wake.get(), kReattachFallbackMs);
      if (woke == 0) woke = 1;  // the fallback: look anyway
    }
    if (c->closing.load(std::memory_order_acquire)) {
      std::lock_guard lk(c->sock_mu);
      if (!c->attached) break;  // relay_close found no daemon: it has the answer already
    }
  }
  if (!answered) set_close_status(c, -ENOTCONN);  // nobody will confirm
}

void* event_main(void* chan) {
  Chan* c = static_cast<Chan*>(chan);
  event_loop(c);
  // Done. relay_close joins this thread once it sees thread_done; if it stopped waiting first
  // (the thread was stuck in a file system that did not answer), the channel is ours to free.
  // release: relay_close's acquire in wait_word.
  c->thread_done.store(1, std::memory_order_release);
  ::syscall(SYS_futex, futex_word(c->thread_done), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr,
            0);
  // acq_rel: whichever of the two comes second frees the channel, after the other is done.
  if (c->handoff.exchange(1, std::memory_order_acq_rel) == 1) delete c;
  return nullptr;
}

// relay_open's work. Returns 0 or -errno, as relay_open(3) lists them.
int open_channel(Chan* c, const char* base, const char* parent, size_t subbuf_size,
                 size_t n_subbufs) {
  if (!base) return -EINVAL;
  if (int rc = proto::name_error(base); rc) return rc;
  if (!parent || !*parent) parent = std::getenv("RELAYFS_MOUNT");
  if (!parent || !*parent) return -EINVAL;
  c->owner_pid = ::getpid();
  c->owner_gen = fork_generation();
  core::Geometry g;
  if (int rc = core::make_geometry(subbuf_size, n_subbufs, &g); rc) return rc;
  struct stat st;
  if (::stat(parent, &st) != 0) return -errno;
  if (!S_ISDIR(st.st_mode)) return -ENOTDIR;

  // create_buf_file decides the mode and whether the channel is global.
  mode_t mode = 0400;
  int is_global = 0;
  if (c->cb.create_buf_file) {
    const unsigned ncpu = ncpus_possible();
    rchan_buf probe{&c->pub, 0, nullptr};
    for (unsigned i = 0; i < ncpu && !is_global; ++i) {
      probe.cpu = i;
      const std::string file = std::string(base) + std::to_string(i);
      if (c->cb.create_buf_file(file.c_str(), parent, &mode, &probe, &is_global) != 0)
        return -EPERM;
    }
  }
  if (int rc = relayfs::client::place_of(parent, &c->place); rc) return rc;
  {
    UniqueFd root;
    if (int rc = relayfs::client::open_root(c->place, &root); rc) return rc;
    if (int rc = relayfs::client::daemon_of(root.get(), &c->daemon); rc) return rc;
  }
  c->wake.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!c->wake) return -errno;
  if (int rc = proto::connect_named(c->daemon,
                                    static_cast<int>(relayfs::client::kReplyTimeout.count()),
                                    &c->sock);
      rc)
    return rc;
  if (int rc = peer_uid(c->sock.get(), &c->daemon_uid); rc) return rc;

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
  c->request = req;
  const uint32_t seq = c->seq.fetch_add(1);
  if (int rc = proto::send_message(c->sock.get(), proto::encode(req, seq)); rc)
    return proto::send_failure(c->sock.get(), rc);
  proto::Received r;
  std::vector<proto::Received> early;
  proto::OpenReply reply;
  if (int rc = await_open(c, c->sock.get(), &reply, &r, &early); rc) return rc;
  if (r.fds.size() != reply.n_buffers + 1) return -EIO;

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
    if (int rc =
            core::Buffer::attach(std::move(r.fds[i]), g, PROT_READ | PROT_WRITE, true, &b->buffer))
      return rc;
    // Every page allocated and mapped now, as the kernel's relay_open does: no write faults.
    if (int rc = b->buffer.populate(); rc) return rc;
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
    hooks.bells = &b->bells;
    b->producer = std::make_unique<core::Producer>(b->buffer, hooks);
    b->p = b->producer.get();
    // Buffer i is written only from CPU i (producer_for), so its writers can reserve with an
    // rseq section instead of a locked CAS. Not when a buffer serves several CPUs (fewer
    // buffers than possible CPUs) or all of them (global).
    if (!is_global && reply.n_buffers >= cpu_limit()) b->producer->bind_cpu(b->pub.cpu);
    if (c->opts.flags & RELAY_BLOCKING)
      b->producer->set_blocking(
          true, c->opts.block_timeout_ms < 0 ? -1 : int64_t{c->opts.block_timeout_ms} * 1'000'000);
  }
  publish_fast(c);
  deliver_early(c, early);
  timeval none{0, 0};  // from now on the event thread waits for as long as the channel lives
  if (::setsockopt(c->sock.get(), SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none) != 0)
    return -errno;  // the event thread would take a quiet channel for a dead daemon
  return c->events.start(&event_main, c);
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
  std::unique_ptr<Chan> c;
  if (int rc = relayfs::client::guarded([&] {
        c = std::make_unique<Chan>();
        c->pub.private_data = private_data;
        c->pub.impl = c.get();
        if (cb) c->cb = *cb;
        if (opts) c->opts = *opts;
        return open_channel(c.get(), base_filename, parent, subbuf_size, n_subbufs);
      })) {
    errno = -rc;
    return nullptr;
  }
  return &c.release()->pub;
}

RELAY_API int relay_close(rchan* chan) {
  if (!chan) return fail(-EINVAL);
  std::unique_ptr<Chan> c(impl(chan));
  if (!owns(c.get())) {
    // A fork child: the channel is the parent's, so only this process's handle goes. The
    // buffers stay open (no Producer::close, which would write to the shared memory), the
    // daemon hears nothing (a CloseRequest on the shared socket would finalize the parent's
    // channel, and its reply go to the parent's event thread), and the socket is not shut down
    // (that would cut the parent's connection too). The thread does not exist here: forget it.
    // Destroying c then unmaps the child's mappings and closes its copies of the descriptors.
    c->events.release();
    return 0;
  }
  for (auto& b : c->bufs) b->producer->close();
  int status = 0;
  bool asked = false;
  try {
    {
      // With the event thread's reattach: either it attached first and this request goes to
      // the new daemon, or it sees `closing` once attached and asks itself (reattach).
      std::lock_guard lk(c->sock_mu);
      c->closing.store(true, std::memory_order_release);
      asked = c->attached &&
              proto::send_message(c->sock.get(), proto::encode(proto::CloseRequest{c->id},
                                                               c->seq.fetch_add(1))) == 0;
    }
    if (!asked) {
      // No daemon: the event thread, waiting for one, answers at once (ENOTCONN).
      const uint64_t one = 1;
      if (::write(c->wake.get(), &one, sizeof one) < 0) {
      }  // EAGAIN: a wake-up is pending already
    }
    // With no daemon, a moment for the thread to answer, not the 30 s a daemon may take.
    status = asked ? wait_close_status(c.get(), relayfs::client::kReplyTimeout, -EIO)
                   : wait_close_status(c.get(), kNoDaemonWait, -ENOTCONN);
  } catch (...) {
    status = -EIO;
  }
  {
    // Ends the event thread; and a reattach under way gives up rather than put a new socket
    // in this one's place (reattach).
    std::lock_guard lk(c->sock_mu);
    c->shut = true;
    ::shutdown(c->sock.get(), SHUT_RDWR);
  }
  int rc = status ? -EIO : 0;
  if (status == -ENOTCONN) {
    // Closed with no daemon: what nobody read goes with the buffers (relay_close(3)). Said as
    // ENOTCONN when there was some; a channel read to its end closes cleanly.
    rc = 0;
    for (auto& b : c->bufs) b->producer->abandon();
    for (auto& b : c->bufs) {
      relay_stats st;
      relayfs::client::read_stats(b->buffer, &st);
      if (st.bytes_unread != 0) rc = -ENOTCONN;
    }
  }
  // A thread that answered, or serves a daemon (the shutdown ends that), ends at once; one that
  // did not answer with no daemon is stuck, and is not waited for again.
  const bool answered = c->close_done.load(std::memory_order_acquire) != 0;
  if (wait_word(c->thread_done, answered || asked ? std::chrono::nanoseconds(kNoDaemonWait)
                                                  : std::chrono::nanoseconds(0))) {
    c->events.join();
  } else {
    // The thread is stuck in a file system that does not answer (a mount point whose new daemon
    // hangs): relay_close returns all the same, and the thread frees the channel when it ends,
    // unless it ended just now (event_main).
    c->events.detach();
    if (c->handoff.exchange(1, std::memory_order_acq_rel) == 0) c.release();
  }
  return rc ? fail(rc) : 0;
}

// Also from a fork child: a flush is the switch a write that does not fit makes, which the
// child's writes make anyway. The switch is decided in the shared memory (the position word);
// the Producer's process-local state is a hint or the switch holder's own (producer.h, lap_base_).
RELAY_API int relay_flush(rchan* chan) {
  if (!chan) return fail(-EINVAL);
  for (auto& b : impl(chan)->bufs)
    if (int rc = b->producer->flush(); rc) return fail(rc);
  return 0;
}

RELAY_API int relay_reset(rchan* chan) {
  if (!chan) return fail(-EINVAL);
  // A reset needs nobody writing, which only the owner can promise: a child cannot know what the
  // parent's threads do. It would also leave the parent's lap bases ahead of the buffer's
  // (producer.h).
  if (!owns(impl(chan))) return fail(-EPERM);
  for (auto& b : impl(chan)->bufs) b->producer->reset();
  return 0;
}

RELAY_API int relay_write(rchan* chan, const void* data, size_t length) {
  const int rc =
      on_this_cpu(chan, [&](core::Producer* p) noexcept { return p->write(data, length); });
  if (rc != 0) [[unlikely]]
    return fail(rc);
  return 0;
}

RELAY_API int relay_vprintf(rchan* chan, const char* fmt, va_list ap) {
  if (!chan || !fmt) return fail(-EINVAL);
  // Most records fit on the stack; a longer one is formatted again into the heap.
  char small[256];
  va_list again;
  va_copy(again, ap);
  const int n = std::vsnprintf(small, sizeof small, fmt, ap);
  int rc = 0;
  if (n < 0) {
    rc = fail(-EINVAL);
  } else if (n == 0) {
    rc = 0;  // nothing to write: a zero-length record does not exist
  } else if (static_cast<size_t>(n) < sizeof small) {
    rc = relay_write(chan, small, static_cast<size_t>(n));
  } else {
    std::unique_ptr<char[]> big(new (std::nothrow) char[static_cast<size_t>(n) + 1]);
    if (!big)
      rc = fail(-ENOMEM);
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
  if (!buf || !st) return fail(-EINVAL);
  relayfs::client::read_stats(impl(buf)->buffer, st);
  return 0;
}

// Exported through its declaration in relay.h (RELAY_API) and librelayfs.map.
const unsigned int relay_fast_abi = RELAY_FAST_VERSION;

RELAY_API void relay_fast_commit_remote(rchan* chan, unsigned int cpu, unsigned int slot,
                                        unsigned int off, unsigned int len,
                                        unsigned long long base) {
  core::Reservation r;
  r.len = len;
  r.slot = slot;
  r.off = off;
  r.base = base;
  impl(chan)->bufs[cpu]->producer->commit_remote(r);
}

RELAY_API void relay_fast_commit_events(rchan* chan, unsigned int cpu, unsigned int slot,
                                        unsigned long long v, unsigned int ev) {
  impl(chan)->bufs[cpu]->producer->commit_events(slot, v, ev);
}

RELAY_API int __relay_write(rchan* chan, const void* data, size_t length) {
  return relay_write(chan, data, length);
}

RELAY_API void* relay_reserve(rchan* chan, size_t length) {
  core::Reservation r;
  const int rc =
      on_this_cpu(chan, [&](core::Producer* p) noexcept { return p->reserve_held(length, &r); });
  if (rc != 0) {
    errno = -rc;
    return nullptr;
  }
  return r.ptr;
}

RELAY_API void relay_commit(rchan* chan, void* reserved, size_t count) {
  // The thread may have moved to another CPU since it reserved: find the buffer by address.
  // commit_at also ends the thread's hold (Producer::reserve_held).
  for (auto& b : impl(chan)->bufs)
    if (b->producer->commit_at(reserved, count)) return;
}

// Also from a fork child: one datagram on the shared SOCK_SEQPACKET socket, whole however the
// two processes interleave, with no reply to steal from the parent's event thread; the daemon
// takes it as the owner's.
RELAY_API int relay_subbufs_consumed(rchan* chan, unsigned int cpu, size_t subbufs_consumed) {
  Chan* c = impl(chan);
  if (cpu >= c->pub.n_buffers) return fail(-EINVAL);
  if (subbufs_consumed == 0) return 0;
  try {
    const auto msg =
        proto::encode(proto::ConsumedRequest{c->id, cpu, subbufs_consumed}, c->seq.fetch_add(1));
    if (proto::send_message(c->sock.get(), msg) != 0) return fail(-EIO);
  } catch (...) {
    return fail(-ENOMEM);
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
