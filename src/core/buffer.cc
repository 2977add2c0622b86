#include "core/buffer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace relayfs::core {

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // linux/mman.h, since 5.14; older glibc headers lack it
#endif

constexpr int kRequiredSeals = F_SEAL_SHRINK | F_SEAL_GROW;
// memfd_create's limit on a name: NAME_MAX less the "memfd:" prefix it adds.
constexpr size_t kMemfdNameMax = 255 - 6;

void init_header(ShmHeader* h, const Geometry& g, const Layout& l) {
  // The memfd is fresh and zero-filled; construct the atomics in place so their lifetime
  // begins properly, then fill the immutable part.
  new (h) ShmHeader{};
  h->magic = kShmMagic;
  h->version = kShmVersion;
  h->subbuf_size = g.subbuf_size;
  h->n_subbufs = g.n_subbufs;
  h->data_offset = l.data_offset;
  h->total_size = l.total_size;
  // Not started: a Producer's open() begins sub-buffer 0 through the subbuf_start hook.
  h->wpos.store(make_word(0, 0, kOffStopped), std::memory_order_relaxed);
}

}  // namespace

int Buffer::create(const Geometry& g, const char* name, Buffer* out) noexcept {
  const Layout l = Layout::of(g);
  // The name only labels the memfd (/proc/PID/fd, /proc/PID/maps). memfd_create refuses names
  // above 249 bytes with EINVAL, but a relay file's name may have 255: cut it.
  char label[kMemfdNameMax + 1] = "relayfs-buffer";
  if (name) {
    std::strncpy(label, name, kMemfdNameMax);
    label[kMemfdNameMax] = '\0';
  }
  UniqueFd fd(::memfd_create(label, MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return -errno;
  // A memfd is born mode 0777: anyone handed a read-only descriptor of it could reopen it
  // read-write through /proc/self/fd. Only the creator may reopen it; others get the access
  // of the descriptor they were given.
  if (::fchmod(fd.get(), 0600) != 0) return -errno;
  if (::ftruncate(fd.get(), static_cast<off_t>(l.total_size)) != 0) return -errno;
  if (::fcntl(fd.get(), F_ADD_SEALS, kRequiredSeals | F_SEAL_SEAL) != 0) return -errno;
  Mapping m;
  if (int rc = Mapping::map(fd.get(), l.total_size, PROT_READ | PROT_WRITE, &m); rc) return rc;
  init_header(reinterpret_cast<ShmHeader*>(m.bytes()), g, l);
  auto* meta = reinterpret_cast<SubbufMeta*>(m.bytes() + l.meta_offset);
  for (uint32_t i = 0; i < g.n_subbufs; ++i) new (&meta[i]) SubbufMeta{};
  out->fd_ = std::move(fd);
  out->map_ = std::move(m);
  out->geo_ = g;
  out->layout_ = l;
  return 0;
}

int Buffer::attach(UniqueFd fd, const Geometry& g, int prot, bool check_header,
                   Buffer* out) noexcept {
  if (!fd) return -EBADF;
  const Layout l = Layout::of(g);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return -errno;
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != l.total_size) return -EINVAL;
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0) return -errno;
  if ((seals & kRequiredSeals) != kRequiredSeals) return -EINVAL;
  Mapping m;
  if (int rc = Mapping::map(fd.get(), l.total_size, prot, &m); rc) return rc;
  if (check_header) {
    const auto* h = reinterpret_cast<const ShmHeader*>(m.bytes());
    if (h->magic != kShmMagic || h->version != kShmVersion || h->subbuf_size != g.subbuf_size ||
        h->n_subbufs != g.n_subbufs || h->data_offset != l.data_offset)
      return -EINVAL;
  }
  out->fd_ = std::move(fd);
  out->map_ = std::move(m);
  out->geo_ = g;
  out->layout_ = l;
  return 0;
}

int Buffer::populate() const noexcept {
  if (!map_.valid()) return -EBADF;
  // The mapping starts on a page (Mapping::map) and its length is a whole number of pages
  // (Layout::of), as madvise wants.
  if (::madvise(map_.get(), map_.size(), MADV_POPULATE_WRITE) == 0) return 0;
  // EINVAL: a kernel that does not know the advice (or a mapping it refuses, which a writable
  // shared memfd mapping is not): nothing was populated, and the pages come on first touch.
  return errno == EINVAL ? 0 : -errno;
}

}  // namespace relayfs::core
