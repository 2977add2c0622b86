#include "fs/tree.h"

#include <time.h>

#include "fs/channel.h"

namespace relayfs::fs {

timespec now() {
  timespec t;
  ::clock_gettime(CLOCK_REALTIME, &t);
  return t;
}

Tree::Tree() {
  auto root = std::make_unique<Node>();
  root->ino = FUSE_ROOT_ID;
  root->mode = S_IFDIR | 0755;
  root->atime = root->mtime = root->ctime = now();
  root->nlookup = 1;  // the kernel holds the root for the whole mount
  nodes_.emplace(FUSE_ROOT_ID, std::move(root));
}

Node* Tree::get(fuse_ino_t ino) {
  auto it = nodes_.find(ino);
  return it == nodes_.end() ? nullptr : it->second.get();
}

Node* Tree::child(Node* dir, const std::string& name) {
  auto it = dir->children.find(name);
  return it == dir->children.end() ? nullptr : get(it->second);
}

Node* Tree::add(Node* dir, const std::string& name, mode_t mode, uid_t uid, gid_t gid) {
  if (dir->children.count(name)) return nullptr;
  auto n = std::make_unique<Node>();
  n->ino = next_ino_++;
  n->parent = dir->ino;
  n->name = name;
  n->mode = mode;
  n->uid = uid;
  n->gid = gid;
  n->atime = n->mtime = n->ctime = now();
  Node* raw = n.get();
  dir->children.emplace(name, raw->ino);
  if (raw->is_dir()) ++dir->subdirs;
  dir->mtime = dir->ctime = raw->ctime;
  nodes_.emplace(raw->ino, std::move(n));
  return raw;
}

void Tree::unlink(Node* n) {
  if (!n->parent) return;
  if (Node* dir = get(n->parent)) {
    dir->children.erase(n->name);
    if (n->is_dir()) --dir->subdirs;
    dir->mtime = dir->ctime = now();
  }
  n->parent = 0;
  maybe_free(n);
}

void Tree::forget(fuse_ino_t ino, uint64_t count) {
  Node* n = get(ino);
  if (!n || ino == FUSE_ROOT_ID) return;
  n->nlookup = count > n->nlookup ? 0 : n->nlookup - count;
  maybe_free(n);
}

void Tree::maybe_free(Node* n) {
  if (n->parent || n->nlookup || n->ino == FUSE_ROOT_ID) return;
  if (n->source && n->source->open_handles() > 0) return;
  nodes_.erase(n->ino);
}

void Tree::fill_stat(const Node* n, struct stat* st) const {
  *st = {};
  st->st_ino = n->ino;
  st->st_mode = n->mode;
  st->st_nlink = n->is_dir() ? 2 + n->subdirs : 1;
  st->st_uid = n->uid;
  st->st_gid = n->gid;
  st->st_atim = n->atime;
  st->st_mtim = n->mtime;
  st->st_ctim = n->ctime;
  st->st_blksize = 1 << 20;  // coreutils then read in 1 MiB requests, libfuse's largest
}

}  // namespace relayfs::fs
