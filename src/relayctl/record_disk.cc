// The disk side of relayctl record (record_disk.h).
#include "relayctl/record_disk.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace relayctl {

int OutputFile::open(const std::string& path, bool allow_direct) {
  path_ = path;
  buffered_.reset(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!buffered_) return errno;
  if (!allow_direct) return 0;
  struct statx sx {};
  // Filesystems without direct I/O (tmpfs before 6.6, FUSE, ...) report no alignment, or
  // refuse O_DIRECT at open: then everything goes through the page cache.
  if (::statx(buffered_.get(), "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) != 0 ||
      !(sx.stx_mask & STATX_DIOALIGN) || sx.stx_dio_offset_align == 0 || sx.stx_dio_mem_align == 0)
    return 0;
  direct_.reset(::open(path.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
  if (!direct_) return 0;
  mem_align_ = sx.stx_dio_mem_align;
  off_align_ = sx.stx_dio_offset_align;
  return 0;
}

}  // namespace relayctl
