// A reader's bell: the one-hop wake-up of an mmap reader (relay_reader_open).
//
// The daemon makes, for each mmap reader, a connected pair of Unix stream sockets and a one-page
// sealed memfd (BellPage). The reader gets the page and one socket, which it can only receive
// on; the buffer's producer gets the page and the other socket, which the daemon keeps too. The
// reader arms the page (arm_bell) before it sleeps in poll(); the producer, where a whole
// sub-buffer can become readable (Producer::wake_readers: a sub-buffer completes, a switch ends,
// the buffer closes), finds it armed, disarms it and sends a byte: one system call, no daemon on
// the way.
//
// Trust: the page is shared by three processes, and each may be hostile to the others. Nobody
// derives an address or a size from it: `armed` only decides whether the producer rings the
// reader's own socket (a reader that keeps re-arming costs its producer one send per
// sub-buffer, at most kMaxBells of them), and `fallback` only sends the reader back to the FUSE
// file path, which works without the bell (a forged fallback costs the reader speed, nothing
// else). The page is sealed against shrinking, so no holder can make another's access fault.
//
// Why sockets and not an eventfd (as until protocol 6): every holder of an eventfd shares one
// open file description, so any of them can clear its O_NONBLOCK and raise its counter to the
// top, after which every write to it blocks (and an eventfd refuses RWF_NOWAIT writes). A reader
// could so hang its producer inside relay_write, and the daemon (ReaderBell::fall_back). Not a
// pipe either: a write to a pipe whose reader is gone raises SIGPIPE, which would kill a
// producer whose reader exited. Every ring here is send(MSG_DONTWAIT | MSG_NOSIGNAL) and every
// drain recv(MSG_DONTWAIT), which no flag another holder sets can make block, and which raise
// no signal; the reader's socket is shut down for sending before the reader gets it. A reader
// that never drains fills the socket's buffer: the rings after that fail with EAGAIN, and the
// reader is awake already.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/fd.h"
#include "core/layout.h"
#include "core/mapping.h"

namespace relayfs::core {

struct BellPage {
  // 1: the reader waits for a whole sub-buffer. Set by the reader (arm_bell), exchanged to 0 by
  // the producer that rings.
  std::atomic<uint32_t> armed;
  // 1: the daemon finalized the channel (its producer closed or died): the reader stops using
  // the bell and polls the relay file again, which reports the rest (POLLIN, then POLLERR).
  std::atomic<uint32_t> fallback;
};
inline constexpr size_t kBellPageSize = 4096;
static_assert(sizeof(BellPage) <= kBellPageSize);
static_assert(std::atomic<uint32_t>::is_always_lock_free, "shared atomics must be address-free");

// Bells one buffer hands out at most; readers past it get none and wake through the FUSE file.
// Bounds the daemon's descriptors per buffer and what a producer's writers scan per sub-buffer.
inline constexpr uint32_t kMaxBells = 16;

// The reader's side: the one place a reader arms its bell. The caller drains its socket before
// and re-checks for a whole sub-buffer after, and sleeps only if there is none: then either the
// re-check sees the sub-buffer or the producer sees the arming (see the definition).
// h is the buffer the bell is for. Returns 0, or -errno (order_arming, doorbell.h): then the
// arming is not proven against a racing commit and the caller must not sleep on the bell.
int arm_bell(BellPage& page, const ShmHeader& h) noexcept;

// The daemon's side: a new page, sealed (no shrink, no grow, no more seals), zeroed. Returns 0
// or -errno.
int make_bell_page(UniqueFd* out) noexcept;

// Maps a bell page received from another process, after checking that it is one: a memfd of
// exactly kBellPageSize bytes that can no longer shrink. Returns 0, -EINVAL (not such a page) or
// -errno of mmap.
int map_bell_page(int fd, Mapping* out) noexcept;

// Whether fd is an eventfd. Reads /proc/self/fd, never the file: nothing asked of a descriptor
// another process passed can block.
bool is_eventfd(int fd) noexcept;

// The daemon's side: a bell's sockets, close-on-exec, each buffer as small as the kernel
// allows. *reader_end is shut down for sending: whoever holds it can only receive rings.
// Returns 0 or -errno.
int make_bell_sockets(UniqueFd* reader_end, UniqueFd* ring_end) noexcept;
// Whether fd is a Unix stream socket: what a bell's holder checks of the descriptor it was
// passed. Nothing asked of it can block (/proc/self/fd, getsockopt).
bool is_bell_socket(int fd) noexcept;
// Rings the bell whose ringing socket is fd: one byte, never blocking and raising no signal,
// whatever another holder did to the descriptor. EAGAIN (a full buffer) means the reader has
// rings it has not read: it is awake already; EPIPE, that the reader went away. Async-signal-safe.
void ring_bell(int ring_end) noexcept;
// Drains the rings from the bell whose reader's socket is fd, never blocking, in a bounded
// number of receives: a ringing end that keeps sending cannot hold the reader (what is left
// wakes its next poll). Returns false if every ringing end is gone (end of file): the bell will
// not ring again.
bool drain_bell(int reader_end) noexcept;

// The producer's side: the bells of one buffer's mmap readers, installed by the client's event
// thread (add, remove, clear) while any writer thread rings them (ring). No lock: a writer
// counts itself in a slot (`users`) before it looks at the slot's id, and a remover clears the
// id before it waits for the count to reach 0, so one of the two sees the other (both seq_cst)
// and nothing is freed under a writer.
class Bells {
 public:
  Bells() = default;
  Bells(const Bells&) = delete;
  Bells& operator=(const Bells&) = delete;

  // Installs bell `id` (non-zero): the page and the ringing socket, checked (map_bell_page,
  // is_bell_socket), then rings it once, so a reader that armed before the bell was installed
  // looks again. Event thread. Returns 0, -EINVAL (id 0, or not a page and a socket), -EEXIST
  // (id taken), -ENOSPC (kMaxBells installed) or -errno of mmap. On failure the descriptors
  // close.
  int add(uint32_t id, UniqueFd page, UniqueFd wake) noexcept;
  // Uninstalls bell `id` (its reader went away), waiting for writers that ring it. Event thread.
  // Unknown ids are ignored.
  void remove(uint32_t id) noexcept;
  // Uninstalls every bell (the daemon that handed them out is gone). Event thread.
  void clear() noexcept;
  // Rings every installed bell that is armed. Any thread, async-signal-safe.
  void ring() noexcept;
  // How many are installed (for tests).
  uint32_t size() const noexcept { return live_.load(std::memory_order_relaxed); }

 private:
  struct Slot {
    std::atomic<uint32_t> id{0};     // 0: free
    std::atomic<uint32_t> users{0};  // writers looking at this slot now
    Mapping page;                    // written by the event thread while id == 0 and users == 0
    UniqueFd wake;                   // the ringing socket
  };
  void free_slot(Slot& s) noexcept;

  Slot slots_[kMaxBells];
  std::atomic<uint32_t> live_{0};  // installed bells: writers skip the scan when there are none
};

}  // namespace relayfs::core
