// The disk side of relayctl record (record_disk.h).
#include "relayctl/record_disk.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>

namespace relayctl {
namespace {

using relayfs::core::UniqueFd;

// Symbolic links followed while resolving one OUTDIR, as the kernel's MAXSYMLINKS.
constexpr int kMaxSymlinks = 40;

// "name (uid N)", or "uid N" for an id without a name (kind: "uid" or "gid"), from the passwd
// or group database.
template <typename Entry, typename Id>
std::string id_name(const char* kind, Id id, int (*get)(Id, Entry*, char*, size_t, Entry**),
                    char* Entry::*name) {
  Entry e, *found = nullptr;
  char buf[1024];
  const std::string num = std::string(kind) + " " + std::to_string(id);
  if (get(id, &e, buf, sizeof buf, &found) != 0 || !found) return num;
  return std::string(found->*name) + " (" + num + ")";
}

std::string user_name(uid_t uid) {
  return id_name("uid", uid, ::getpwuid_r, &passwd::pw_name);
}

std::string group_name(gid_t gid) {
  return id_name("gid", gid, ::getgrgid_r, &group::gr_name);
}

bool owned_by_caller_or_root(const struct stat& st) {
  return st.st_uid == 0 || st.st_uid == ::geteuid();
}

// Why another user controls directory st: whoever owns a directory, or may write into one that
// is not sticky, can rename what is in it and put a symbolic link or a file of their own in its
// place. "" if nobody but the caller and root does. A sticky directory writable by all (/tmp,
// /var/tmp) is fine: there only a file's owner may rename or remove it.
std::string controller(const struct stat& st) {
  if (!owned_by_caller_or_root(st)) return "owned by " + user_name(st.st_uid);
  if (st.st_mode & S_ISVTX) return "";
  if (st.st_mode & S_IWOTH) return "writable by every user, and not sticky";
  if (st.st_mode & S_IWGRP)
    return "writable by group " + group_name(st.st_gid) + ", and not sticky";
  return "";
}

// Appends path's components to the front of todo, in order ("" and "." left out).
void push_front_components(const std::string& path, std::deque<std::string>* todo) {
  std::deque<std::string> parts;
  size_t at = 0;
  while (at <= path.size()) {
    const size_t slash = std::min(path.find('/', at), path.size());
    std::string part = path.substr(at, slash - at);
    if (!part.empty() && part != ".") parts.push_back(std::move(part));
    at = slash + 1;
  }
  todo->insert(todo->begin(), parts.begin(), parts.end());
}

std::string child(const std::string& dir, const std::string& name) {
  return dir == "/" ? "/" + name : dir + "/" + name;
}

}  // namespace

int OutputDir::open(const std::string& path, Refusal* why) {
  struct Step {
    UniqueFd fd;  // O_PATH
    std::string path;
  };
  // Both return the -errno open() returns: fail's err, or -EPERM.
  auto fail = [why](const std::string& where, const std::string& what, int err) {
    *why = {where, what, ""};
    return err;
  };
  auto refuse = [why](const std::string& where, const std::string& reason) {
    *why = {where, "", reason};
    return -EPERM;
  };
  if (path.empty()) return fail(path, "", -ENOENT);
  std::deque<std::string> todo;
  push_front_components(path, &todo);
  if (path[0] != '/') {
    char cwd[PATH_MAX];
    if (!::getcwd(cwd, sizeof cwd)) return fail(path, "getcwd", -errno);
    push_front_components(cwd, &todo);
  }
  // The directories from "/" to where the walk is, each checked; ".." goes back one, as the
  // kernel's ".." goes to the physical parent.
  std::vector<Step> chain;
  chain.push_back({UniqueFd(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC)), "/"});
  if (!chain.back().fd) return fail("/", "", -errno);
  struct stat st;
  if (::fstat(chain.back().fd.get(), &st) != 0) return fail("/", "", -errno);
  if (std::string c = controller(st); !c.empty()) return refuse("/", c);
  int hops = 0;
  while (!todo.empty()) {
    const std::string name = std::move(todo.front());
    todo.pop_front();
    if (name == "..") {
      if (chain.size() > 1) chain.pop_back();
      continue;
    }
    const int parent = chain.back().fd.get();
    const std::string here = child(chain.back().path, name);
    UniqueFd fd(::openat(parent, name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!fd && errno == ENOENT && todo.empty()) {
      // OUTDIR itself is missing: make it in its checked parent. 0755 less the umask (mkdirat
      // applies it), as mkdir(1) would, rather than 0700: each recording gets its own
      // channel's mode less the umask, so the directory need not hide what the files allow;
      // and nobody but the caller may write into it either way.
      if (::mkdirat(parent, name.c_str(), 0755) == 0) {
        // Remembered at once, so that discard() removes it whatever fails from here on.
        parent_.reset(::fcntl(parent, F_DUPFD_CLOEXEC, 0));
        if (parent_) created_name_ = name;
        fd.reset(::openat(parent, name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
      } else if (errno == EEXIST && ++hops <= kMaxSymlinks) {
        todo.push_front(name);  // made meanwhile by someone else: look at it again
        continue;
      } else {
        return fail(here, "mkdir", -errno);
      }
    }
    if (!fd) return fail(here, "", -errno);
    if (::fstat(fd.get(), &st) != 0) return fail(here, "", -errno);
    if (S_ISLNK(st.st_mode)) {
      // Its owner decides where it points: only the caller's own, or root's, may redirect.
      if (!owned_by_caller_or_root(st))
        return refuse(here, "a symbolic link owned by " + user_name(st.st_uid));
      if (++hops > kMaxSymlinks) return fail(here, "", -ELOOP);
      char target[PATH_MAX];
      const ssize_t n = ::readlinkat(fd.get(), "", target, sizeof target);
      if (n < 0) return fail(here, "readlink", -errno);
      if (static_cast<size_t>(n) >= sizeof target) return fail(here, "readlink", -ENAMETOOLONG);
      const std::string t(target, static_cast<size_t>(n));
      push_front_components(t, &todo);
      if (!t.empty() && t[0] == '/') chain.resize(1);
      continue;
    }
    if (!S_ISDIR(st.st_mode)) return fail(here, "", -ENOTDIR);
    if (std::string c = controller(st); !c.empty()) return refuse(here, c);
    chain.push_back({std::move(fd), here});
  }
  // The directory itself, for real this time (an O_PATH descriptor cannot be read or fsync'd):
  // "." of the descriptor just checked, so no name is looked up again.
  const Step& last = chain.back();
  dir_.reset(::openat(last.fd.get(), ".", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir_) return fail(last.path, "", -errno);
  if (::fstat(dir_.get(), &st) != 0) return fail(last.path, "", -errno);
  if (std::string c = controller(st); !c.empty()) return refuse(last.path, c);
  return 0;
}

int OutputDir::open_below(const std::string& rel, OutputDir* out) const {
  if (rel.empty() || rel[0] == '/') return -EINVAL;
  UniqueFd cur(::fcntl(dir_.get(), F_DUPFD_CLOEXEC, 0));
  if (!cur) return -errno;
  out->created_name_.clear();
  out->parent_.reset();
  size_t at = 0;
  while (at <= rel.size()) {
    const size_t slash = std::min(rel.find('/', at), rel.size());
    const std::string name = rel.substr(at, slash - at);
    at = slash + 1;
    if (name.empty() || name == "." || name == "..") return -EINVAL;
    const bool last = at > rel.size();
    constexpr int kFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    UniqueFd next(::openat(cur.get(), name.c_str(), kFlags));
    if (!next && errno == ENOENT) {
      // 0755 less the umask, as open() makes OUTDIR. Made meanwhile by someone else: opened
      // below all the same, and checked as any other.
      if (::mkdirat(cur.get(), name.c_str(), 0755) == 0) {
        if (last) {
          out->parent_.reset(::fcntl(cur.get(), F_DUPFD_CLOEXEC, 0));
          if (out->parent_) out->created_name_ = name;
        }
      } else if (errno != EEXIST) {
        return -errno;
      }
      next.reset(::openat(cur.get(), name.c_str(), kFlags));
    }
    if (!next) {
      // O_NOFOLLOW | O_DIRECTORY gives ENOTDIR for a link on some kernels: say which it is.
      struct stat st;
      if ((errno == ENOTDIR || errno == ELOOP) &&
          ::fstatat(cur.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0)
        return S_ISLNK(st.st_mode) ? -ELOOP : -ENOTDIR;
      return -errno;
    }
    struct stat st;
    if (::fstat(next.get(), &st) != 0) return -errno;
    if (!controller(st).empty()) return -EPERM;
    cur = std::move(next);
  }
  out->dir_ = std::move(cur);
  out->files_.clear();
  return 0;
}

int OutputDir::create(const std::string& name, int extra_flags, UniqueFd* out) {
  out->reset(::openat(dir_.get(), name.c_str(),
                      O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | extra_flags, 0600));
  if (!*out) return -errno;
  struct stat st;
  if (::fstat(out->get(), &st) != 0) return -errno;
  files_.push_back({name, st.st_dev, st.st_ino});
  return 0;
}

int OutputDir::reopen(const std::string& name, int flags, UniqueFd* out) {
  // O_PATH first: nothing is opened for real before the checks, and the real opening goes
  // through this very inode (/proc/self/fd), not through the name again.
  UniqueFd path(::openat(dir_.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!path) return -errno;
  struct stat st;
  if (::fstat(path.get(), &st) != 0) return -errno;
  if (S_ISLNK(st.st_mode)) return -ELOOP;
  if (!S_ISREG(st.st_mode) || st.st_nlink != 1) return -EINVAL;
  if (st.st_uid != ::geteuid()) return -EPERM;
  // The magic link goes to the inode itself, whatever its name is now: no O_NOFOLLOW there.
  const std::string self = "/proc/self/fd/" + std::to_string(path.get());
  out->reset(::open(self.c_str(), flags | O_CLOEXEC));
  if (!*out && errno == EACCES && (st.st_mode & (S_IRUSR | S_IWUSR)) != (S_IRUSR | S_IWUSR)) {
    // Its owner may always change its mode: u+rw for the opening, then the mode it had.
    if (::chmod(self.c_str(), (st.st_mode & 07777) | S_IRUSR | S_IWUSR) != 0) return -errno;
    out->reset(::open(self.c_str(), flags | O_CLOEXEC));
    const int err = errno;
    if (::chmod(self.c_str(), st.st_mode & 07777) != 0 && *out) return -errno;
    if (!*out) return -err;
  }
  if (!*out) return -errno;
  return 0;
}

void OutputDir::discard() {
  for (const Created& f : files_) {
    struct stat st;
    // Only the file made here: in a sticky directory nobody else could rename it away, but a
    // check costs nothing.
    if (::fstatat(dir_.get(), f.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        st.st_dev == f.dev && st.st_ino == f.ino)
      ::unlinkat(dir_.get(), f.name.c_str(), 0);
  }
  files_.clear();
  if (!created_name_.empty()) ::unlinkat(parent_.get(), created_name_.c_str(), AT_REMOVEDIR);
  created_name_.clear();
}

int OutputFile::open(OutputDir& dir, const std::string& name, const std::string& path,
                     bool allow_direct, mode_t mode, bool existing) {
  path_ = path;
  if (existing) {
    if (int rc = dir.reopen(name, O_WRONLY, &buffered_); rc) return rc;
    if (allow_direct) open_direct(dir.fd(), name);
    return 0;
  }
  if (int rc = dir.create(name, 0, &buffered_); rc) return rc;
  if (allow_direct) open_direct(dir.fd(), name);
  // Both descriptors keep the write access they were opened with; the direct one is the same
  // file (open_direct checks), so one fchmod gives both the final mode.
  if (::fchmod(buffered_.get(), mode) != 0) return -errno;
  return 0;
}

void OutputFile::open_direct(int dirfd, const std::string& name) {
  struct statx sx {};
  // Filesystems without direct I/O (tmpfs before 6.6, FUSE, ...) report no alignment, or
  // refuse O_DIRECT at open: then everything goes through the page cache.
  if (::statx(buffered_.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) != 0 ||
      !(sx.stx_mask & STATX_DIOALIGN) || sx.stx_dio_offset_align == 0 || sx.stx_dio_mem_align == 0)
    return;
  // The second opening goes by name, so it must be the file just created and nothing put in its
  // place: relative to the same directory, not following a link, and the same inode.
  UniqueFd fd(::openat(dirfd, name.c_str(), O_WRONLY | O_DIRECT | O_NOFOLLOW | O_CLOEXEC));
  struct stat mine, again;
  if (!fd || ::fstat(buffered_.get(), &mine) != 0 || ::fstat(fd.get(), &again) != 0 ||
      mine.st_dev != again.st_dev || mine.st_ino != again.st_ino)
    return;
  direct_ = std::move(fd);
  mem_align_ = sx.stx_dio_mem_align;
  off_align_ = sx.stx_dio_offset_align;
}

}  // namespace relayctl
