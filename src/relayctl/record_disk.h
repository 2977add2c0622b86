// The disk side of relayctl record: the output files. relayctl opens them, with its own
// permissions, and passes the descriptors to the daemon, which writes into them (src/fs/record.cc).
//
// O_DIRECT: where the filesystem supports direct I/O (statx STATX_DIOALIGN), a second descriptor
// opened with O_DIRECT goes along with the file's alignments; the daemon sends a write through it
// when the write's file offset, length and memory address are all multiples of them, and through
// the page cache otherwise. Padding removal makes most lengths unaligned, so in practice only
// channels whose records fill sub-buffers exactly (say 4 KiB records in 256 KiB sub-buffers)
// stay direct.
#pragma once

#include <cstdint>
#include <string>

#include "core/fd.h"

namespace relayctl {

class OutputFile {
 public:
  // Creates (truncates) the file. Returns 0 or an errno.
  int open(const std::string& path, bool allow_direct);
  int buffered_fd() const { return buffered_.get(); }
  int direct_fd() const { return direct_.get(); }  // -1 without direct I/O
  uint32_t mem_align() const { return mem_align_; }
  uint32_t off_align() const { return off_align_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  relayfs::core::UniqueFd buffered_, direct_;
  uint32_t mem_align_ = 0, off_align_ = 0;
};

}  // namespace relayctl
