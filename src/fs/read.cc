// The relay files as readers see them (files.h): the consuming read and everything around it.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/uio.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "fs/fault.h"
#include "fs/files.h"
#include "proto/protocol.h"

namespace relayfs::fs {

namespace {

// Per-thread read buffer: one FUSE read is at most 1 MiB (libfuse 3.14's largest request).
constexpr size_t kMaxRead = 1 << 20;
// Spans one zero-copy reply gathers (one per sub-buffer it touches); fewer than IOV_MAX.
constexpr int kMaxIov = 64;
char* read_buffer() {
  thread_local std::unique_ptr<char[]> buf(new char[kMaxRead]);
  return buf.get();
}

// The hold a reply takes on its source (Source::hold), ended once the reply is out, or when
// anything throws on the way there: a hold left behind would stop the buffer's publication for
// good, and with it a no-overwrite writer.
class ReplyHold {
 public:
  ReplyHold() = default;
  ReplyHold(const ReplyHold&) = delete;
  ReplyHold& operator=(const ReplyHold&) = delete;
  ~ReplyHold() { end(); }
  void take(Source& s) {  // s.mu held
    s.hold();
    s_ = &s;
  }
  void end_locked() {  // s.mu held
    if (s_) s_->release();
    s_ = nullptr;
  }
  void end() {
    if (!s_) return;
    std::lock_guard lk(s_->mu);
    end_locked();
  }

 private:
  Source* s_ = nullptr;
};

// The read this thread is parking: libfuse calls the interrupt callback from inside
// fuse_req_interrupt_func when the request is already interrupted.
thread_local uint64_t tl_parking = 0;
thread_local bool tl_interrupted = false;

}  // namespace

// What fi->fh holds for an open relay file.
struct FileHandle {
  std::shared_ptr<Source> source;
  // Set by kIocSubbufPoll (relay_reader_open): poll() waits for whole sub-buffers. Guarded by
  // source->mu.
  bool whole_subbufs = false;
  // The page-cache view of this open file, for splice(2) (see Files::page_read): offsets up
  // to view_end were taken from the stream for the kernel's page cache; the last of those bytes,
  // from offset history_start, are kept. Guarded by source->mu.
  uint64_t view_end = 0;
  uint64_t history_start = 0;
  std::string history;
  // Of the bytes the page cache took, those not yet shown to have reached the reader: they end
  // at view_end, and begin where the proof ends (the reader's position, as its requests tell).
  // Each run keeps its buffer, which a loss is counted against. Guarded by source->mu.
  struct Run {
    uint64_t start;  // offsets in the view where the run begins and ends
    uint64_t end;
    RelayBuffer* buf;
  };
  std::deque<Run> unproven;
  uint64_t proven = 0;

  // Bytes at the view's end, n of them, now part of it: kept for the page cache to read again
  // (the last kHistory of them).
  void extend(const char* data, size_t n) {
    constexpr size_t kHistory = 2 << 20;  // twice the largest request libfuse passes on
    history.append(data, n);
    view_end += n;
    if (history.size() > kHistory) {
      const size_t drop = history.size() - kHistory;
      history.erase(0, drop);
      history_start += drop;
    }
  }
  // The page cache took `from` at the view's end (before view_end moves past them).
  // Each buffer keeps count of its unproven bytes (Source::note_unproven), for a daemon that
  // would resume it after this one died.
  void took(const Pieces& from) {
    uint64_t at = view_end;
    for (const Piece& p : from) {
      if (!unproven.empty() && unproven.back().buf == p.buf && unproven.back().end == at)
        unproven.back().end = at + p.len;
      else
        unproven.push_back({at, at + p.len, p.buf});
      at += p.len;
      source->note_unproven(*p.buf, static_cast<int64_t>(p.len));
    }
  }
  // The reader has had everything before offset upto.
  void prove(uint64_t upto) {
    if (upto <= proven) return;
    for (const Run& r : unproven) {
      const uint64_t from = std::max(r.start, proven), to = std::min(r.end, upto);
      if (to > from) source->note_unproven(*r.buf, -static_cast<int64_t>(to - from));
    }
    proven = upto;
    while (!unproven.empty() && unproven.front().end <= proven) unproven.pop_front();
  }
  // The file is closed: what is still unproven never reached anyone we know of. Counted against
  // each run's buffer, with source->mu held.
  void give_up() {
    for (const Run& r : unproven) {
      const uint64_t from = std::max(r.start, proven);
      if (r.end > from) source->take_back(*r.buf, r.end - from);
    }
    unproven.clear();
  }
};

Files::~Files() {
  std::lock_guard hl(handles_mu_);
  for (FileHandle* fh : open_handles_) delete fh;
  open_handles_.clear();
}

void Files::open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  reply_status(req, do_open(req, ino, fi));
}

int Files::do_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  std::shared_ptr<Source> s;
  bool first = false;
  {
    std::lock_guard lk(tree_.mu);
    Node* n = tree_.get(ino);
    if (!n) return -ENOENT;
    if (n->is_dir()) return -EISDIR;
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
      return -EPERM;  // relay files are written by their producer only
    s = n->source;
    std::lock_guard slk(s->mu);
    first = s->opens++ == 0;
  }
  // A consuming file: no page cache, every read goes to read(). Seekable, to no effect but
  // tail -F's (Ops::getattr): the offset a read comes with is not where it reads.
  fi->direct_io = 1;
  fi->keep_cache = 0;
  auto* fh = new FileHandle;
  fh->source = s;
  fi->fh = reinterpret_cast<uint64_t>(fh);
  {
    std::lock_guard hl(handles_mu_);
    open_handles_.insert(fh);
  }
  if (fuse_reply_open(req, fi) != 0) {
    // The opener went away (interrupted): undo; the kernel sends no release for it.
    {
      std::lock_guard hl(handles_mu_);
      open_handles_.erase(fh);
    }
    delete fh;
    {
      std::lock_guard lk(tree_.mu);
      std::lock_guard slk(s->mu);
      --s->opens;
    }
    hooks_.maybe_remove(s->channel_id());
    return 0;
  }
  if (first) hooks_.notify_owner(*s, true);
  return 0;
}

void Files::release(fuse_req_t req, fuse_file_info* fi) {
  auto* fh = reinterpret_cast<FileHandle*>(fi->fh);
  {
    std::lock_guard hl(handles_mu_);
    open_handles_.erase(fh);
  }
  std::shared_ptr<Source> s = fh->source;
  {
    std::lock_guard lk(s->mu);
    fh->give_up();  // what the page cache took and nobody was shown to get is counted lost
    // A poll handle of this file is nobody's to notify any more: kept, it would keep the
    // doorbell's backstop ticking for a reader that is gone (recheck.cc).
    std::erase_if(s->polls, [fh](const Poller& p) {
      if (p.file != fh) return false;
      if (p.ph) fuse_pollhandle_destroy(p.ph);
      return true;
    });
  }
  delete fh;
  bool last;
  {
    std::lock_guard lk(tree_.mu);
    {
      std::lock_guard slk(s->mu);
      last = --s->opens == 0;
    }
    if (last && s->unlinked) {
      if (Node* n = tree_.get(s->ino)) tree_.maybe_free(n);
    }
  }
  if (last) hooks_.notify_owner(*s, false);
  fuse_reply_err(req, 0);
  if (last) hooks_.maybe_remove(s->channel_id());
}

// Serves the page cache (splice) by file offset. The offsets of a splicing reader follow its file
// position, which moves by exactly what that reader took, through splice or read(2). So:
//  - bytes at offsets already handed to the page cache come again from the history (the kernel
//    re-reads a page after a size change invalidated it);
//  - the next offset takes new bytes from the stream, consuming them as read() would;
//  - an offset beyond the view means the reader consumed the bytes in between with read(2):
//    the view jumps there.
// A page-cache read never blocks: with nothing new it comes up short, which the kernel takes
// for the current end of file.
//
// What the page cache takes has left the buffer, whether or not the reader gets it: a splice of
// 100 bytes takes a page. The kernel never says how much a splice delivered, only where the
// reader asks next: the next page request (without read-ahead, the kernel asks for the page the
// reader's position is in), or a read(2) at the reader's exact position. What is not proven so
// when the file closes is counted lost (lost_readahead_bytes): at most a page, without
// read-ahead (relay(7), "Splice and sendfile").
int Files::page_read(fuse_req_t req, FileHandle* fh, size_t size, off_t off) {
  // Kept: once the reply went out the file may be released, fh freed with its source.
  const std::shared_ptr<Source> keep = fh->source;
  Source& s = *keep;
  const uint64_t want = static_cast<uint64_t>(std::max<off_t>(off, 0));
  size = std::min(size, kMaxRead);
  char* out = read_buffer();
  size_t have = 0;
  ReplyHold hold;
  {
    std::lock_guard lk(s.mu);
    if (want < fh->history_start) return -EIO;  // older than anything kept: not truthfully
    if (want > fh->view_end) {  // the reader took the bytes in between with read(2)
      fh->history.clear();
      fh->history_start = fh->view_end = want;
    }
    // The reader is at least here: before it, read-ahead at most two windows ahead of it.
    fh->prove(want - std::min<uint64_t>(want, 2 * uint64_t{opts_.readahead}));
    const uint64_t from = want - fh->history_start;
    have = std::min<uint64_t>(size, fh->history.size() - from);
    std::memcpy(out, fh->history.data() + from, have);
    if (have < size) {
      Pieces pieces;
      hold.take(s);  // ended once the reply is out
      const ssize_t n = s.consume(out + have, size - have, &pieces);
      if (n > 0) {
        fh->took(pieces);
        fh->extend(out + have, static_cast<size_t>(n));
        have += static_cast<size_t>(n);
      }
    }
  }
  fuse_reply_buf(req, out, have);
  hold.end();
  return 0;
}

void Files::read(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi) {
  auto* fh = reinterpret_cast<FileHandle*>(fi->fh);
  // A read without a lock owner comes from the page cache, not from read(2): this kernel
  // splices FOPEN_DIRECT_IO files through the page cache, which asks for pages by offset.
  if (fi->lock_owner == 0) return reply_status(req, page_read(req, fh, size, off));
  int rc = do_read(req, size, off, fh);
  if (rc == -EAGAIN && !(fi->flags & O_NONBLOCK)) {
    // Nothing now. The kernel's read never blocks: an empty reply says so; -o blocking waits.
    rc = opts_.blocking ? park(req, size, fh->source) : (fuse_reply_buf(req, nullptr, 0), 0);
  }
  reply_status(req, rc);
}

// The consuming read(2). Returns 0 once it replied, -EAGAIN when there is nothing now and the
// channel goes on, or -errno.
int Files::do_read(fuse_req_t req, size_t size, off_t off, FileHandle* fh) {
  // Kept: once a reply went out the reader may close, and RELEASE free fh and the channel.
  const std::shared_ptr<Source> keep = fh->source;
  Source& s = *keep;
  size = std::min(size, kMaxRead);
  // A no-overwrite buffer replies straight from the shared mapping: one copy, by the kernel,
  // instead of two. What is sent is consumed only once the reply went through; until then the
  // writer cannot reuse it. A file that was spliced has page-cache history to serve first.
  {
    std::lock_guard lk(s.mu);
    if (fh->view_end == 0) {
      iovec iov[kMaxIov];
      int count = 0;
      const ssize_t sent = s.plan_direct(iov, kMaxIov, size, &count);
      if (sent < 0) return static_cast<int>(sent);
      if (sent > 0) {
        const bool delivered = fault_once(Fault::kReplyFail)
                                   ? (fuse_reply_err(req, EIO), false)
                                   : fuse_reply_iov(req, iov, count) == 0;
        if (delivered && fault(Fault::kDieAfterReply)) ::kill(::getpid(), SIGKILL);
        s.end_direct(delivered);
        return 0;
      }
    }
  }
  char* out = read_buffer();
  ssize_t n = 0;
  bool drained;
  ReplyHold hold;  // the position, held for this reply
  const uint64_t pos = static_cast<uint64_t>(std::max<off_t>(off, 0));
  {
    std::lock_guard lk(s.mu);
    // read(2) gives the reader's exact position: what the page cache took before it reached
    // the reader (FileHandle::unproven).
    fh->prove(pos);
    // Bytes this file's splice took into the page cache beyond its position come first: a reader
    // that mixes splice and read(2) (pv does) must get them, and nobody else may.
    if (pos >= fh->history_start && pos < fh->view_end) {
      const size_t from = static_cast<size_t>(pos - fh->history_start);
      n = static_cast<ssize_t>(std::min<size_t>(size, fh->history.size() - from));
      std::memcpy(out, fh->history.data() + from, static_cast<size_t>(n));
    }
    if (static_cast<size_t>(n) < size) {
      hold.take(s);  // until the reply is out
      const ssize_t more = s.consume(out + n, size - static_cast<size_t>(n));
      if (more < 0 && n == 0) n = more;
      if (more > 0) {
        // Once spliced, the file's offsets are the view's: what read(2) takes goes on it too,
        // so that a page the kernel asks for again holds what the reader got.
        if (fh->view_end != 0) fh->extend(out + n, static_cast<size_t>(more));
        n += more;
      }
    }
    if (n <= 0) hold.end_locked();  // nothing is on its way
    drained = n == 0 && s.drained();
  }
  if (n < 0) return static_cast<int>(n);
  if (n > 0) {
    std::unique_lock lk(s.mu);
    if (fh->view_end == 0) {
      lk.unlock();  // fh is not touched after the reply
      fuse_reply_buf(req, out, static_cast<size_t>(n));
      lk.lock();
    } else if (fuse_reply_buf(req, out, static_cast<size_t>(n)) == 0) {
      // s.mu held across the reply: release() takes it before it frees fh.
      fh->prove(pos + static_cast<uint64_t>(n));  // the reply reached the reader
    }
    if (fault(Fault::kDieAfterReply)) ::kill(::getpid(), SIGKILL);
    hold.end_locked();
    return 0;
  }
  if (!drained) return -EAGAIN;
  fuse_reply_buf(req, nullptr, 0);  // end of file: finalized and drained
  hooks_.maybe_remove(s.channel_id());
  return 0;
}

int Files::park(fuse_req_t req, size_t size, std::shared_ptr<Source> s) {
  // relaxed: a unique number is all the id must be.
  auto* pr = new ParkedRead{next_read_id_.fetch_add(1, std::memory_order_relaxed), req, size,
                            std::move(s), this};
  // Registered before the loop can see the read, so the loop never answers a request whose
  // interrupt callback is not in place (and deregisters it before answering).
  tl_parking = pr->id;
  tl_interrupted = false;
  // The callback gets the ParkedRead itself: it runs under the request's lock, which
  // finish_read's deregistration takes, so it never runs once the read is answered and freed.
  fuse_req_interrupt_func(
      req,
      [](fuse_req_t, void* data) {
        auto* read = static_cast<ParkedRead*>(data);
        read->interrupted.store(true, std::memory_order_release);
        static_cast<Files*>(read->files)->interrupt(read->id);
      },
      pr);
  tl_parking = 0;
  if (tl_interrupted) {  // Ctrl-C came before we parked: answer now
    fuse_req_interrupt_func(req, nullptr, nullptr);
    delete pr;
    return -EINTR;
  }
  if (fault(Fault::kParkDelay)) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  loop_.post({LoopEvent::kPark, pr->id, pr});
  return 0;
}

void Files::interrupt(uint64_t read_id) {
  if (read_id == tl_parking) {
    tl_interrupted = true;
    return;
  }
  loop_.post({LoopEvent::kInterrupt, read_id, nullptr});
}

void Files::poll(fuse_req_t req, fuse_file_info* fi, fuse_pollhandle* ph) {
  auto* fh = reinterpret_cast<FileHandle*>(fi->fh);
  Source& s = *fh->source;
  unsigned revents = 0;
  {
    std::lock_guard lk(s.mu);
    const bool whole = fh->whole_subbufs;
    // An mmap reader with a bell asks only for POLLERR/POLLHUP (relay_reader_open); 0 is an
    // old kernel that does not say what it asks.
    const bool data = fi->poll_events == 0 || (fi->poll_events & (POLLIN | POLLRDNORM)) != 0;
    auto check = [&] {
      if (!data) {  // only the end: what the reader does not ask for must not end its wait
        if (whole ? s.finalized() : s.drained()) revents = POLLERR;
        return;
      }
      if (whole ? s.subbuf_ready() : s.data_available()) revents = POLLIN | POLLRDNORM;
      // An mmap reader cannot take the part of a sub-buffer that never closed: once the channel
      // is finalized there is nothing more for it (producers flush before closing, as the spec
      // says).
      else if (whole ? s.finalized() : s.drained())
        revents = POLLERR;
    };
    check();
    if (ph) {
      if (revents) {
        fuse_pollhandle_destroy(ph);
      } else {
        // Kept until there is news: the loop notifies it when the producer rings the doorbell.
        // A newer handle for the same open file replaces the older one (the kernel notifies
        // per file), so a reader that polls with short timeouts does not pile them up.
        auto same = std::find_if(s.polls.begin(), s.polls.end(),
                                 [&](const Poller& p) { return p.file == fh; });
        if (same != s.polls.end()) {
          fuse_pollhandle_destroy(same->ph);
          *same = {ph, whole, fh, data};
        } else {
          try {
            s.polls.push_back({ph, whole, fh, data});
          } catch (...) {
            fuse_pollhandle_destroy(ph);
            throw;
          }
        }
        // A poller that wants only the end needs no doorbell: finalize notifies it.
        if (data) {
          s.arm_doorbell(whole);
          loop_.post({LoopEvent::kArmed, 0, nullptr});  // a FUSE worker: the loop arms the tick
          // A record committed between the check above and the arming is seen here.
          check();
        }
      }
    }
  }
  fuse_reply_poll(req, revents);
}

void Files::ioctl(fuse_req_t req, unsigned int cmd, fuse_file_info* fi, unsigned flags) {
  if (cmd != proto::kIocSubbufPoll || (flags & FUSE_IOCTL_DIR)) return reply_status(req, -ENOTTY);
  auto* fh = reinterpret_cast<FileHandle*>(fi->fh);
  {
    std::lock_guard lk(fh->source->mu);
    fh->whole_subbufs = true;
  }
  fuse_reply_ioctl(req, 0, nullptr, 0);
}

void Files::on_park(ParkedRead* pr) {
  // Interrupted while on its way here: its kInterrupt came first and found nothing to answer.
  if (pr->interrupted.load(std::memory_order_acquire)) return finish_read(pr, nullptr, -EINTR);
  parked_.emplace(pr->id, pr);
  auto s = pr->source;
  s->parked.push_back(pr);
  hooks_.news(s);
}

void Files::on_interrupt(uint64_t read_id) {
  auto it = parked_.find(read_id);
  if (it == parked_.end()) return;  // answered already
  ParkedRead* pr = it->second;
  auto& q = pr->source->parked;
  q.erase(std::remove(q.begin(), q.end(), pr), q.end());
  finish_read(pr, nullptr, -EINTR);
}

void Files::finish_read(ParkedRead* pr, const char* data, ssize_t n) {
  // After this no interrupt callback runs for the request (it waits for one in progress).
  fuse_req_interrupt_func(pr->req, nullptr, nullptr);
  if (n >= 0)
    fuse_reply_buf(pr->req, data, static_cast<size_t>(n));
  else
    fuse_reply_err(pr->req, static_cast<int>(-n));
  parked_.erase(pr->id);
  delete pr;
}

void Files::answer_parked(Loop& stopped, int err) {
  auto answer = [err](ParkedRead* pr) {
    fuse_req_interrupt_func(pr->req, nullptr, nullptr);
    if (err)
      fuse_reply_err(pr->req, err);
    else
      fuse_reply_buf(pr->req, nullptr, 0);
    delete pr;
  };
  for (auto& [id, pr] : parked_) answer(pr);
  parked_.clear();
  LoopEvent ev;
  while (stopped.take_left(&ev))
    if (ev.kind == LoopEvent::kPark) answer(ev.read);
}

bool Files::service(const std::shared_ptr<Source>& s) {
  static thread_local std::unique_ptr<char[]> tmp(new char[kMaxRead]);
  bool eof = false;
  std::vector<fuse_pollhandle*> ready;  // pollers with news, notified once no lock is held
  // Bounded: each pass answers the parked reads it can, or arms the doorbell once and re-checks.
  for (int pass = 0; pass < 2; ++pass) {
    // One parked read at a time, each answered with no lock held.
    for (;;) {
      ParkedRead* pr = nullptr;
      ssize_t n = 0;
      ReplyHold hold;
      {
        std::lock_guard lk(s->mu);
        if (s->parked.empty()) break;
        pr = s->parked.front();
        hold.take(*s);  // until the reply is out
        n = s->consume(tmp.get(), std::min(pr->size, kMaxRead));
        if (n <= 0) hold.end_locked();
        if (n == 0 && !s->drained()) break;
        s->parked.pop_front();
      }
      if (n == 0) eof = true;
      finish_read(pr, tmp.get(), n);
      hold.end();
    }
    std::lock_guard lk(s->mu);
    bool want_records = !s->parked.empty();
    bool want_subbufs = false;
    if (!s->polls.empty()) {
      // Each poller's own question: any record, or a whole sub-buffer (an mmap reader).
      const bool records = s->data_available() || s->drained();
      const bool subbufs = s->subbuf_ready() || s->finalized();
      std::erase_if(s->polls, [&](const Poller& p) {
        // One that wants only the end (p.data false) hears of nothing else, and arms nothing.
        const bool news = p.data ? (p.whole_subbufs ? subbufs : records)
                                 : (p.whole_subbufs ? s->finalized() : s->drained());
        if (!news) {
          if (p.data) (p.whole_subbufs ? want_subbufs : want_records) = true;
          return false;
        }
        ready.push_back(p.ph);
        return true;
      });
    }
    if (!want_records && !want_subbufs) break;
    // Someone still waits: have the producer ring on its next record (or sub-buffer), then
    // look again for one that came before the doorbell was armed.
    if (want_records) s->arm_doorbell(false);
    if (want_subbufs) s->arm_doorbell(true);
    hooks_.waiting();
    const bool news =
        want_records ? s->data_available() || s->drained() : s->subbuf_ready() || s->finalized();
    if (!news) break;
  }
  for (fuse_pollhandle* ph : ready) {
    fuse_lowlevel_notify_poll(ph);
    fuse_pollhandle_destroy(ph);
  }
  return eof;
}

}  // namespace relayfs::fs
