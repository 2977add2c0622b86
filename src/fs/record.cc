// Recording to disk in the daemon (relayctl record). The recorder opens the output files itself,
// with its own permissions, and passes them along with the buffer's inode number; the daemon
// checks that the recorder may read the relay file, as open(2) would, and that the descriptors
// are regular files open for writing. From then on the loop thread writes each extent (the rest
// of a closed sub-buffer, padding cut; at the end, the never-closed tail) with one io_uring write
// straight from the buffer's registered mapping (IORING_OP_WRITE_FIXED), and consumes it only
// once the write completed and the bytes were still unread by anyone else and not overwritten.
// One write per buffer is in flight at a time; buffers proceed in parallel. The index lines go
// through the ring too: the loop thread never makes a blocking call on a descriptor a recorder
// passed (it may be on a slow, or a hostile, filesystem), and a lapped extent is overwritten in
// place by the next one rather than cut off (the recorder cuts the file to the final total).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "fs/relayfs.h"
#include "fs/ring_tag.h"

namespace relayfs::fs {

namespace {

constexpr auto kProgressEvery = std::chrono::milliseconds(250);

// 0 if fd is a regular file open for writing (and, with append, in O_APPEND mode); else EINVAL.
int check_output(int fd, bool append, struct stat* st) {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fstat(fd, st) != 0) return EBADF;
  if (!S_ISREG(st->st_mode)) return EINVAL;
  if ((fl & O_ACCMODE) != O_WRONLY && (fl & O_ACCMODE) != O_RDWR) return EBADF;
  if (append && !(fl & O_APPEND)) return EINVAL;
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

void RelayFs::handle_record(Connection& c, proto::Received& m) {
  proto::RecordRequest req;
  proto::RecordReply reply;
  auto rec = std::make_unique<Recording>();
  int err = -proto::decode(m.payload.data(), m.payload.size(), &req);
  if (!err && m.fds.size() != 2 && m.fds.size() != 3) err = EBADF;
  struct stat out_st{}, st{};
  if (!err) err = check_output(m.fds[0].get(), false, &out_st);
  if (!err) err = check_output(m.fds[1].get(), true, &st);
  if (!err && m.fds.size() == 3) {
    err = check_output(m.fds[2].get(), false, &st);
    // The O_DIRECT descriptor must be another opening of the output file itself.
    if (!err && (st.st_dev != out_st.st_dev || st.st_ino != out_st.st_ino ||
                 !(::fcntl(m.fds[2].get(), F_GETFL) & O_DIRECT)))
      err = EINVAL;
  }
  if (!err) err = readable_buffer(c, req.ino, &rec->buf);
  // One recording per buffer: two would split its sub-buffers between them. (recording is
  // loop-thread state, and this is the loop thread.)
  if (!err && rec->buf->recording) err = EBUSY;
  if (!err) {
    rec->id = next_recording_id_++;
    rec->conn = c.id;
    rec->cookie = req.cookie;
    rec->totals.cookie = req.cookie;
    auto& fds = m.fds;  // ours to keep
    rec->out = std::move(fds[0]);
    rec->index = std::move(fds[1]);
    if (fds.size() == 3) {
      rec->direct = std::move(fds[2]);
      rec->mem_align = req.mem_align;
      rec->off_align = req.off_align;
    }
    reply = {0, rec->buf->fixed_index >= 0 ? 1u : 0u, rec->buf->index()};
  } else {
    reply = {-err, 0, 0};
  }
  {
    std::lock_guard lk(c.send_mu);
    proto::send_message(c.fd.get(), proto::encode(reply, m.header.seq));
  }
  if (err) return;
  Recording& r = *rec;
  r.buf->recording = &r;
  recordings_.emplace(r.id, std::move(rec));
  record_step(r);
}

void RelayFs::handle_record_stop(Connection& c) {
  std::vector<Recording*> mine;
  for (auto& [id, r] : recordings_)
    if (r->conn == c.id) mine.push_back(r.get());
  for (Recording* r : mine) end_recording(*r, kEndStopped, 0);
}

// The recorder hung up: its recordings end once their writes in flight are done (the bytes of a
// write the kernel holds are not consumed until it completes, so nothing is lost).
void RelayFs::drop_recordings(uint64_t conn_id) {
  std::vector<Recording*> mine;
  for (auto& [id, r] : recordings_)
    if (r->conn == conn_id) mine.push_back(r.get());
  for (Recording* r : mine) {
    r->conn = 0;
    end_recording(*r, kEndStopped, 0);
  }
}

// Starts the next write, or arms the doorbell for the next sub-buffer, or ends the recording
// once the channel is finalized and drained.
void RelayFs::record_step(Recording& r) {
  if (r.writing || r.ending) return;
  RelayBuffer& b = *r.buf;
  int rc;
  bool drained = false;
  {
    std::lock_guard lk(b.mu);
    rc = b.cons.take_extent(&r.ext);
    if (rc == 0) {
      drained = b.drained();
      if (!drained) {
        // Have the producer ring at its next sub-buffer switch (or close), then look again
        // for one that came before the doorbell was armed.
        b.arm_doorbell(true);
        rc = b.cons.take_extent(&r.ext);
      }
    }
  }
  if (rc < 0) return end_recording(r, kEndFailed, -rc);
  if (rc == 0) {
    if (drained) end_recording(r, kEndClosed, 0);
    return;
  }
  r.written = 0;
  submit_record_write(r);
}

void RelayFs::submit_record_write(Recording& r) {
  RelayBuffer& b = *r.buf;
  const uint32_t size = b.buf.geometry().subbuf_size;
  // Inside the mapping: take_extent bounded the extent by the private geometry.
  const char* addr = b.buf.data() + r.ext.data_offset(size) + r.written;
  const uint32_t len = r.ext.len - r.written;
  const uint64_t at = r.off + r.written;
  r.via_direct = r.direct_ok(at, addr, len);
  const int fd = r.via_direct ? r.direct.get() : r.out.get();
  io_uring_sqe* e = sqe();
  if (!e) return end_recording(r, kEndFailed, EBUSY);  // the kernel takes no submissions
  if (b.fixed_index >= 0)
    io_uring_prep_write_fixed(e, fd, addr, len, at, b.fixed_index);
  else
    io_uring_prep_write(e, fd, addr, len, at);
  io_uring_sqe_set_data64(e, tag(kRecordWrite, r.id));
  r.writing = true;
  if (b.fixed_index >= 0) ++r.totals.fixed;
  if (r.via_direct) ++r.totals.direct;
}

void RelayFs::on_record_write(uint64_t id, int res) {
  auto it = recordings_.find(id);
  if (it == recordings_.end()) return;
  Recording& r = *it->second;
  r.writing = false;
  if (res == -EINTR || res == -EAGAIN) return submit_record_write(r);
  if (res == -EINVAL && r.via_direct) {
    // The filesystem refused this direct write after all: from now on, the page cache.
    r.direct.reset();
    return submit_record_write(r);
  }
  // Failed: nothing of the extent is consumed; it stays in the channel for another reader.
  if (res <= 0) return end_recording(r, kEndFailed, res == 0 ? EIO : -res);
  r.written += static_cast<uint32_t>(res);
  if (r.written < r.ext.len) return submit_record_write(r);  // short: the rest reports errors
  const std::shared_ptr<RelayBuffer> b = r.buf;
  finish_record_extent(r);  // may end the recording: r is not used after it
  service(b);  // pollers and parked readers of the buffer see the new position
}

// The extent is on disk: keep it if it was still unread and not overwritten, then consume it.
void RelayFs::finish_record_extent(Recording& r) {
  RelayBuffer& b = *r.buf;
  int kept;
  {
    std::lock_guard lk(b.mu);
    kept = b.cons.finish_extent(r.ext);
  }
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
  if (r.ending) return end_recording(r, kEndStopped, 0);  // stopped meanwhile: finish now
  const auto now = std::chrono::steady_clock::now();
  if (now - r.last_progress >= kProgressEvery) {
    r.last_progress = now;
    send_record_event(r, proto::RecordKind::kProgress);
  }
  record_step(r);
}

// Appends the pending index lines, one write in flight at a time so they stay in order.
void RelayFs::submit_index_write(Recording& r) {
  if (r.index_writing || r.index_pending.empty()) return;
  r.index_inflight = std::move(r.index_pending);
  r.index_pending.clear();
  r.index_done = 0;
  resubmit_index_write(r);
}

void RelayFs::resubmit_index_write(Recording& r) {
  io_uring_sqe* e = sqe();
  if (!e) return end_recording(r, kEndIndexFailed, EBUSY);
  // Offset -1: at the file position, which O_APPEND makes the end of the file.
  io_uring_prep_write(e, r.index.get(), r.index_inflight.data() + r.index_done,
                      static_cast<unsigned>(r.index_inflight.size() - r.index_done),
                      static_cast<uint64_t>(-1));
  io_uring_sqe_set_data64(e, tag(kIndexWrite, r.id));
  r.index_writing = true;
}

void RelayFs::on_index_write(uint64_t id, int res) {
  auto it = recordings_.find(id);
  if (it == recordings_.end()) return;
  Recording& r = *it->second;
  r.index_writing = false;
  if (res == -EINTR || res == -EAGAIN) return resubmit_index_write(r);
  // An index that silently misses lines would misdescribe the output: a failure ends it.
  if (res <= 0) return end_recording(r, kEndIndexFailed, res == 0 ? EIO : -res);
  r.index_done += static_cast<size_t>(res);
  if (r.index_done < r.index_inflight.size()) return resubmit_index_write(r);
  submit_index_write(r);
  if (r.ending) end_recording(r, kEndStopped, 0);  // the cause is kept from the first call
}

void RelayFs::send_record_event(Recording& r, proto::RecordKind kind) {
  if (!r.conn) return;
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lk(conns_mu_);
    auto it = conns_.find(r.conn);
    if (it != conns_.end()) c = it->second;
  }
  if (!c) return;
  proto::RecordEvent ev = r.totals;
  ev.kind = kind;
  core::BufferStats st;
  {
    std::lock_guard lk(r.buf->mu);
    st = r.buf->stats();
  }
  ev.lost_full = st.lost_full;
  ev.lost_too_big = st.lost_too_big;
  ev.lost_wrap = st.lost_wrap;
  ev.overruns = st.overruns;
  ev.lost_uncommitted = st.lost_uncommitted;
  std::lock_guard lk(c->send_mu);
  // Progress is at most 4 events a second per buffer, so the socket has room; should it not,
  // the recorder misses a progress line, and the end event reports the same totals anyway.
  proto::send_message(c->fd.get(), proto::encode(ev));
}

// Ends the recording: at once if nothing is in flight, else when the last write completes (the
// kernel may still be reading the buffer, and the index text). The first cause given is kept,
// except that a failure replaces a stop: a write that fails after a stop is still reported.
void RelayFs::end_recording(Recording& r, RecordEnd how, int err) {
  const bool failure = how == kEndFailed || how == kEndIndexFailed;
  const bool failed = r.totals.ended_by == kEndFailed || r.totals.ended_by == kEndIndexFailed;
  if (!r.ending || (failure && !failed)) {
    r.ending = true;
    r.totals.status = -err;
    r.totals.ended_by = how;
  }
  if (r.writing || r.index_writing) return;
  send_record_event(r, proto::RecordKind::kEnd);
  if (r.buf->recording == &r) r.buf->recording = nullptr;
  const uint32_t channel = r.buf->channel_id();
  recordings_.erase(r.id);  // r is gone from here on
  maybe_remove(channel);    // what the recording drained may now leave the tree
}

}  // namespace relayfs::fs
