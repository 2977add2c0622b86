#include "core/bell.h"

#include "core/doorbell.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <string_view>

namespace relayfs::core {

int arm_bell(BellPage& page, const ShmHeader& h) noexcept {
  // seq_cst: the Dekker pair of the producer's seq_cst commit add (or switch store, or close
  // store) followed by its seq_cst load of `armed` (Bells::ring): either our re-check, after
  // this, sees the sub-buffer complete, or the producer's load sees us armed. The same
  // argument as Consumer::arm_doorbell, for the same reason in one place for each side: a
  // commit without a locked instruction (issue 17) puts the asymmetric fence here.
  page.armed.store(1, std::memory_order_seq_cst);
  // The fence that orders the re-check after the store, and the membarrier a producer that
  // commits with no locked instruction needs (doorbell.h): the same as the daemon's arming.
  return order_arming(h);
}

int make_bell_page(UniqueFd* out) noexcept {
  UniqueFd fd(::memfd_create("relayfs-bell", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return -errno;
  // As a buffer's memfd (buffer.cc): nobody reopens it through /proc with more access.
  if (::fchmod(fd.get(), 0600) != 0) return -errno;
  if (::ftruncate(fd.get(), kBellPageSize) != 0) return -errno;
  // No holder can shrink it under another's mapping (SIGBUS) or grow it.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
    return -errno;
  *out = std::move(fd);  // a fresh memfd reads as zeros: disarmed, no fallback
  return 0;
}

int map_bell_page(int fd, Mapping* out) noexcept {
  // The seals first: only a memfd has them, and asking a memfd cannot block.
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0 || !(seals & F_SEAL_SHRINK)) return -EINVAL;
  struct stat st;
  if (::fstat(fd, &st) != 0 || st.st_size != static_cast<off_t>(kBellPageSize)) return -EINVAL;
  return Mapping::map(fd, kBellPageSize, PROT_READ | PROT_WRITE, out);
}

bool is_eventfd(int fd) noexcept {
  char self[48], link[64];
  // No std::string: the event thread calls this, and the daemon's loop, both may be short of
  // memory; a fixed buffer cannot fail.
  const int n0 = std::snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
  if (n0 <= 0 || static_cast<size_t>(n0) >= sizeof self) return false;
  const ssize_t n = ::readlink(self, link, sizeof link);
  return n > 0 && std::string_view(link, static_cast<size_t>(n)) == "anon_inode:[eventfd]";
}

int Bells::add(uint32_t id, UniqueFd page, UniqueFd efd) noexcept {
  if (id == 0 || !is_eventfd(efd.get())) return -EINVAL;
  Slot* free = nullptr;
  for (Slot& s : slots_) {
    const uint32_t have = s.id.load(std::memory_order_relaxed);  // only this thread stores ids
    if (have == id) return -EEXIST;
    if (have == 0 && !free) free = &s;
  }
  if (!free) return -ENOSPC;
  Mapping m;
  if (int rc = map_bell_page(page.get(), &m); rc) return rc;
  free->page = std::move(m);
  free->efd = std::move(efd);
  // release: a writer that loads this id (seq_cst, which includes acquire) sees the page and the
  // eventfd above. No writer reads them before: it reads a slot only after seeing its id.
  free->id.store(id, std::memory_order_seq_cst);
  live_.fetch_add(1, std::memory_order_relaxed);  // a hint: see ring()
  // The reader may have armed, re-checked and gone to sleep before we installed the bell, and a
  // sub-buffer completed in between rang nobody: wake it to look again (one spurious wake at
  // worst: the reader drains before it re-checks).
  const uint64_t one = 1;
  if (::write(free->efd.get(), &one, sizeof one) < 0) {
    // EAGAIN only, at a counter the reader has not read: it is awake already.
  }
  return 0;
}

void Bells::free_slot(Slot& s) noexcept {
  // seq_cst, with the writers' seq_cst count-then-load (ring): a writer either sees the id
  // gone, or is counted in `users` by the time we look, and we wait for it.
  s.id.store(0, std::memory_order_seq_cst);
  while (s.users.load(std::memory_order_seq_cst) != 0) ::sched_yield();
  s.page.reset();
  s.efd.reset();
  live_.fetch_sub(1, std::memory_order_relaxed);
}

void Bells::remove(uint32_t id) noexcept {
  if (id == 0) return;
  for (Slot& s : slots_)
    if (s.id.load(std::memory_order_relaxed) == id) free_slot(s);
}

void Bells::clear() noexcept {
  for (Slot& s : slots_)
    if (s.id.load(std::memory_order_relaxed) != 0) free_slot(s);
}

void Bells::ring() noexcept {
  // relaxed: a bell installed after this load was rung once by add() itself, so missing it
  // loses nothing.
  if (live_.load(std::memory_order_relaxed) == 0) return;
  for (Slot& s : slots_) {
    if (s.id.load(std::memory_order_relaxed) == 0) continue;  // same: add() rings the new one
    s.users.fetch_add(1, std::memory_order_seq_cst);          // see free_slot
    if (s.id.load(std::memory_order_seq_cst) != 0) {
      auto* page = reinterpret_cast<BellPage*>(s.page.bytes());
      // seq_cst load: the Dekker pair of arm_bell, after the caller's seq_cst commit add or
      // store. The exchange makes one write per arming, however many writers find it armed.
      if (page->armed.load(std::memory_order_seq_cst) != 0 &&
          page->armed.exchange(0, std::memory_order_acq_rel) != 0) {
        const uint64_t one = 1;
        if (::write(s.efd.get(), &one, sizeof one) < 0) {
          // EAGAIN only, at a counter of 2^64-2 the reader has not read: it is awake already.
        }
      }
    }
    s.users.fetch_sub(1, std::memory_order_release);  // our reads of the slot come before
  }
}

}  // namespace relayfs::core
