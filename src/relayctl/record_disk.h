// The disk side of relayctl record: the output directory and the output files. relayctl creates
// them, with its own permissions, and passes the files' descriptors to the daemon, which writes
// into them (src/fs/record.cc).
//
// relayctl often runs as root, writing bytes a producer chose: the directory and the files are
// opened so that no other user can redirect them (relayctl(1), record). OutputDir resolves OUTDIR
// one component at a time and refuses a directory another user controls, or a symbolic link
// another user owns, on the way; every file is then created relative to that directory's
// descriptor, exclusively and without following a symbolic link, so nothing that existed before
// is ever written, truncated or removed.
//
// O_DIRECT: where the filesystem supports direct I/O (statx STATX_DIOALIGN), a second descriptor
// opened with O_DIRECT goes along with the file's alignments; the daemon sends a write through it
// when the write's file offset, length and memory address are all multiples of them, and through
// the page cache otherwise. Padding removal makes most lengths unaligned, so in practice only
// channels whose records fill sub-buffers exactly (say 4 KiB records in 256 KiB sub-buffers)
// stay direct.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/fd.h"

namespace relayctl {

class OutputDir {
 public:
  // Why open() failed: the directory or symbolic link it stopped at (as resolved so far), and
  // either `controlled`, the reason another user controls it, or `what` failed (with the errno
  // open() returned).
  struct Refusal {
    std::string path, what, controlled;
  };

  // Opens directory path, creating it (the last component only) if it is missing. Resolved from
  // "/" (a relative path after getcwd()), one component at a time: every directory on the way,
  // and the directory itself, must be owned by the caller (euid) or root and, unless sticky,
  // writable by neither its group nor others; a symbolic link is followed only if the caller or
  // root owns it, at most 40 of them. Returns 0, or a negative errno with *why filled in
  // (-EPERM when another user controls something on the way).
  int open(const std::string& path, Refusal* why);
  int fd() const { return dir_.get(); }

  // Opens directory `rel` below this one into *out (relayctl fetch's OUTDIR/HOST/CHANNEL
  // directories), creating what is missing (0755 less the umask). rel is a relative path of
  // plain names ("a/b"; no empty name, ".", ".." or leading '/'), taken one name at a time with
  // O_NOFOLLOW: never through a symbolic link, whoever owns it. Each must be a directory nobody
  // but the caller controls, as open() checks. *out then creates and reopens files in it; its
  // discard() removes only the last directory, if it made it. Returns 0 or a negative errno:
  // -ELOOP for a symbolic link on the way, -ENOTDIR for something else that is not a
  // directory, -EPERM for one another user controls, -EINVAL for a malformed rel.
  int open_below(const std::string& rel, OutputDir* out) const;

  // Creates file `name` in the directory with O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
  // O_CLOEXEC | extra_flags, mode 0600 (the caller sets the final mode once it opened every
  // descriptor it needs: a 0400 file could not be opened for writing again). Returns 0 or a
  // negative errno: -EEXIST if anything by that name is there, a symbolic link included.
  int create(const std::string& name, int extra_flags, relayfs::core::UniqueFd* out);

  // Opens file `name` of an earlier recording in the directory, to go on with it (relayctl
  // record --resume), with `flags` (O_WRONLY or O_RDWR, and O_APPEND or not; O_CLOEXEC is
  // added). Only a regular file of the caller's (euid), with one link, and never through a
  // symbolic link: in a sticky directory anyone may have put something by that name. A file
  // whose mode does not let its owner open it so (a 0400 recording) gets u+rw for the opening
  // and its mode back. Returns 0 or a negative errno: -ENOENT if there is nothing by that
  // name, -ELOOP for a symbolic link, -EPERM for another user's file, -EINVAL for anything but
  // a regular file with one link.
  int reopen(const std::string& name, int flags, relayfs::core::UniqueFd* out);

  // Removes what this OutputDir created: the files create() made (each only if the name still
  // is that very file) and the directory, if open() created it (only if it is empty by then).
  // For a recording that was refused before anything was recorded.
  void discard();

 private:
  struct Created {
    std::string name;
    dev_t dev;
    ino_t ino;
  };
  relayfs::core::UniqueFd dir_;
  relayfs::core::UniqueFd parent_;  // the directory open() created the directory in, if it did
  std::string created_name_;        // its name there; empty if the directory existed
  std::vector<Created> files_;
};

class OutputFile {
 public:
  // Creates file `name` in dir (OutputDir::create), path being its name for messages, with the
  // O_DIRECT descriptor if allow_direct and the filesystem allows; then gives it mode `mode`.
  // existing: opens the file an earlier recording left instead (OutputDir::reopen), mode kept.
  // Returns 0 or a negative errno.
  int open(OutputDir& dir, const std::string& name, const std::string& path, bool allow_direct,
           mode_t mode, bool existing = false);
  int buffered_fd() const { return buffered_.get(); }
  int direct_fd() const { return direct_.get(); }  // -1 without direct I/O
  uint32_t mem_align() const { return mem_align_; }
  uint32_t off_align() const { return off_align_; }
  const std::string& path() const { return path_; }

 private:
  void open_direct(int dirfd, const std::string& name);

  std::string path_;
  relayfs::core::UniqueFd buffered_, direct_;
  uint32_t mem_align_ = 0, off_align_ = 0;
};

}  // namespace relayctl
