#include "fs/forget.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <sys/uio.h>

#include <cerrno>

namespace relayfs::fs {

int Forgetter::start(int fuse_fd) {
  auto st = std::make_shared<State>();
  st->fd.reset(::fcntl(fuse_fd, F_DUPFD_CLOEXEC, 0));
  if (!st->fd) return -errno;
  st_ = st;
  thread_ = std::thread(run, std::move(st));
  return 0;
}

void Forgetter::gone(fuse_ino_t parent, const std::string& name) {
  if (!st_) return;
  {
    std::lock_guard lk(st_->mu);
    st_->queue.push_back({parent, name});
  }
  st_->cv.notify_one();
}

void Forgetter::stop() {
  if (!thread_.joinable()) return;
  bool blocked;
  {
    std::lock_guard lk(st_->mu);
    st_->stopping = true;
    blocked = st_->in_kernel;
  }
  st_->cv.notify_one();
  if (blocked)
    thread_.detach();
  else
    thread_.join();
}

void Forgetter::run(std::shared_ptr<State> st) {
  std::unique_lock lk(st->mu);
  for (;;) {
    st->cv.wait(lk, [&] { return st->stopping || !st->queue.empty(); });
    if (st->stopping) return;
    std::vector<Name> batch;
    batch.swap(st->queue);
    st->in_kernel = true;
    lk.unlock();
    for (const Name& n : batch) {
      // What fuse_lowlevel_notify_inval_entry sends: header, parent and length, the name with
      // its NUL. The kernel then drops the dentry, and once nothing holds the inode, sends
      // FORGET. ENOENT (nothing cached) and errors at unmount need no handling.
      fuse_notify_inval_entry_out arg{};
      arg.parent = n.parent;
      arg.namelen = static_cast<uint32_t>(n.name.size());
      fuse_out_header out{};
      out.error = FUSE_NOTIFY_INVAL_ENTRY;
      out.len = static_cast<uint32_t>(sizeof out + sizeof arg + n.name.size() + 1);
      iovec iov[] = {{&out, sizeof out},
                     {&arg, sizeof arg},
                     {const_cast<char*>(n.name.c_str()), n.name.size() + 1}};
      if (::writev(st->fd.get(), iov, 3) < 0) {
      }
    }
    lk.lock();
    st->in_kernel = false;
  }
}

}  // namespace relayfs::fs
