// The directory tree of a relayfs mount: directories made by users, relay files made for
// channels. Guarded by one mutex (Tree::mu); node ids are never reused while mounted.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace relayfs::fs {

class Source;

struct Node {
  fuse_ino_t ino = 0;
  fuse_ino_t parent = 0;  // 0 once unlinked
  std::string name;
  mode_t mode = 0;  // type and permission bits
  uid_t uid = 0;
  gid_t gid = 0;
  timespec atime{}, mtime{}, ctime{};
  uint64_t nlookup = 0;                        // the kernel's references (lookup/forget)
  uint32_t subdirs = 0;                        // for st_nlink: find(1) relies on it
  std::map<std::string, fuse_ino_t> children;  // directories
  std::shared_ptr<Source> source;              // relay files: a buffer or a merged view

  bool is_dir() const { return S_ISDIR(mode); }
};

class Tree {
 public:
  Tree();

  std::mutex mu;  // lock order: Tree::mu before any RelayBuffer::mu

  // All below require mu held.
  Node* get(fuse_ino_t ino);
  Node* child(Node* dir, const std::string& name);
  // Adds a node under dir; returns it, or nullptr if the name exists.
  Node* add(Node* dir, const std::string& name, mode_t mode, uid_t uid, gid_t gid);
  // Takes a node out of its directory; it lives on while the kernel still references it.
  void unlink(Node* n);
  // Drops nlookup references; frees the node once unlinked and unreferenced.
  void forget(fuse_ino_t ino, uint64_t n);
  // Frees an unlinked node nobody references any more (after its last file handle closed).
  void maybe_free(Node* n);
  size_t size() const { return nodes_.size(); }

  void fill_stat(const Node* n, struct stat* st) const;

 private:
  std::unordered_map<fuse_ino_t, std::unique_ptr<Node>> nodes_;
  fuse_ino_t next_ino_ = FUSE_ROOT_ID + 1;
};

timespec now();

}  // namespace relayfs::fs
