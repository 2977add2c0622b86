// The relay files as readers see them: open, read (the consuming read, its zero-copy and
// page-cache forms, and reads parked until data comes), poll, the mmap readers' ioctl, release;
// and, on the loop thread, the answers to parked reads and pollers when there is news.
//
// Each FUSE handler replies exactly once: through its do_<op>, which returns 0 once it replied
// (or handed the request to the loop) and -errno for the handler to reply with.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "fs/channel.h"
#include "fs/hooks.h"
#include "fs/loop.h"
#include "fs/options.h"
#include "fs/tree.h"

namespace relayfs::fs {

struct FileHandle;

class Files {
 public:
  Files(const Options& opts, Tree& tree, Loop& loop, Hooks& hooks)
      : opts_(opts), tree_(tree), loop_(loop), hooks_(hooks) {}
  Files(const Files&) = delete;
  Files& operator=(const Files&) = delete;
  // The session is over: the kernel sends no RELEASE for files still open; they are freed here.
  ~Files();

  // ---- FUSE worker threads.
  void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void read(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi);
  void release(fuse_req_t req, fuse_file_info* fi);
  void poll(fuse_req_t req, fuse_file_info* fi, fuse_pollhandle* ph);
  void ioctl(fuse_req_t req, unsigned int cmd, fuse_file_info* fi, unsigned flags);
  // Interrupt callback of a parked read.
  void interrupt(uint64_t read_id);

  // ---- Loop thread.
  // Answers s's parked reads and pollers for which there is news. Returns true if a parked read
  // got the end of file (the file may now leave the tree).
  bool service(const std::shared_ptr<Source>& s);
  void on_park(ParkedRead* pr);
  void on_interrupt(uint64_t read_id);
  // After the loop stopped: every read still parked, or posted to be, gets the end of file, or
  // error err if it is not 0.
  void answer_parked(Loop& stopped, int err = 0);

 private:
  int do_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  int do_read(fuse_req_t req, size_t size, off_t off, FileHandle* fh);
  int page_read(fuse_req_t req, FileHandle* fh, size_t size, off_t off);
  int park(fuse_req_t req, size_t size, std::shared_ptr<Source> s);
  void finish_read(ParkedRead* pr, const char* data, ssize_t n);

  const Options& opts_;
  Tree& tree_;
  Loop& loop_;
  Hooks& hooks_;
  std::atomic<uint64_t> next_read_id_{1};
  std::unordered_map<uint64_t, ParkedRead*> parked_;  // loop thread
  // Open relay files: the kernel sends no RELEASE for those still open when the session ends.
  std::mutex handles_mu_;
  std::unordered_set<FileHandle*> open_handles_;
};

// Replies with the error a do_<op> returned, if it returned one (it replied itself otherwise).
// The one place a FUSE handler turns -errno into the positive errno libfuse takes.
inline void reply_status(fuse_req_t req, int rc) {
  if (rc < 0) fuse_reply_err(req, -rc);
}

}  // namespace relayfs::fs
