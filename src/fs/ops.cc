// FUSE operations. Each do_* style body returns an errno (or replies itself on success); every
// handler replies exactly once, and no exception leaves it (see the adapters in main.cc).
#include <fcntl.h>
#include <poll.h>
#include <sys/uio.h>
#include <sys/xattr.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <deque>

#include "proto/protocol.h"
#include "core/stats.h"
#include "fs/fault.h"
#include "fs/relayfs.h"

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

// What fi->fh holds for an open relay file.
struct FileHandle {
  std::shared_ptr<Source> source;
  // Set by kIocSubbufPoll (relay_reader_open): poll() waits for whole sub-buffers. Guarded by
  // source->mu.
  bool whole_subbufs = false;
  // The page-cache view of this open file, for splice(2) (see RelayFs::page_read): offsets up
  // to view_end were taken from the stream for the kernel's page cache; the last of those bytes,
  // from offset history_start, are kept. Guarded by source->mu.
  uint64_t view_end = 0;
  uint64_t history_start = 0;
  std::string history;
  // Of the bytes the page cache took, those not yet shown to have reached the reader: they end
  // at view_end, and begin where the proof ends (the reader's position, as its requests tell).
  // Each run keeps its buffer, which a loss is counted against. Guarded by source->mu.
  struct Run {
    uint64_t end;  // offset in the view where the run ends
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
  void took(const Pieces& from) {
    uint64_t at = view_end;
    for (const Piece& p : from) {
      at += p.len;
      if (!unproven.empty() && unproven.back().buf == p.buf)
        unproven.back().end = at;
      else
        unproven.push_back({at, p.buf});
    }
  }
  // The reader has had everything before offset upto.
  void prove(uint64_t upto) {
    proven = std::max(proven, upto);
    while (!unproven.empty() && unproven.front().end <= proven) unproven.pop_front();
  }
  // The file is closed: what is still unproven never reached anyone we know of. Counted against
  // each run's buffer, with source->mu held.
  void give_up() {
    uint64_t from = proven;
    for (const Run& r : unproven) {
      if (r.end > from) source->take_back(*r.buf, r.end - from);
      from = std::max(from, r.end);
    }
    unproven.clear();
  }
};

// A directory listing snapshot taken at opendir, served by offset.
struct DirHandle {
  struct Entry {
    std::string name;
    fuse_ino_t ino;
    mode_t mode;
  };
  std::vector<Entry> entries;
};

// getxattr/listxattr answer: the size when asked for it, ERANGE when the buffer is too small.
void reply_xattr(fuse_req_t req, const std::string& value, size_t size) {
  if (size == 0)
    fuse_reply_xattr(req, value.size());
  else if (size < value.size())
    fuse_reply_err(req, ERANGE);
  else
    fuse_reply_buf(req, value.data(), value.size());
}

}  // namespace

void RelayFs::init(fuse_conn_info* conn) {
  // Relay files are read with direct I/O, but this kernel's splice(2) and sendfile(2) of them go
  // through the page cache (page_read), and bytes the page cache takes have left the buffer
  // whether or not a reader gets them. Read-ahead makes the kernel take more than the reader
  // asked for: up to the read-ahead window at a close. Without it, a page at a time, and a page
  // request then also proves that the reader got everything before that page.
  conn->max_readahead = opts_.readahead;
}

int RelayFs::node_stat(Node* n, struct stat* st) {
  tree.fill_stat(n, st);
  if (n->source) {
    Source& b = *n->source;
    std::lock_guard lk(b.mu);
    const uint64_t size = b.bytes_produced();
    // st_mtime moves when data arrives, so tail -f, which compares sizes and times, reads it.
    if (size != b.last_size || b.mtime.tv_sec == 0) {
      b.last_size = size;
      b.mtime = now();
    }
    st->st_size = static_cast<off_t>(size);
    st->st_mtim = b.mtime;
    st->st_blocks = static_cast<blkcnt_t>((size + 511) / 512);
  }
  return 0;
}

int RelayFs::do_lookup(fuse_ino_t parent, const char* name, fuse_entry_param* e) {
  std::lock_guard lk(tree.mu);
  Node* dir = tree.get(parent);
  if (!dir) return ENOENT;
  if (!dir->is_dir()) return ENOTDIR;
  if (std::strlen(name) > proto::kMaxName) return ENAMETOOLONG;
  Node* n = tree.child(dir, name);
  if (!n) return ENOENT;
  *e = {};
  e->ino = n->ino;
  e->attr_timeout = 0;   // sizes and times change with every record
  e->entry_timeout = 0;  // files come and go with channels
  node_stat(n, &e->attr);
  ++n->nlookup;
  return 0;
}

void RelayFs::lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  fuse_entry_param e;
  if (int err = do_lookup(parent, name, &e)) {
    fuse_reply_err(req, err);
    return;
  }
  fuse_reply_entry(req, &e);
}

void RelayFs::forget(fuse_ino_t ino, uint64_t n) {
  std::lock_guard lk(tree.mu);
  tree.forget(ino, n);
}

void RelayFs::getattr(fuse_req_t req, fuse_ino_t ino) {
  struct stat st;
  {
    std::lock_guard lk(tree.mu);
    Node* n = tree.get(ino);
    if (!n) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    node_stat(n, &st);
  }
  fuse_reply_attr(req, &st, 0);
}

void RelayFs::setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set) {
  struct stat st;
  int err = 0;
  {
    std::lock_guard lk(tree.mu);
    Node* n = tree.get(ino);
    if (!n) {
      err = ENOENT;
    } else if (n->source) {
      // Relay files are the producer's: no truncate, chmod, chown or touch.
      err = EPERM;
    } else {
      // Directories: the kernel (default_permissions) has checked who may do what.
      if (to_set & FUSE_SET_ATTR_MODE) n->mode = (n->mode & S_IFMT) | (attr->st_mode & 07777);
      if (to_set & FUSE_SET_ATTR_UID) n->uid = attr->st_uid;
      if (to_set & FUSE_SET_ATTR_GID) n->gid = attr->st_gid;
      if (to_set & FUSE_SET_ATTR_ATIME) n->atime = attr->st_atim;
      if (to_set & FUSE_SET_ATTR_MTIME) n->mtime = attr->st_mtim;
      if (to_set & FUSE_SET_ATTR_ATIME_NOW) n->atime = now();
      if (to_set & FUSE_SET_ATTR_MTIME_NOW) n->mtime = now();
      if (to_set & FUSE_SET_ATTR_SIZE) err = EISDIR;
      n->ctime = now();
      if (!err) node_stat(n, &st);
    }
  }
  if (err)
    fuse_reply_err(req, err);
  else
    fuse_reply_attr(req, &st, 0);
}

void RelayFs::mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  fuse_entry_param e{};
  int err = 0;
  {
    std::lock_guard lk(tree.mu);
    const fuse_ctx* ctx = fuse_req_ctx(req);
    Node* dir = tree.get(parent);
    if (!dir)
      err = ENOENT;
    else if (!dir->is_dir())
      err = ENOTDIR;
    else if (int bad = proto::name_error(name); bad)
      err = -bad;
    else if (tree.child(dir, name))
      err = EEXIST;
    else {
      Node* n = tree.add(dir, name, S_IFDIR | (mode & 07777 & ~ctx->umask), ctx->uid, ctx->gid);
      e.ino = n->ino;
      ++n->nlookup;
      node_stat(n, &e.attr);
    }
  }
  if (err)
    fuse_reply_err(req, err);
  else
    fuse_reply_entry(req, &e);
}

void RelayFs::rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  int err = 0;
  {
    std::lock_guard lk(tree.mu);
    Node* dir = tree.get(parent);
    Node* n = dir ? tree.child(dir, name) : nullptr;
    if (!n)
      err = ENOENT;
    else if (!n->is_dir())
      err = ENOTDIR;
    else if (!n->children.empty())
      err = ENOTEMPTY;
    else
      tree.unlink(n);
  }
  fuse_reply_err(req, err);
}

void RelayFs::opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto h = std::make_unique<DirHandle>();
  {
    std::lock_guard lk(tree.mu);
    Node* n = tree.get(ino);
    if (!n) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if (!n->is_dir()) {
      fuse_reply_err(req, ENOTDIR);
      return;
    }
    h->entries.push_back({".", n->ino, S_IFDIR});
    h->entries.push_back({"..", n->parent ? n->parent : n->ino, S_IFDIR});
    for (auto& [name, cino] : n->children)
      if (Node* c = tree.get(cino)) h->entries.push_back({name, cino, c->mode});
  }
  fi->fh = reinterpret_cast<uint64_t>(h.release());
  fi->cache_readdir = 0;
  if (fuse_reply_open(req, fi) != 0) delete reinterpret_cast<DirHandle*>(fi->fh);
}

void RelayFs::readdir(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  auto* h = reinterpret_cast<DirHandle*>(fi->fh);
  std::vector<char> buf(std::min<size_t>(size, 1 << 16));
  size_t used = 0;
  for (size_t i = static_cast<size_t>(std::max<off_t>(off, 0)); i < h->entries.size(); ++i) {
    struct stat st {};
    st.st_ino = h->entries[i].ino;
    st.st_mode = h->entries[i].mode;
    const size_t need =
        fuse_add_direntry(req, buf.data() + used, buf.size() - used, h->entries[i].name.c_str(),
                          &st, static_cast<off_t>(i + 1));
    if (need > buf.size() - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void RelayFs::releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  delete reinterpret_cast<DirHandle*>(fi->fh);
  fuse_reply_err(req, 0);
}

void RelayFs::open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  std::shared_ptr<Source> b;
  bool first = false;
  {
    std::lock_guard lk(tree.mu);
    Node* n = tree.get(ino);
    if (!n) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if (n->is_dir()) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
      fuse_reply_err(req, EPERM);  // relay files are written by their producer only
      return;
    }
    b = n->source;
    std::lock_guard blk(b->mu);
    first = b->opens++ == 0;
  }
  // A consuming file: no page cache, no seeking, every read goes to read().
  fi->direct_io = 1;
  fi->nonseekable = 1;
  fi->keep_cache = 0;
  auto* fh = new FileHandle;
  fh->source = b;
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
      std::lock_guard lk(tree.mu);
      std::lock_guard blk(b->mu);
      --b->opens;
    }
    maybe_remove(b->channel_id());
    return;
  }
  if (first) notify_owner(*b, true);
}

void RelayFs::release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  auto* fh = reinterpret_cast<FileHandle*>(fi->fh);
  {
    std::lock_guard hl(handles_mu_);
    open_handles_.erase(fh);
  }
  std::shared_ptr<Source> b = fh->source;
  {
    std::lock_guard lk(b->mu);
    fh->give_up();  // what the page cache took and nobody was shown to get is counted lost
  }
  delete fh;
  bool last;
  {
    std::lock_guard lk(tree.mu);
    {
      std::lock_guard blk(b->mu);
      last = --b->opens == 0;
    }
    if (last && b->unlinked) {
      if (Node* n = tree.get(b->ino)) tree.maybe_free(n);
    }
  }
  if (last) notify_owner(*b, false);
  fuse_reply_err(req, 0);
  if (last) maybe_remove(b->channel_id());
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
void RelayFs::page_read(fuse_req_t req, void* handle, size_t size, off_t off) {
  auto* fh = static_cast<FileHandle*>(handle);
  Source& b = *fh->source;
  const uint64_t want = static_cast<uint64_t>(std::max<off_t>(off, 0));
  size = std::min(size, kMaxRead);
  char* out = read_buffer();
  size_t have = 0;
  {
    std::lock_guard lk(b.mu);
    if (want < fh->history_start) {
      fuse_reply_err(req, EIO);  // older than anything kept: cannot be served truthfully
      return;
    }
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
      Pieces from;
      const ssize_t n = b.consume(out + have, size - have, &from);
      if (n > 0) {
        fh->took(from);
        fh->extend(out + have, static_cast<size_t>(n));
        have += static_cast<size_t>(n);
      }
    }
  }
  fuse_reply_buf(req, out, have);
}

void RelayFs::read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  auto* fh = reinterpret_cast<FileHandle*>(fi->fh);
  std::shared_ptr<Source> b = fh->source;
  // A read without a lock owner comes from the page cache, not from read(2): this kernel
  // splices FOPEN_DIRECT_IO files through the page cache, which asks for pages by offset.
  if (fi->lock_owner == 0) {
    page_read(req, fh, size, off);
    return;
  }
  size = std::min(size, kMaxRead);
  // A no-overwrite buffer replies straight from the shared mapping: one copy, by the kernel,
  // instead of two. What is sent is consumed only once the reply went through; until then the
  // writer cannot reuse it. A file that was spliced has page-cache history to serve first.
  if (auto* rb = dynamic_cast<RelayBuffer*>(b.get()); rb && rb->zero_copy) {
    std::lock_guard lk(b->mu);
    if (fh->view_end == 0) {
      iovec iov[kMaxIov];
      int count = 0;
      const ssize_t sent = rb->cons.plan_read(iov, kMaxIov, size, &count);
      if (sent < 0) {
        fuse_reply_err(req, static_cast<int>(-sent));
        return;
      }
      if (sent > 0) {
        const bool delivered = fault_once(Fault::kReplyFail)
                                   ? (fuse_reply_err(req, EIO), false)
                                   : fuse_reply_iov(req, iov, count) == 0;
        if (delivered)
          rb->cons.finish_read();
        else
          rb->cons.abort_read();  // the reader went away: the data stays for the next one
        return;
      }
    }
  }
  char* out = read_buffer();
  ssize_t n = 0;
  bool drained;
  const uint64_t pos = static_cast<uint64_t>(std::max<off_t>(off, 0));
  {
    std::lock_guard lk(b->mu);
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
      const ssize_t more = b->consume(out + n, size - static_cast<size_t>(n));
      if (more < 0 && n == 0) n = more;
      if (more > 0) {
        // Once spliced, the file's offsets are the view's: what read(2) takes goes on it too,
        // so that a page the kernel asks for again holds what the reader got.
        if (fh->view_end != 0) fh->extend(out + n, static_cast<size_t>(more));
        n += more;
      }
    }
    drained = n == 0 && b->drained();
  }
  if (n > 0) {
    if (fuse_reply_buf(req, out, static_cast<size_t>(n)) == 0 && fh->view_end != 0) {
      std::lock_guard lk(b->mu);
      fh->prove(pos + static_cast<uint64_t>(n));  // the reply reached the reader
    }
    return;
  }
  if (n < 0) {
    fuse_reply_err(req, static_cast<int>(-n));
    return;
  }
  if (drained) {
    fuse_reply_buf(req, nullptr, 0);  // end of file: finalized and drained
    maybe_remove(b->channel_id());
    return;
  }
  if (fi->flags & O_NONBLOCK) {
    fuse_reply_err(req, EAGAIN);
    return;
  }
  if (!opts_.blocking) {
    fuse_reply_buf(req, nullptr, 0);  // the kernel's read never blocks: "nothing now"
    return;
  }
  park(req, size, std::move(b));
}

namespace {
// The read this thread is parking: libfuse calls the interrupt callback from inside
// fuse_req_interrupt_func when the request is already interrupted.
thread_local uint64_t tl_parking = 0;
thread_local bool tl_interrupted = false;
}  // namespace

void RelayFs::park(fuse_req_t req, size_t size, std::shared_ptr<Source> b) {
  auto* pr = new ParkedRead{next_read_id_.fetch_add(1), req, size, std::move(b)};
  // Registered before the loop can see the read, so the loop never answers a request whose
  // interrupt callback is not in place (and deregisters it before answering).
  tl_parking = pr->id;
  tl_interrupted = false;
  fuse_req_interrupt_func(
      req,
      [](fuse_req_t r, void* data) {
        auto* fs = static_cast<RelayFs*>(fuse_req_userdata(r));
        fs->interrupt(reinterpret_cast<uint64_t>(data));
      },
      reinterpret_cast<void*>(pr->id));
  tl_parking = 0;
  if (tl_interrupted) {  // Ctrl-C came before we parked: answer now
    fuse_req_interrupt_func(req, nullptr, nullptr);
    fuse_reply_err(req, EINTR);
    delete pr;
    return;
  }
  post({LoopEvent::kPark, pr->id, pr});
}

void RelayFs::interrupt(uint64_t read_id) {
  if (read_id == tl_parking) {
    tl_interrupted = true;
    return;
  }
  post({LoopEvent::kInterrupt, read_id, nullptr});
}

void RelayFs::poll(fuse_req_t req, fuse_ino_t, fuse_file_info* fi, fuse_pollhandle* ph) {
  auto* fh = reinterpret_cast<FileHandle*>(fi->fh);
  std::shared_ptr<Source> b = fh->source;
  unsigned revents = 0;
  {
    std::lock_guard lk(b->mu);
    const bool whole = fh->whole_subbufs;
    auto check = [&] {
      if (whole ? b->subbuf_ready() : b->data_available()) revents = POLLIN | POLLRDNORM;
      // An mmap reader cannot take the part of a sub-buffer that never closed: once the channel
      // is finalized there is nothing more for it (producers flush before closing, as the spec
      // says).
      else if (whole ? b->finalized() : b->drained())
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
        auto same = std::find_if(b->polls.begin(), b->polls.end(),
                                 [&](const Poller& p) { return p.file == fh; });
        if (same != b->polls.end()) {
          fuse_pollhandle_destroy(same->ph);
          *same = {ph, whole, fh};
        } else {
          try {
            b->polls.push_back({ph, whole, fh});
          } catch (...) {
            fuse_pollhandle_destroy(ph);
            throw;
          }
        }
        b->arm_doorbell(whole);
        // A record committed between the check above and the arming is seen here.
        check();
      }
    }
  }
  fuse_reply_poll(req, revents);
}

void RelayFs::ioctl(fuse_req_t req, fuse_ino_t, unsigned int cmd, fuse_file_info* fi,
                    unsigned flags) {
  if (cmd != proto::kIocSubbufPoll || (flags & FUSE_IOCTL_DIR)) {
    fuse_reply_err(req, ENOTTY);
    return;
  }
  auto* fh = reinterpret_cast<FileHandle*>(fi->fh);
  {
    std::lock_guard lk(fh->source->mu);
    fh->whole_subbufs = true;
  }
  fuse_reply_ioctl(req, 0, nullptr, 0);
}

namespace {

// A relay file's attributes "user.relayfs.<name>" (relay(7)): its buffer's counters (the list in
// core/stats.h), then what describes the channel.
constexpr const char* kStatPrefix = "user.relayfs.";
enum Described : size_t { kMode = core::kCounterCount, kBlocking, kChannel, kAttrCount };
constexpr const char* kDescribedNames[] = {"mode", "blocking", "channel"};
static_assert(std::size(kDescribedNames) == kAttrCount - core::kCounterCount);

const char* attr_name(size_t i) {
  return i < core::kCounterCount ? core::kCounterNames[i] : kDescribedNames[i - core::kCounterCount];
}

// The index of an attribute name, or kAttrCount if it is none of them.
size_t attr_index(const char* name) {
  const size_t plen = std::strlen(kStatPrefix);
  if (std::strncmp(name, kStatPrefix, plen) != 0) return kAttrCount;
  size_t i = 0;
  while (i < kAttrCount && std::strcmp(attr_name(i), name + plen) != 0) ++i;
  return i;
}

// Attribute i's value. base: the channel's base_filename; flags: its proto::kFlag*.
std::string attr_value(size_t i, const core::BufferStats& st, uint32_t flags,
                       const std::string& base) {
  switch (i) {
    case kMode:
      return flags & proto::kFlagOverwrite  ? "overwrite"
             : flags & proto::kFlagHookMode ? "subbuf_start"
                                            : "no-overwrite";
    case kBlocking:
      return flags & proto::kFlagBlocking ? "1" : "0";
    case kChannel:
      return base;
    default:
      return std::to_string(core::counter(st, i));
  }
}

}  // namespace

void RelayFs::getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  if (ino == FUSE_ROOT_ID && std::strcmp(name, kUsersXattr) == 0) {
    reply_xattr(req, usage_report(), size);  // outside the tree lock: it lists /proc/self/fd
    return;
  }
  std::string value;
  int err = 0;
  {
    std::lock_guard lk(tree.mu);
    Node* n = tree.get(ino);
    if (!n) {
      err = ENOENT;
    } else if (n->is_dir()) {
      if (std::strcmp(name, kControlXattr) == 0)
        value = control_name_;
      else
        err = ENODATA;
    } else if (const size_t i = attr_index(name); i == kAttrCount) {
      err = ENODATA;
    } else {
      auto it = channels_.find(n->source->channel_id());
      const uint32_t flags = it == channels_.end() ? 0 : it->second->flags;
      core::BufferStats st;
      if (i < core::kCounterCount) {
        std::lock_guard blk(n->source->mu);
        st = n->source->stats();
      }
      value = attr_value(i, st, flags, it == channels_.end() ? std::string() : it->second->base);
    }
  }
  if (err)
    fuse_reply_err(req, err);
  else
    reply_xattr(req, value, size);
}

void RelayFs::listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  std::string names;
  {
    std::lock_guard lk(tree.mu);
    Node* n = tree.get(ino);
    if (!n) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    if (n->is_dir()) {
      names.append(kControlXattr).push_back('\0');
      if (ino == FUSE_ROOT_ID) names.append(kUsersXattr).push_back('\0');
    } else {
      for (size_t i = 0; i < kAttrCount; ++i)
        names.append(kStatPrefix).append(attr_name(i)).push_back('\0');
    }
  }
  reply_xattr(req, names, size);
}

void RelayFs::statfs(fuse_req_t req, fuse_ino_t) {
  struct statvfs sv {};
  sv.f_bsize = 1 << 20;
  sv.f_frsize = 1 << 20;
  sv.f_namemax = proto::kMaxName;
  {
    std::lock_guard lk(tree.mu);
    sv.f_files = tree.size();
  }
  fuse_reply_statfs(req, &sv);
}

void RelayFs::free_handles() noexcept {
  std::lock_guard hl(handles_mu_);
  for (void* p : open_handles_) delete static_cast<FileHandle*>(p);
  open_handles_.clear();
}

}  // namespace relayfs::fs
