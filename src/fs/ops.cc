// FUSE operations on the tree (ops.h).
#include "fs/ops.h"

#include <sys/statvfs.h>
#include <sys/xattr.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/stats.h"
#include "fs/channel.h"
#include "fs/fault.h"
#include "fs/files.h"
#include "proto/names.h"
#include "proto/protocol.h"

namespace relayfs::fs {

namespace {

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
int reply_xattr(fuse_req_t req, const std::string& value, size_t size) {
  if (size == 0)
    fuse_reply_xattr(req, value.size());
  else if (size < value.size())
    return -ERANGE;
  else
    fuse_reply_buf(req, value.data(), value.size());
  return 0;
}

}  // namespace

void Ops::init(fuse_conn_info* conn) {
  // Relay files are read with direct I/O, but this kernel's splice(2) and sendfile(2) of them go
  // through the page cache (Files::page_read), and bytes the page cache takes have left the
  // buffer whether or not a reader gets them. Read-ahead makes the kernel take more than the
  // reader asked for: up to the read-ahead window at a close. Without it, a page at a time, and
  // a page request then also proves that the reader got everything before that page.
  conn->max_readahead = opts_.readahead;
}

void Ops::node_stat(Node* n, struct stat* st) {
  tree_.fill_stat(n, st);
  if (!n->source) return;
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

void Ops::lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_status(req, do_lookup(req, parent, name));
}

int Ops::do_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  fuse_entry_param e{};
  {
    std::lock_guard lk(tree_.mu);
    Node* dir = tree_.get(parent);
    if (!dir) return -ENOENT;
    if (!dir->is_dir()) return -ENOTDIR;
    if (std::strlen(name) > proto::kMaxName) return -ENAMETOOLONG;
    Node* n = tree_.child(dir, name);
    if (!n) return -ENOENT;
    e.ino = n->ino;
    e.attr_timeout = 0;   // sizes and times change with every record
    e.entry_timeout = 0;  // files come and go with channels
    node_stat(n, &e.attr);
    ++n->nlookup;
  }
  fuse_reply_entry(req, &e);
  return 0;
}

void Ops::forget(fuse_ino_t ino, uint64_t n) {
  std::lock_guard lk(tree_.mu);
  tree_.forget(ino, n);
}

void Ops::getattr(fuse_req_t req, fuse_ino_t ino, bool by_file) {
  // Relay files can be repositioned (a no-op: every read takes the oldest unread data), because
  // tail -F seeks to the start of a file it opens again after a daemon restart and gives up if
  // that fails. But they have no end to seek to: asked for the size through an open file, which
  // the kernel does only for lseek(SEEK_END), say ESPIPE, so tail -f and others that look for
  // the end to read backwards from it fall back to reading forward, as from a pipe.
  if (by_file && ino != FUSE_ROOT_ID) {
    bool dir;
    {
      std::lock_guard lk(tree_.mu);
      Node* n = tree_.get(ino);
      dir = n && n->is_dir();
    }
    if (!dir) return reply_status(req, -ESPIPE);
  }
  reply_status(req, do_setattr(req, ino, nullptr, 0));
}

void Ops::setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set) {
  reply_status(req, do_setattr(req, ino, attr, to_set));
}

// Sets what to_set names (attr null: getattr, which sets nothing) and replies with the
// attributes.
int Ops::do_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set) {
  struct stat st;
  {
    std::lock_guard lk(tree_.mu);
    Node* n = tree_.get(ino);
    if (!n) return -ENOENT;
    if (attr) {
      if (n->source) return -EPERM;  // relay files are the producer's: no truncate, chmod, touch
      // Directories: the kernel (default_permissions) has checked who may do what.
      if (to_set & FUSE_SET_ATTR_MODE) n->mode = (n->mode & S_IFMT) | (attr->st_mode & 07777);
      if (to_set & FUSE_SET_ATTR_UID) n->uid = attr->st_uid;
      if (to_set & FUSE_SET_ATTR_GID) n->gid = attr->st_gid;
      if (to_set & FUSE_SET_ATTR_ATIME) n->atime = attr->st_atim;
      if (to_set & FUSE_SET_ATTR_MTIME) n->mtime = attr->st_mtim;
      if (to_set & FUSE_SET_ATTR_ATIME_NOW) n->atime = now();
      if (to_set & FUSE_SET_ATTR_MTIME_NOW) n->mtime = now();
      n->ctime = now();
      if (to_set & FUSE_SET_ATTR_SIZE) return -EISDIR;
    }
    node_stat(n, &st);
  }
  fuse_reply_attr(req, &st, 0);
  return 0;
}

void Ops::mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  reply_status(req, do_mkdir(req, parent, name, mode));
}

int Ops::do_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  fuse_entry_param e{};
  {
    std::lock_guard lk(tree_.mu);
    const fuse_ctx* ctx = fuse_req_ctx(req);
    Node* dir = tree_.get(parent);
    if (!dir) return -ENOENT;
    if (!dir->is_dir()) return -ENOTDIR;
    if (int rc = proto::name_error(name); rc) return rc;
    if (tree_.child(dir, name)) return -EEXIST;
    Node* n = tree_.add(dir, name, S_IFDIR | (mode & 07777 & ~ctx->umask), ctx->uid, ctx->gid);
    e.ino = n->ino;
    ++n->nlookup;
    node_stat(n, &e.attr);
  }
  fuse_reply_entry(req, &e);
  return 0;
}

void Ops::rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  reply_status(req, do_rmdir(req, parent, name));
}

int Ops::do_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  {
    std::lock_guard lk(tree_.mu);
    Node* dir = tree_.get(parent);
    Node* n = dir ? tree_.child(dir, name) : nullptr;
    if (!n) return -ENOENT;
    if (!n->is_dir()) return -ENOTDIR;
    if (!n->children.empty()) return -ENOTEMPTY;
    tree_.unlink(n);
  }
  fuse_reply_err(req, 0);
  return 0;
}

void Ops::opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  reply_status(req, do_opendir(req, ino, fi));
}

int Ops::do_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto h = std::make_unique<DirHandle>();
  {
    std::lock_guard lk(tree_.mu);
    Node* n = tree_.get(ino);
    if (!n) return -ENOENT;
    if (!n->is_dir()) return -ENOTDIR;
    h->entries.push_back({".", n->ino, S_IFDIR});
    h->entries.push_back({"..", n->parent ? n->parent : n->ino, S_IFDIR});
    for (auto& [name, cino] : n->children)
      if (Node* c = tree_.get(cino)) h->entries.push_back({name, cino, c->mode});
  }
  fi->fh = reinterpret_cast<uint64_t>(h.release());
  fi->cache_readdir = 0;
  if (fuse_reply_open(req, fi) != 0) delete reinterpret_cast<DirHandle*>(fi->fh);
  return 0;
}

void Ops::readdir(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi) {
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

void Ops::releasedir(fuse_req_t req, fuse_file_info* fi) {
  delete reinterpret_cast<DirHandle*>(fi->fh);
  fuse_reply_err(req, 0);
}

namespace {

// Attribute i's value. base: the channel's base_filename; flags: its proto::kFlag*.
std::string attr_value(size_t i, const core::BufferStats& st, uint32_t flags,
                       const std::string& base) {
  switch (i) {
    case proto::kAttrMode:
      return flags & proto::kFlagOverwrite  ? "overwrite"
             : flags & proto::kFlagHookMode ? "subbuf_start"
                                            : "no-overwrite";
    case proto::kAttrBlocking:
      return flags & proto::kFlagBlocking ? "1" : "0";
    case proto::kAttrChannel:
      return base;
    default:
      return std::to_string(core::counter(st, i));
  }
}

}  // namespace

void Ops::getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  reply_status(req, do_getxattr(req, ino, name, size));
}

int Ops::do_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  if (fault(Fault::kSlowControlXattr) && std::strcmp(name, proto::kControlXattr) == 0)
    std::this_thread::sleep_for(std::chrono::seconds(5));
  if (ino == FUSE_ROOT_ID && std::strcmp(name, proto::kUsersXattr) == 0)
    return reply_xattr(req, usage_(), size);  // outside the tree lock: it lists /proc/self/fd
  std::string value;
  {
    std::lock_guard lk(tree_.mu);
    Node* n = tree_.get(ino);
    if (!n) return -ENOENT;
    if (n->is_dir()) {
      if (std::strcmp(name, proto::kControlXattr) != 0) return -ENODATA;
      value = control_name_;
    } else {
      const size_t i = proto::xattr_index(name);
      if (i == proto::kAttrCount) return -ENODATA;
      std::shared_ptr<Channel> ch = registry_.find(n->source->channel_id());
      core::BufferStats st;
      if (i < core::kCounterCount) {
        std::lock_guard slk(n->source->mu);
        st = n->source->stats();
      }
      value = attr_value(i, st, ch ? ch->flags : 0, ch ? ch->base : std::string());
    }
  }
  return reply_xattr(req, value, size);
}

void Ops::listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  reply_status(req, do_listxattr(req, ino, size));
}

int Ops::do_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  std::string names;
  {
    std::lock_guard lk(tree_.mu);
    Node* n = tree_.get(ino);
    if (!n) return -ENOENT;
    if (n->is_dir()) {
      names.append(proto::kControlXattr).push_back('\0');
      if (ino == FUSE_ROOT_ID) names.append(proto::kUsersXattr).push_back('\0');
    } else {
      for (size_t i = 0; i < proto::kAttrCount; ++i) names.append(proto::xattr_name(i)).push_back('\0');
    }
  }
  return reply_xattr(req, names, size);
}

void Ops::statfs(fuse_req_t req) {
  struct statvfs sv {};
  sv.f_bsize = 1 << 20;
  sv.f_frsize = 1 << 20;
  sv.f_namemax = proto::kMaxName;
  {
    std::lock_guard lk(tree_.mu);
    sv.f_files = tree_.size();
  }
  fuse_reply_statfs(req, &sv);
}

}  // namespace relayfs::fs
