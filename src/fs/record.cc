// Recording to disk in the daemon (relayctl record). The recorder opens the output files itself,
// with its own permissions, and passes them along with the buffer's inode number; the daemon
// checks that the recorder may read the relay file, as open(2) would, and that the descriptors
// are regular files open for writing. From then on the loop thread writes each extent (the rest
// of a closed sub-buffer, padding cut; at the end, the never-closed tail) with one io_uring write
// straight from the buffer's registered mapping (IORING_OP_WRITE_FIXED), and consumes it only
// once the write completed and the bytes were still unread by anyone else and not overwritten.
// One write per buffer is in flight at a time; buffers proceed in parallel.
//
// The descriptors may be on a slow or a hostile filesystem (a FUSE mount that never answers), so
// the loop thread never makes a call on them that the filesystem can hold up: the checks use
// fcntl and cached attributes, the index lines go through the ring like the data, a lapped
// extent is overwritten in place by the next one rather than cut off (the recorder cuts the file
// to the final total), and the descriptors are closed through the ring (IORING_OP_CLOSE runs a
// filesystem's flush on a kernel worker). Stopping cancels the data write in flight; the index
// lines of the extents already consumed are written all the same (end_recording).
//
// Daemon restarts (relayctl record --resume). With a state file (proto/record_state.h), each
// extent goes: data write; then, if the bytes are still this lap's and ours (extent_intact), the
// state rewritten to count them; then finish_extent. The state is never behind what was consumed,
// and at most one extent ahead of it, so a daemon killed at any point leaves a state that is true
// of the output: bytes past its offset are not the recording, and an extent it counts that was
// not consumed is delivered again by the next daemon, which a resume passes over (skip). Positions
// are the buffer's stream positions (bytes_produced's units), which the shared consumer record
// carries across daemons; the buffer is named by its memfd's inode number.
#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "fs/channel.h"
#include "fs/fault.h"
#include "fs/mountinfo.h"
#include "fs/record.h"
#include "fs/ring_tag.h"

namespace relayfs::fs {

namespace {

constexpr auto kProgressEvery = std::chrono::milliseconds(250);
// Index text waiting for its write: beyond this, no more extents are taken until it drains.
constexpr size_t kMaxIndexPending = 64 * 1024;
// EAGAIN/EINTR results retried in a row before the write counts as failed.
constexpr unsigned kMaxRetries = 1000;
// After a stop, how long the index lines already due may take to reach the index before the
// recording ends without them, failed (a filesystem that stopped answering).
constexpr long long kIndexStopSeconds = 5;

// The type of the filesystem that holds device major:minor ("" if unknown).
std::string fs_type_of(unsigned major, unsigned minor) {
  const std::string dev = std::to_string(major) + ":" + std::to_string(minor);
  for (const auto& m : read_mountinfo())
    if (m.dev == dev) return m.type;
  return "";
}

// Pseudo-filesystems whose files act on writes as the writer: a daemon running as root must not
// write what a producer chose into them on a recorder's behalf.
bool pseudo_fs(const std::string& type) {
  for (const char* t : {"proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
                        "bpf", "configfs", "efivarfs", "pstore", "selinuxfs", "smackfs", "fusectl",
                        "binfmt_misc", "devtmpfs", "devpts", "mqueue", "hugetlbfs"})
    if (type == t) return true;
  return false;
}

// 0 if fd is a regular file open for writing, in O_APPEND mode exactly when append (the index)
// and not otherwise (an output is written at offsets), on a filesystem that is not a pseudo-
// filesystem; else -EBADF (not writable) or -EINVAL. *sx gets its (cached) attributes. Nothing here
// waits for the file's filesystem: fcntl, and statx from the attribute cache.
int check_output(int fd, bool append, struct statx* sx) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || fl & O_PATH) return -EBADF;
  if ((fl & O_ACCMODE) != O_WRONLY && (fl & O_ACCMODE) != O_RDWR) return -EBADF;
  if (static_cast<bool>(fl & O_APPEND) != append) return -EINVAL;
  if (::statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, sx) != 0)
    return -EBADF;
  if (!S_ISREG(sx->stx_mode)) return -EINVAL;
  if (pseudo_fs(fs_type_of(sx->stx_dev_major, sx->stx_dev_minor))) return -EINVAL;
  return 0;
}

// Formats one index line onto the recording's pending index text.
void index_line(Recording& r, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void index_line(Recording& r, const char* fmt, ...) {
  char line[160];
  va_list ap;
  va_start(ap, fmt);
  const int n = std::vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  if (n > 0) r.index_pending.append(line, std::min(static_cast<size_t>(n), sizeof line - 1));
}

}  // namespace

// 0 if the request may start: its descriptors are outputs as check_output wants, the O_DIRECT
// one another opening of the output, the recorder may read the buffer, and the buffer is not
// being recorded already. Then rec has the buffer and the descriptors.
int Recorder::check(Connection& c, proto::Received& m, const proto::RecordRequest& req,
                    Recording* rec) {
  // The output, the index, the state file if the request says so, then the O_DIRECT one if any.
  const size_t base = (req.flags & proto::kRecordState) ? 3 : 2;
  if (m.fds.size() != base && m.fds.size() != base + 1) return -EBADF;
  struct statx out_sx{}, sx{};
  if (int rc = check_output(m.fds[0].get(), false, &out_sx)) return rc;
  if (int rc = check_output(m.fds[1].get(), true, &sx)) return rc;
  if (base == 3) {
    if (int rc = check_output(m.fds[2].get(), false, &sx)) return rc;
    // Not the output itself: the state is written at offset 0.
    if (sx.stx_dev_major == out_sx.stx_dev_major && sx.stx_dev_minor == out_sx.stx_dev_minor &&
        sx.stx_ino == out_sx.stx_ino)
      return -EINVAL;
  }
  if (m.fds.size() == base + 1) {
    if (int rc = check_output(m.fds[base].get(), false, &sx)) return rc;
    // The O_DIRECT descriptor must be another opening of the output file itself.
    if (sx.stx_dev_major != out_sx.stx_dev_major || sx.stx_dev_minor != out_sx.stx_dev_minor ||
        sx.stx_ino != out_sx.stx_ino || !(::fcntl(m.fds[base].get(), F_GETFL) & O_DIRECT))
      return -EINVAL;
  }
  if (int rc = access_.readable_buffer(c.peer, req.ino, &rec->buf)) return rc;
  // It would keep the descriptors it brought: not into those kept for root and the mounter.
  if (int rc = access_.admit_fds(c.peer.uid, 0)) return rc;
  // One recording per buffer: two would split its sub-buffers between them. (recording is
  // loop-thread state, and this is the loop thread.)
  if (rec->buf->recording) return -EBUSY;
  // Where the recording starts in the output, and where the buffer's reader stands: a resume
  // must be of this buffer and within what it ever held.
  uint64_t at = 0;
  bool exact;
  uint64_t produced;
  {
    std::lock_guard lk(rec->buf->mu);
    exact = rec->buf->position(&at);
    produced = rec->buf->bytes_produced();
  }
  const bool resume = (req.flags & proto::kRecordResume) != 0;
  if (resume && req.stream != rec->buf->stream()) return -ESTALE;
  if (resume && req.position > produced) return -ERANGE;
  const core::Geometry& g = rec->buf->geometry();
  // What the output keeps before its first extent: the next byte to record is where the reader
  // stands, or for a resume where the output ends, unless the reader moved past it meanwhile.
  rec->kept = {rec->buf->stream(), rec->buf->index(), g.subbuf_size, g.n_subbufs, 0, 0,
               resume ? std::max(req.position, at) : at, resume || exact, req.offset};
  if (resume) {
    rec->on_disk = rec->kept;  // what relayctl read from it
    rec->on_disk.position = req.position;
    // What lies between the reader and the position, the output holds already: the daemon that
    // died wrote it, and did not live to consume it.
    rec->skipping = req.position > at;
    rec->skip_to = req.position;
  }
  rec->position = at;
  rec->off = req.offset;
  auto& fds = m.fds;  // ours to keep; the control server closes what is left through the ring
  rec->out = std::move(fds[0]);
  rec->index = std::move(fds[1]);
  if (base == 3) rec->state = std::move(fds[2]);
  if (fds.size() == base + 1) {
    rec->direct = std::move(fds[base]);
    rec->mem_align = req.mem_align;
    rec->off_align = req.off_align;
  }
  return 0;
}

void Recorder::start(Connection& c, proto::Received& m) {
  proto::RecordRequest req;
  auto rec = std::make_unique<Recording>();
  int rc = proto::decode(m.payload.data(), m.payload.size(), &req);
  if (rc == 0) rc = check(c, m, req, rec.get());
  proto::RecordReply reply{rc, 0, 0, 0};
  if (rc == 0) {
    rec->id = next_id_++;
    rec->conn = c.id;
    rec->totals.cookie = req.cookie;
    reply = {0, rec->buf->fixed_index >= 0 ? 1u : 0u, rec->buf->index(), rec->position};
  }
  c.send(proto::encode(reply, m.header.seq));  // in order, after any event queued before
  if (rc != 0) return;
  Recording& r = *rec;
  recordings_.emplace(r.id, std::move(rec));
  r.buf->recording = &r;  // after the emplace, which may throw
  if (req.flags & proto::kRecordResume) {
    // Where this run begins, in the index: the stream position it goes on from, and what the
    // output will not have of the stream (read by another reader, or lost and counted) or holds
    // already (delivered again by this daemon, passed over).
    const uint64_t p = req.position;
    if (r.position > p)
      index_line(r, "resume %u - %" PRIu64 " 0 position=%" PRIu64 " missing=%" PRIu64 "\n",
                 r.buf->index(), r.off, p, r.position - p);
    else
      index_line(r, "resume %u - %" PRIu64 " 0 position=%" PRIu64 " redelivered=%" PRIu64 "\n",
                 r.buf->index(), r.off, p, p - r.position);
    submit_index_write(r);
  }
  step(r);
}

// Once their writes in flight are done or cancelled. A recorder that hung up loses nothing: the
// bytes of a write the kernel holds are not consumed until it completed.
void Recorder::stop(uint64_t conn_id, bool gone) {
  for (auto& [id, r] : recordings_)
    if (r->conn == conn_id) {
      if (gone) r->conn = 0;
      end(*r, proto::kEndStopped, 0);  // never erases: reap does
    }
}

void Recorder::step(Recording& r) {
  if (r.writing || r.state_writing || r.ending) return;
  if (r.index_pending.size() > kMaxIndexPending) return;  // on_index_write steps again
  RelayBuffer& b = *r.buf;
  // Each pass but the last consumes an extent a resume passes over, at least one byte of the
  // buffer the daemon that died had written out: at most every sub-buffer, and the first one's
  // rest. Bounded whatever the producer writes into the shared area.
  for (uint32_t pass = 0; pass < 2 * b.geometry().n_subbufs + 4; ++pass) {
    int rc;
    bool drained = false;
    {
      std::lock_guard lk(b.mu);
      rc = b.take_extent(&r.ext);
      if (rc == 0) {
        drained = b.drained();
        if (!drained) {
          // Have the producer ring at its next sub-buffer switch (or close), then look again
          // for one that came before the doorbell was armed.
          b.arm_doorbell(true);
          rc = b.take_extent(&r.ext);
        }
      }
    }
    if (rc < 0) return end(r, proto::kEndFailed, -rc);
    if (rc == 0) {
      if (drained) end(r, proto::kEndClosed, 0);
      return;
    }
    if (r.skipping && skip(r)) continue;
    if (r.ending) return;  // skip ended it
    r.written = 0;
    return submit_write(r);
  }
  end(r, proto::kEndResumeFailed, EIO);  // more to pass over than the buffer can hold
}

// A resume: consumes, without writing it again, what of extent r.ext lies before r.skip_to (the
// output holds it already). Returns true if it consumed something (take the next extent: the
// rest of this one, if any, starts at skip_to), false if the extent is to be written (past
// skip_to: what lay between was read by another reader or lost, and counted) or the recording
// ended.
bool Recorder::skip(Recording& r) {
  const core::Consumer::Extent& e = r.ext;
  // Where the extent starts is only a lower bound (the writer lapped the reader): what of it the
  // output holds cannot be told.
  if (!e.exact) {
    end(r, proto::kEndResumeFailed, ESTALE);
    return false;
  }
  if (e.pos >= r.skip_to) {
    r.skipping = false;
    return false;
  }
  const uint64_t n = std::min<uint64_t>(e.len, r.skip_to - e.pos);
  RelayBuffer& b = *r.buf;
  {
    std::lock_guard lk(b.mu);
    b.finish_extent(e, static_cast<uint32_t>(n));  // 0: lapped or read meanwhile; look again
  }
  return true;
}

void Recorder::submit_write(Recording& r) {
  RelayBuffer& b = *r.buf;
  const uint32_t size = b.geometry().subbuf_size;
  // Inside the mapping: take_extent bounded the extent by the private geometry.
  const char* addr = b.data() + r.ext.data_offset(size) + r.written;
  const uint32_t len = r.ext.len - r.written;
  const uint64_t at = r.off + r.written;
  r.via_direct = r.direct_ok(at, addr, len);
  const int fd = r.via_direct ? r.direct.get() : r.out.get();
  io_uring_sqe* e = loop_.sqe();
  if (!e) return end(r, proto::kEndFailed, EBUSY);  // the kernel takes no submissions
  if (b.fixed_index >= 0)
    io_uring_prep_write_fixed(e, fd, addr, len, at, b.fixed_index);
  else
    io_uring_prep_write(e, fd, addr, len, at);
  io_uring_sqe_set_data64(e, tag(kRecordWrite, r.id));
  r.writing = true;
  if (b.fixed_index >= 0) ++r.totals.fixed;
  if (r.via_direct) ++r.totals.direct;
}

void Recorder::on_write(uint64_t id, int res) {
  Recording* found = find(id);
  if (!found) return;
  Recording& r = *found;
  r.writing = false;
  if ((res == -EINTR || res == -EAGAIN) && !r.ending && ++r.retries <= kMaxRetries)
    return submit_write(r);
  if (res == -EINVAL && r.via_direct && !r.ending) {
    // The filesystem refused this direct write after all: from now on, the page cache.
    loop_.close_later(std::move(r.direct));
    return submit_write(r);
  }
  // Failed or cancelled (a stop): nothing of the extent is consumed; it stays in the channel.
  if (res <= 0) return end_after_write(r, res, proto::kEndFailed);
  r.retries = 0;
  r.written += static_cast<uint32_t>(res);
  // Short: write the rest, which reports the error if any (unless stopping: then not consumed).
  if (r.written < r.ext.len) {
    if (r.ending) return end(r, proto::kEndStopped, 0);
    return submit_write(r);
  }
  const std::shared_ptr<RelayBuffer> b = r.buf;
  if (r.state) {
    // The bytes are on disk. If they are still this lap's and ours, the state says so before
    // they are consumed (on_state_write consumes them): a daemon killed in between leaves a state
    // that counts them, and the next one, delivering them again, passes over them.
    bool intact;
    {
      std::lock_guard lk(b->mu);
      intact = b->extent_intact(r.ext);
    }
    if (intact) {
      proto::RecordState s = r.kept;
      s.gen = r.ext.gen;
      s.seq = r.ext.closed ? r.ext.seq + 1 : r.ext.seq;
      s.position = r.ext.pos + r.ext.len;
      s.exact = r.ext.exact;
      s.offset = r.off + r.ext.len;
      return write_state(r, s, true);
    }
  }
  finish_extent(r);
  hooks_.news(b);  // pollers and parked readers of the buffer see the new position
}

// Rewrites the state file, whole, at offset 0; then_finish: it is the state after extent r.ext,
// which on_state_write consumes once the state is written.
void Recorder::write_state(Recording& r, const proto::RecordState& s, bool then_finish) {
  io_uring_sqe* e = loop_.sqe();
  if (!e) return end(r, proto::kEndStateFailed, EBUSY);
  r.state_pending = s;
  r.state_text = proto::format_record_state(s);
  r.finish_after_state = then_finish;
  io_uring_prep_write(e, r.state.get(), r.state_text.data(),
                      static_cast<unsigned>(r.state_text.size()), 0);
  io_uring_sqe_set_data64(e, tag(kStateWrite, r.id));
  r.state_writing = true;
}

void Recorder::on_state_write(uint64_t id, int res) {
  Recording* found = find(id);
  if (!found) return;
  Recording& r = *found;
  r.state_writing = false;
  if ((res == -EINTR || res == -EAGAIN) && !r.ending && ++r.retries <= kMaxRetries)
    return write_state(r, r.state_pending, r.finish_after_state);
  if (res != static_cast<int>(r.state_text.size())) {
    // Cancelled by a stop, or failed: the extent is not consumed and stays in the channel. A
    // torn state (a short write) is refused by a resume, never believed.
    if (res == -ECANCELED) return end(r, proto::kEndStopped, 0);
    return end(r, proto::kEndStateFailed, res < 0 ? -res : EIO);
  }
  r.retries = 0;
  r.on_disk = r.state_pending;
  if (r.finish_after_state) {
    if (fault(Fault::kRecordCrash) && r.totals.subbufs >= 2) ::raise(SIGKILL);
    r.finish_after_state = false;
    const std::shared_ptr<RelayBuffer> b = r.buf;
    finish_extent(r);
    hooks_.news(b);
    return;
  }
  if (r.ending) return end(r, proto::kEndStopped, 0);
  step(r);
}

// The extent is on disk: keep it if it was still unread and not overwritten, then consume it.
void Recorder::finish_extent(Recording& r) {
  RelayBuffer& b = *r.buf;
  int kept;
  {
    std::lock_guard lk(b.mu);
    kept = b.finish_extent(r.ext, r.ext.len);
  }
  if (kept) r.kept = r.on_disk.offset == r.off + r.ext.len ? r.on_disk : r.kept;
  const unsigned cpu = b.index();
  if (kept) {
    if (r.ext.closed)
      index_line(r, "subbuf %u %" PRIu64 " %" PRIu64 " %u\n", cpu, r.ext.seq, r.off, r.ext.len);
    else
      index_line(r, "tail %u - %" PRIu64 " %u\n", cpu, r.off, r.ext.len);
    r.off += r.ext.len;
    r.totals.bytes += r.ext.len;
    if (r.ext.closed)
      ++r.totals.subbufs;
    else
      r.totals.tail += r.ext.len;
  } else {
    // Overwritten while it went to disk (overwrite mode), or another reader took some of it:
    // the written copy may mix two laps or repeat what that reader got. It is not kept: the
    // next extent goes to the same offset.
    ++r.totals.lapped;
    index_line(r, "lapped %u %" PRIu64 " %" PRIu64 " %u\n", cpu, r.ext.seq, r.off, r.ext.len);
  }
  submit_index_write(r);
  // Not kept after the state said it was (the writer lapped it, or another reader took some,
  // after the check): the state goes back to what the output keeps before anything else.
  if (r.state && (r.on_disk.offset != r.kept.offset || r.on_disk.position != r.kept.position))
    return write_state(r, r.kept, false);
  if (r.ending) return end(r, proto::kEndStopped, 0);  // stopped meanwhile: finish now
  const auto now = std::chrono::steady_clock::now();
  if (now - r.last_progress >= kProgressEvery) {
    r.last_progress = now;
    send_event(r, proto::RecordKind::kProgress);
  }
  step(r);
}

// Appends the pending index lines, one write in flight at a time so they stay in order.
void Recorder::submit_index_write(Recording& r) {
  if (r.index_writing || r.index_pending.empty() || r.dead) return;
  if (fault(Fault::kIndexHold) && !r.ending) return;  // the test suite's stop with lines held
  r.index_inflight = std::move(r.index_pending);
  r.index_pending.clear();
  r.index_done = 0;
  resubmit_index_write(r);
}

void Recorder::resubmit_index_write(Recording& r) {
  io_uring_sqe* e = loop_.sqe();
  if (!e) return end(r, proto::kEndIndexFailed, EBUSY);
  if (fault(Fault::kIndexStall)) {
    // A write that never completes: a read of an eventfd nothing writes, until cancelled.
    if (!r.stall) r.stall.reset(::eventfd(0, EFD_CLOEXEC));
    static thread_local uint64_t sink;
    io_uring_prep_read(e, r.stall.get(), &sink, sizeof sink, 0);
  } else {
    // Offset -1: at the file position, which O_APPEND makes the end of the file.
    io_uring_prep_write(e, r.index.get(), r.index_inflight.data() + r.index_done,
                        static_cast<unsigned>(r.index_inflight.size() - r.index_done),
                        static_cast<uint64_t>(-1));
  }
  io_uring_sqe_set_data64(e, tag(kIndexWrite, r.id));
  r.index_writing = true;
}

void Recorder::on_index_write(uint64_t id, int res) {
  Recording* found = find(id);
  if (!found) return;
  Recording& r = *found;
  r.index_writing = false;
  // The stop's deadline passed: the lines in flight, and those after them, are not written;
  // the recording ends, failed, saying so.
  if (r.index_timed_out && res < 0) return end(r, proto::kEndIndexFailed, ETIMEDOUT);
  if ((res == -EINTR || res == -EAGAIN) && ++r.retries <= kMaxRetries)
    return resubmit_index_write(r);
  // An index that silently misses lines would misdescribe the output: a failure ends it.
  if (res <= 0) return end_after_write(r, res, proto::kEndIndexFailed);
  r.retries = 0;
  r.index_done += static_cast<size_t>(res);
  if (r.index_done < r.index_inflight.size()) return resubmit_index_write(r);
  submit_index_write(r);
  if (r.ending)
    end(r, proto::kEndStopped, 0);  // the cause is kept from the first call
  else
    step(r);  // it may have waited for the index to drain
}

void Recorder::send_event(Recording& r, proto::RecordKind kind) {
  std::shared_ptr<Connection> c = r.conn ? conns_.get(r.conn) : nullptr;
  if (!c) return;
  proto::RecordEvent ev = r.totals;
  ev.kind = kind;
  core::BufferStats st;
  {
    std::lock_guard lk(r.buf->mu);
    st = r.buf->stats();
  }
  ev.set_losses(st);
  // Progress may be skipped while the recorder does not keep up (the end event carries the same
  // totals); the end event is queued until the socket takes it.
  if (kind == proto::RecordKind::kEnd)
    c->send(proto::encode(ev));
  else
    c->offer(proto::encode(ev));
}

// Ends the recording: at once if nothing is in flight and every index line is written, else when
// the last write completes or is cancelled (the kernel may still be reading the buffer, and the
// index text). The first cause given is kept, except that a failure replaces a stop: a write
// that fails after a stop is still reported. The Recording itself is freed by the loop
// (reap_recordings), never under a caller.
void Recorder::end(Recording& r, proto::RecordEnd how, int err) {
  if (r.dead) return;
  const auto is_failure = [](uint32_t h) { return h != proto::kEndClosed && h != proto::kEndStopped; };
  const bool failure = is_failure(how);
  const bool failed = r.ending && is_failure(r.totals.ended_by);
  if (!r.ending || (failure && !failed)) {
    r.totals.status = -err;
    r.totals.ended_by = how;
  }
  // Asked to stop: the data write in flight is cancelled, so a write to a filesystem that never
  // answers does not hold the recording (and its buffer) for good; its extent is not consumed
  // unless the write completed first. The index write is not cancelled, and the index text not
  // yet written is still written: it describes extents already consumed, and without its lines
  // they would be gone from the channel and missing from the recording (a stop used to lose a
  // sub-buffer that way).
  // The index gets kIndexStopSeconds for that: a filesystem that never answers must not hold
  // the recording, and its buffer, for good either.
  if (!r.ending && how == proto::kEndStopped) {
    if (r.writing) loop_.cancel(tag(kRecordWrite, r.id));
    if (r.state_writing) loop_.cancel(tag(kStateWrite, r.id));
    r.index_deadline = {kIndexStopSeconds, 0};
    if (loop_.timeout(&r.index_deadline, tag(kIndexDeadline, r.id)) != 0)
      std::fprintf(stderr, "relayfs: recording %" PRIu64 ": no room in the ring for its index "
                   "deadline\n", r.id);
  }
  r.ending = true;
  if (r.totals.ended_by != proto::kEndIndexFailed && !r.index_timed_out) submit_index_write(r);
  if (r.dead) return;  // submitting failed and ended it already
  if (r.writing || r.index_writing || r.state_writing) return;
  r.dead = true;
  send_event(r, proto::RecordKind::kEnd);
  if (r.buf->recording == &r) r.buf->recording = nullptr;
  loop_.close_later(std::move(r.out));
  loop_.close_later(std::move(r.index));
  loop_.close_later(std::move(r.direct));
  loop_.close_later(std::move(r.state));
  reap_.push_back(r.id);
  hooks_.maybe_remove(r.buf->channel_id());  // what the recording drained may now leave the tree
}

// A stopped recording's deadline for its index passed (kIndexDeadline): the index write still
// in flight is cancelled, and on_index_write ends the recording, failed.
void Recorder::on_index_deadline(uint64_t id) {
  Recording* r = find(id);
  if (!r || r->dead || !r->index_writing) return;
  r->index_timed_out = true;
  loop_.cancel(tag(kIndexWrite, id));
}

// A write completed with res <= 0: cancelled by a stop, or failed (how; 0 bytes is EIO).
void Recorder::end_after_write(Recording& r, int res, proto::RecordEnd how) {
  if (res == -ECANCELED) return end(r, proto::kEndStopped, 0);
  end(r, how, res == 0 ? EIO : -res);
}

Recording* Recorder::find(uint64_t id) {
  auto it = recordings_.find(id);
  return it == recordings_.end() ? nullptr : it->second.get();
}

void Recorder::reap() {
  for (uint64_t id : reap_) recordings_.erase(id);
  reap_.clear();
}

}  // namespace relayfs::fs
