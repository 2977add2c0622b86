// The daemon (daemon.h): starting and stopping, the loop's dispatch, and a channel's life from
// finalization to freeing, which concerns every part.
#include "fs/daemon.h"

#include <sys/uio.h>

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <new>

#include "fs/channel.h"
#include "fs/fault.h"
#include "fs/ring_tag.h"

namespace relayfs::fs {

Daemon::Daemon(const Options& o)
    : opts_(o),
      access_(tree_, opts_.limits),
      recorder_(loop_, conns_, access_, *this),
      control_(opts_, tree_, registry_, conns_, loop_, access_, recorder_, *this),
      files(opts_, tree_, loop_, *this),
      ops(opts_, tree_, registry_, control_.name(), [this] { return access_.usage_report(); }) {}

Daemon::~Daemon() {
  stop();
  // The ring goes before the recordings whose memory writes still in flight read.
  loop_.exit();
}

int Daemon::start(fuse_session* se, const std::string& mount_dev) {
  se_ = se;
  session_thread_ = ::pthread_self();
  access_.fds().init();
  if (int rc = control_.listen()) return rc;
  if (int rc = loop_.init()) return rc;
  if (int rc = loop_.watch(control_.listen_fd(), tag(kListen, 0))) return rc;
  arm_expiry();
  watch_mount(mount_dev);
  // Without it relayfs works on, but keeps the buffers of drained channels the kernel did not
  // happen to forget.
  if (int rc = se ? forgetter_.start(fuse_session_fd(se)) : -EINVAL; rc != 0)
    std::fprintf(stderr, "relayfs: cannot start the forgetter: %s\n", std::strerror(-rc));
  loop_.run(this);
  return 0;
}

void Daemon::stop() {
  forgetter_.stop();
  loop_.stop();
  // The mount is going away: what is still parked gets EOF, as at any unmount; but a mount
  // detached under its readers is a daemon gone before its producers, whose readers must reopen
  // at the next one (relayfs(8), "RESTARTS AND UPGRADES"): not the end of their stream.
  files.answer_parked(loop_, mount_gone() ? ENOTCONN : 0);
}

void Daemon::on_completions(const std::vector<Completion>& batch) {
  // Recordings' writes last, as one-shot results (their result is a byte count); an exception
  // from one event's handler (std::bad_alloc) is reported and the loop goes on: only main() may
  // end the process.
  for (int writes = 0; writes < 2; ++writes) {
    for (const Completion& c : batch) {
      const bool write = source_of(c.ud) == kRecordWrite || source_of(c.ud) == kIndexWrite ||
                         source_of(c.ud) == kStateWrite;
      if (write != static_cast<bool>(writes)) continue;
      try {
        dispatch(c.ud, c.res);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "relayfs: %s while handling event %llu; going on\n", e.what(),
                     static_cast<unsigned long long>(c.ud));
      }
    }
  }
  recorder_.reap();  // here, where no handler holds a reference to one
  // A multishot poll that ended (the kernel may end one under pressure): armed again.
  for (const Completion& c : batch)
    if (!c.more && c.res != -ECANCELED) rearm(c.ud);
}

void Daemon::on_posted(const LoopEvent& ev) {
  switch (ev.kind) {
    case LoopEvent::kPark:
      return files.on_park(ev.read);
    case LoopEvent::kInterrupt:
      return files.on_interrupt(ev.id);
    case LoopEvent::kFree:
      return free_channel(static_cast<uint32_t>(ev.id));
    case LoopEvent::kWritable:
      return control_.on_want_writable(ev.id);
    case LoopEvent::kWake:
      return;
    case LoopEvent::kArmed:
      return arm_recheck();
  }
}

// Handles one completion.
void Daemon::dispatch(uint64_t ud, int res) {
  switch (source_of(ud)) {
    case kRecordWrite:
      return recorder_.on_write(id_of(ud), res);
    case kIndexWrite:
      return recorder_.on_index_write(id_of(ud), res);
    case kStateWrite:
      return recorder_.on_state_write(id_of(ud), res);
    case kExpire:
      if (res == -ETIME) expire_orphans();  // the tick (a cancelled one is the ring's end)
      return;
    case kRecheck:
      recheck_armed_ = false;
      if (res == -ETIME) recheck();  // a cancelled one is the ring's end
      return;
    case kIndexDeadline:
      if (res == -ETIME) recorder_.on_index_deadline(id_of(ud));
      return;
    case kEndSession:
      if (res == -ETIME) end_session();  // the session loop is still running: once more
      return;
    default:
      break;
  }
  // A wait for room that failed: flush finds out why (a failed socket empties the queue), so
  // the queue is never left waiting for a wait that is gone.
  if (source_of(ud) == kConnOut && res < 0 && res != -ECANCELED)
    return control_.on_writable(id_of(ud));
  if (res < 0 && res != -ECANCELED && source_of(ud) != kCancel)
    std::fprintf(stderr, "relayfs: poll failed on source %llu: %s\n",
                 static_cast<unsigned long long>(ud), std::strerror(-res));
  if (res < 0) return;
  switch (source_of(ud)) {
    case kListen:
      return control_.on_accept();
    case kConn:
    case kConnMore:
      return control_.on_readable(id_of(ud));
    case kConnOut:
      return control_.on_writable(id_of(ud));
    case kDoorbell:
      return on_doorbell(static_cast<uint32_t>(id_of(ud)));
    case kMounts:
      return on_mount_change();
    default:
      return;
  }
}

void Daemon::rearm(uint64_t ud) {
  int fd = -1;
  switch (source_of(ud)) {
    case kListen:
      fd = control_.listen_fd();
      break;
    case kConn:
      fd = control_.fd_of(id_of(ud));
      break;
    case kDoorbell:
      if (auto ch = registry_.find(static_cast<uint32_t>(id_of(ud)))) fd = ch->doorbell.get();
      break;
    case kMounts:
      if (loop_.watch(mounts_.fd(), ud, POLLPRI) != 0)
        std::fprintf(stderr, "relayfs: no room in the ring to watch the mount table again\n");
      return;
    case kExpire:  // a one-shot timeout: the next tick
      return arm_expiry();
    default:  // one shots: writes, cancels, deadlines; kConnOut is armed again by on_writable
      return;
  }
  if (fd >= 0 && loop_.watch(fd, ud) != 0)
    std::fprintf(stderr, "relayfs: no room in the ring to watch source %llu again\n",
                 static_cast<unsigned long long>(ud));
}

void Daemon::news(const std::shared_ptr<Source>& s) {
  if (files.service(s)) maybe_remove(s->channel_id());
  if (s->recording) recorder_.step(*s->recording);
}

void Daemon::on_doorbell(uint32_t channel_id) {
  std::shared_ptr<Channel> ch = registry_.find(channel_id);
  if (!ch) return;
  // One read takes the whole count. RWF_NOWAIT, whatever the descriptor's flags say: the file
  // is shared with the producer, who can clear O_NONBLOCK on it, and drain it between the
  // poll and this read; a plain read(2) would then block the loop thread for good.
  uint64_t v;
  iovec iov{&v, sizeof v};
  if (::preadv2(ch->doorbell.get(), &iov, 1, -1, RWF_NOWAIT) < 0) {
  }  // EAGAIN: drained already; the sources are looked at all the same
  for (auto& s : ch->sources()) news(s);
}

void Daemon::finalize(const std::shared_ptr<Channel>& ch) {
  {
    std::lock_guard lk(tree_.mu);
    if (ch->finalized) return;
    ch->finalized = true;
    ch->idle_since = std::chrono::steady_clock::now();
    for (auto& b : ch->buffers) {
      std::lock_guard blk(b->mu);
      b->finalize();
    }
  }
  for (auto& s : ch->sources()) news(s);  // parked readers get data or EOF, pollers POLLERR
  maybe_remove(ch->id);
}

// Any thread; noexcept, because FUSE handlers call it after replying.
void Daemon::maybe_remove(uint32_t channel_id) noexcept {
  try {
    remove_drained(channel_id);
  } catch (...) {
    // Out of memory: the files stay until the next reader or close looks again.
  }
}

void Daemon::remove_drained(uint32_t channel_id) {
  std::shared_ptr<Channel> ch = registry_.find(channel_id);
  if (!ch) return;
  bool free_it = true;
  {
    std::lock_guard lk(tree_.mu);
    if (!ch->finalized) return;
    for (auto& s : ch->sources()) {
      std::lock_guard slk(s->mu);
      if (!s->unlinked && s->drained()) {
        s->unlinked = true;
        if (Node* n = tree_.get(s->ino)) {
          // Until the kernel forgets the node, the node keeps the buffer alive.
          forgetter_.gone(n->parent, n->name);
          tree_.unlink(n);
        }
      }
      if (!s->unlinked || s->opens) free_it = false;
    }
  }
  if (free_it) loop_.post({LoopEvent::kFree, channel_id, nullptr});
}

void Daemon::free_channel(uint32_t id) {
  std::shared_ptr<Channel> ch = registry_.find(id);
  if (!ch) return;
  {
    std::lock_guard lk(tree_.mu);
    for (auto& s : ch->sources()) {
      std::lock_guard slk(s->mu);
      if (!s->unlinked || s->opens) return;  // reopened meanwhile? not possible once unlinked
    }
  }
  if (!registry_.take(id)) return;  // freed already (two kFree posted)
  for (auto& b : ch->buffers) {
    if (loop_.unregister_buffer(b->fixed_index) != 0)
      std::fprintf(stderr, "relayfs: channel %s: a fixed buffer slot stays taken\n",
                   ch->base.c_str());
    b->fixed_index = -1;
  }
  if (loop_.retire(tag(kDoorbell, id)) != 0)
    std::fprintf(stderr, "relayfs: channel %s: no room in the ring to stop watching it\n",
                 ch->base.c_str());
  ch->doorbell.reset();
  // Its files are gone and closed, its buffers no longer pinned: they count against their
  // owner no more. (The memfds themselves go with the last reference to their buffers.)
  ch->charge.reset();
}

// noexcept: FUSE handlers call it after they replied (open), when a throw would reach the guard
// in main.cc and make it reply a second time to a request libfuse has already freed.
void Daemon::notify_owner(const Source& s, bool mapped) noexcept {
  // buf_mapped and buf_unmapped concern one buffer's file, not the merged view.
  const RelayBuffer* b = s.buffer();
  if (!b) return;
  try {
    if (fault(Fault::kNotifyAlloc)) throw std::bad_alloc();
    std::shared_ptr<Connection> c = conns_.get(b->owner());
    if (!c) return;
    c->send(proto::encode_event(mapped ? proto::Type::kMapped : proto::Type::kUnmapped,
                                proto::BufferEvent{b->channel_id(), b->index()}));
  } catch (const std::exception& e) {
    // Out of memory: the producer misses this one callback; the file itself works on.
    std::fprintf(stderr, "relayfs: %s event of channel %u buffer %u lost: %s\n",
                 mapped ? "buf_mapped" : "buf_unmapped", b->channel_id(), b->index(), e.what());
  }
}

}  // namespace relayfs::fs
