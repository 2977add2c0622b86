#include "core/bell.h"

#include "core/doorbell.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
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

namespace {

// The target of fd's /proc/self/fd link into buf (NUL-terminated), or an empty view. No
// std::string: the event thread calls this, and the daemon's loop, both may be short of memory;
// a fixed buffer cannot fail.
std::string_view fd_link(int fd, char (&buf)[64]) noexcept {
  char self[48];
  const int n0 = std::snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
  if (n0 <= 0 || static_cast<size_t>(n0) >= sizeof self) return {};
  const ssize_t n = ::readlink(self, buf, sizeof buf);
  if (n <= 0 || static_cast<size_t>(n) >= sizeof buf) return {};
  return std::string_view(buf, static_cast<size_t>(n));
}

}  // namespace

bool is_eventfd(int fd) noexcept {
  char buf[64];
  return fd_link(fd, buf) == "anon_inode:[eventfd]";
}

int make_bell_sockets(UniqueFd* reader_end, UniqueFd* ring_end) noexcept {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
  UniqueFd r(sv[0]), w(sv[1]);
  // The reader only receives: nothing it sends could reach the producer's or the daemon's
  // socket, which nobody reads.
  if (::shutdown(r.get(), SHUT_WR) != 0) return -errno;
  // The least buffer the kernel allows (it raises the value to its minimum): a few unread rings
  // fill it, which is plenty, since one wakes the reader, and the kernel memory a reader that
  // never drains pins stays small.
  const int small = 1;
  (void)::setsockopt(w.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  *reader_end = std::move(r);
  *ring_end = std::move(w);
  return 0;
}

bool is_bell_socket(int fd) noexcept {
  char buf[64];
  if (!fd_link(fd, buf).starts_with("socket:[")) return false;
  int v = 0;
  socklen_t len = sizeof v;
  if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &len) != 0 || v != AF_UNIX) return false;
  len = sizeof v;
  return ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) == 0 && v == SOCK_STREAM;
}

void ring_bell(int ring_end) noexcept {
  const char one = 1;
  if (::send(ring_end, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
    // EAGAIN: rings the reader has not read fill the buffer, so it is awake already. EPIPE,
    // ECONNRESET: the reader's socket is gone, and nobody waits on it.
  }
}

bool drain_bell(int reader_end) noexcept {
  // A bounded number of receives: the producer holds a ringing end, and could send as fast as we
  // receive (with its send buffer raised) to keep the reader here. Rings left over only make the
  // next poll return at once, and a ring means no more than "look".
  constexpr int kMaxReceives = 16;
  char rings[256];
  for (int i = 0; i < kMaxReceives; ++i) {
    const ssize_t n = ::recv(reader_end, rings, sizeof rings, MSG_DONTWAIT);
    if (n > 0) continue;
    if (n == 0) return false;  // every ringing socket closed or shut down
    if (errno == EINTR) continue;
    return errno == EAGAIN || errno == EWOULDBLOCK;
  }
  return true;  // still being rung
}

int Bells::add(uint32_t id, UniqueFd page, UniqueFd wake) noexcept {
  if (id == 0 || !is_bell_socket(wake.get())) return -EINVAL;
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
  free->wake = std::move(wake);
  // release: a writer that loads this id (seq_cst, which includes acquire) sees the page and the
  // socket above. No writer reads them before: it reads a slot only after seeing its id.
  free->id.store(id, std::memory_order_seq_cst);
  live_.fetch_add(1, std::memory_order_relaxed);  // a hint: see ring()
  // The reader may have armed, re-checked and gone to sleep before we installed the bell, and a
  // sub-buffer completed in between rang nobody: wake it to look again (one spurious wake at
  // worst: the reader drains before it re-checks).
  ring_bell(free->wake.get());
  return 0;
}

void Bells::free_slot(Slot& s) noexcept {
  // seq_cst, with the writers' seq_cst count-then-load (ring): a writer either sees the id
  // gone, or is counted in `users` by the time we look, and we wait for it.
  s.id.store(0, std::memory_order_seq_cst);
  while (s.users.load(std::memory_order_seq_cst) != 0) ::sched_yield();
  s.page.reset();
  s.wake.reset();
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
        ring_bell(s.wake.get());
      }
    }
    s.users.fetch_sub(1, std::memory_order_release);  // our reads of the slot come before
  }
}

}  // namespace relayfs::core
