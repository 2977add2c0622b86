// The FUSE operations on the tree: names, attributes, directories, extended attributes. The
// relay files' own operations (open, read, poll, ...) are files.h's.
//
// Each handler replies exactly once: through its do_<op>, which returns 0 once it replied and
// -errno for the handler to reply with (reply_status, files.h).
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <functional>
#include <string>

#include "fs/options.h"
#include "fs/registry.h"
#include "fs/tree.h"

namespace relayfs::fs {

class Ops {
 public:
  // control_name: the control socket's name, the value of the control attribute. usage: the
  // users attribute's text.
  Ops(const Options& opts, Tree& tree, Registry& registry, const std::string& control_name,
      std::function<std::string()> usage)
      : opts_(opts), tree_(tree), registry_(registry), control_name_(control_name),
        usage_(std::move(usage)) {}

  void init(fuse_conn_info* conn);
  void lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  void forget(fuse_ino_t ino, uint64_t n);
  // by_file: asked through an open file (the kernel does so for lseek(SEEK_END), never for
  // stat(2) or fstat(2)).
  void getattr(fuse_req_t req, fuse_ino_t ino, bool by_file);
  void setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set);
  void mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode);
  void rmdir(fuse_req_t req, fuse_ino_t parent, const char* name);
  void opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void readdir(fuse_req_t req, size_t size, off_t off, fuse_file_info* fi);
  void releasedir(fuse_req_t req, fuse_file_info* fi);
  void getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size);
  void listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
  void statfs(fuse_req_t req);

 private:
  int do_lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  int do_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set);
  int do_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode);
  int do_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name);
  int do_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  int do_getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size);
  int do_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size);
  // n's attributes, with a relay file's size and times from its buffer. Tree::mu held.
  void node_stat(Node* n, struct stat* st);

  const Options& opts_;
  Tree& tree_;
  Registry& registry_;
  const std::string& control_name_;
  std::function<std::string()> usage_;
};

}  // namespace relayfs::fs
