// The shared-memory layout of one relay buffer, as seen by the producer process and by the
// daemon. It holds offsets and counters only, never pointers.
//
//   [ ShmHeader | SubbufMeta x n_subbufs | pad to page ][ data: n_subbufs * subbuf_size ]
//
// Trust: the producer writes almost everything here, so the consumer (daemon) reads every
// field through an atomic load and validates it before use (consumer.cc). The consumer keeps
// its own copy of the geometry and of its read position; the copies in shared memory are
// published for the producer and never read back by the consumer.
#pragma once

#include <relayfs/relay_fast.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace relayfs::core {

inline constexpr uint32_t kShmMagic = 0x52454c59;  // "RELY"
// 4: the consumer's record (ConsumerRecord), from which a new daemon resumes.
// 5: a sub-buffer's commit count is two counters (SubbufMeta::commit_cpu, the rseq commit), and
//    ShmHeader::fenced_commits asks who arms the doorbell for a membarrier.
inline constexpr uint32_t kShmVersion = 5;
inline constexpr size_t kCacheLine = 64;

// The position word: where the next record goes.
//   bits  0..31  offset inside the current sub-buffer, or a marker: kOffBusy (or a remote
//                claim's busy value), kOffClosed, kOffStopped
//   bits 32..47  index of the current sub-buffer (its slot, 0..n_subbufs-1)
//   bits 48..63  low 16 bits of the current sub-buffer's sequence number
// Writers reserve with one CAS on this word. kOffBusy means one writer is switching
// sub-buffers; kOffClosed means the producer closed the buffer; kOffStopped means the last
// switch was refused (no-overwrite buffer full, the
// kernel's "offset == subbuf_size + 1"). Both are above any subbuf_size, so the fast-path test
// "offset + len > subbuf_size" sends every writer to the slow path in those states.
inline constexpr uint32_t kOffClosed = 0xfffffffd;
inline constexpr uint32_t kOffBusy = 0xfffffffe;
inline constexpr uint32_t kOffStopped = RELAY_FAST_OFF_STOPPED;
// A switch claimed from outside the CPU a buffer is bound to (Producer::claim_word) is busy too,
// but each such claim stores an offset of its own from this range, above every sub-buffer size
// (geometry.h: at most 1 GiB). The claimer recognises its word after the rseq fence only if no
// other claim can have left the same value there meanwhile.
inline constexpr uint32_t kOffRemoteFirst = 0x80000000;
inline constexpr uint32_t kOffRemoteLast = 0xfffffffc;
inline constexpr bool off_busy(uint32_t off) {
  return off == kOffBusy || (off >= kOffRemoteFirst && off <= kOffRemoteLast);
}

inline constexpr uint64_t make_word(uint32_t slot, uint64_t seq, uint32_t off) {
  return (seq << 48) | (uint64_t{slot} << 32) | off;
}
// Decoded by relay_fast.h's rules, which the inline relay_write shares.
inline constexpr uint32_t word_off(uint64_t w) {
  return RELAY_FAST_WORD_OFF(w);
}
inline constexpr uint32_t word_slot(uint64_t w) {
  return RELAY_FAST_WORD_SLOT(w);
}
inline constexpr uint16_t word_seq(uint64_t w) {
  return static_cast<uint16_t>(w >> 48);
}

// The consumed count the consumer publishes carries the reset generation it belongs to:
//   bits 0..47 sub-buffers consumed, bits 48..63 low bits of ShmHeader::reset_gen.
// A producer that finds a tag other than the current generation treats the count as 0, so a
// value published just before a reset never passes for progress made after it.
inline constexpr uint64_t kConsumedMask = RELAY_FAST_CONSUMED_MASK;  // relay_fast.h: shared rule
inline constexpr uint64_t consumed_tag(uint32_t gen, uint64_t consumed) {
  return RELAY_FAST_CONSUMED_TAG(gen) | (consumed & kConsumedMask);
}
// The count a published value carries if it belongs to reset generation gen; a count published
// for another generation means nothing has been consumed since the reset: 0.
inline constexpr uint64_t consumed_count(uint64_t tagged, uint32_t gen) {
  return RELAY_FAST_CONSUMED_COUNT(tagged, gen);
}

// The consumer's whole position and counters, as one record: what a daemon started after
// another died (or was upgraded) resumes from (Consumer::resume). Written only by the consumer,
// into the record not in use, then made current by ShmHeader::record_seq: a consumer killed
// mid-write leaves the previous record whole. At least once (relay(7), "Daemon restarts"): it
// never counts as read what a reply still in flight carries; `inflight` says how many bytes the
// consumer handed out past it, which the next daemon delivers again and counts in
// `redelivered`. Bytes a splice reader's page cache took are past the position already (the page
// cache has them); `unproven` says how many of those no reader was shown to get, which the next
// daemon counts lost, as a close of the file would (lost_readahead_bytes).
struct ConsumerRecord {
  std::atomic<uint64_t> consumed;  // consumed_tag(gen, sub-buffers consumed)
  std::atomic<uint32_t> gen;       // the full reset generation the position belongs to
  std::atomic<uint32_t> read_off;  // bytes read inside sub-buffer `consumed`
  std::atomic<uint64_t> pos_bytes; // where that sub-buffer starts in the byte stream; bit 63:
                                   // only a lower bound (lapped, not yet settled)
  std::atomic<uint64_t> inflight;  // bytes handed to readers past this position, unconfirmed
  std::atomic<uint64_t> unproven;  // of bytes_consumed, those a page cache took and no reader
                                   // was shown to get (lost_readahead_bytes if the daemon dies)
  // The consumer's counters (stats.h), in this order.
  std::atomic<uint64_t> bytes_consumed;
  std::atomic<uint64_t> overruns;
  std::atomic<uint64_t> lost_uncommitted;
  std::atomic<uint64_t> lost_overrun_bytes;
  std::atomic<uint64_t> lost_reset_bytes;
  std::atomic<uint64_t> lost_readahead_bytes;
  std::atomic<uint64_t> lost_expired_bytes;
  std::atomic<uint64_t> redelivered_bytes;
};
inline constexpr uint64_t kPosPending = uint64_t{1} << 63;

struct ShmHeader {
  // Written once by the creator before the object is shared; informational for attachers.
  uint32_t magic;
  uint32_t version;
  uint32_t subbuf_size;
  uint32_t n_subbufs;
  uint64_t data_offset;
  uint64_t total_size;

  // Hot producer line: every reservation CASes it.
  alignas(kCacheLine) std::atomic<uint64_t> wpos;

  // Switch line: written by the one writer that holds the switch (wpos busy: off_busy), read by
  // the consumer. `produced` is stored with release after the closed sub-buffer's padding and
  // commit are in place, so a consumer that acquires it sees them.
  alignas(kCacheLine) std::atomic<uint64_t> produced;  // sub-buffers switched away from
  std::atomic<uint64_t> bytes_produced;                // sum of (subbuf_size - padding) over them
  std::atomic<uint32_t> prev_padding;                  // kernel's buf->prev_padding
  std::atomic<uint32_t> prev_slot;                     // where that padding belongs
  // Reset generation: odd while relay_reset is rewriting the control area.
  std::atomic<uint32_t> reset_gen;
  std::atomic<uint32_t> closed;     // set (release) after close_off: the producer closed it
  std::atomic<uint32_t> close_off;  // offset in the current sub-buffer when it was closed
  // bytes_produced when the last relay_reset began sub-buffer 0 again, written while reset_gen
  // is odd: where the new generation's stream starts, so the consumer can count what the reset
  // discarded unread (lost_reset_bytes).
  std::atomic<uint64_t> reset_bytes;

  // Loss counters: written on the slow path only.
  alignas(kCacheLine) std::atomic<uint64_t> lost_full;  // switch refused (buffer full)
  std::atomic<uint64_t> lost_too_big;                   // record larger than a sub-buffer
  std::atomic<uint64_t> lost_wrap;                      // next sub-buffer still being committed

  // Consumer line: written by the consumer only, read by producers. Kept apart from the producer
  // lines so a reader publishing progress does not steal the writers' cache lines.
  alignas(kCacheLine) std::atomic<uint64_t> consumed;  // consumed_tag(gen, sub-buffers)
  std::atomic<uint64_t> bytes_consumed;                // bytes handed to readers
  std::atomic<uint64_t> overruns;                      // sub-buffers lapped before they were read
  std::atomic<uint64_t> lost_uncommitted;              // bytes reserved but never committed
  std::atomic<uint64_t> lost_overrun_bytes;            // bytes of those lapped sub-buffers
  std::atomic<uint64_t> lost_reset_bytes;              // bytes a reset discarded unread
  std::atomic<uint64_t> lost_readahead_bytes;          // bytes a page cache took, undelivered
  std::atomic<uint64_t> lost_expired_bytes;            // bytes freed unread after the producer
  // Futex word: moves every time the consumer publishes progress. Blocking writers wait on it.
  std::atomic<uint32_t> progress;

  // The consumer's record: records[record_seq & 1] is current. release on record_seq: the
  // record's fields are written before it becomes current.
  alignas(kCacheLine) std::atomic<uint64_t> record_seq;
  ConsumerRecord records[2];

  // Doorbell: non-zero while a reader waits for data (kWakeRecord: any new record; kWakeSubbuf:
  // a sub-buffer boundary). Producers load it after each commit (a plain load on x86) and ring
  // the wake-up only when it asks for them.
  alignas(kCacheLine) std::atomic<uint32_t> waiters;
  // Writers of a blocking channel waiting for the consumer to free a sub-buffer: the consumer
  // wakes the `progress` futex only when this is non-zero.
  std::atomic<uint32_t> blocked;
  // Non-zero once the producer commits with no locked instruction (Producer::bind_cpu): its
  // commit no longer orders its store before its load of `waiters`, so whoever arms the doorbell
  // must issue membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) between arming and re-checking
  // (arm_doorbell, doorbell.h). A hint the producer writes: a false one costs the arming side one
  // system call per arming, never a loop.
  std::atomic<uint32_t> fenced_commits;
};

// What the offset off of a position word stands for, for every reader of it: kOffClosed means
// close_off once `closed` says close_off is written (acquire: pairs with Producer::close's
// release), and a close still being made (kOffBusy) before; any other value is itself. The one
// place kOffClosed is decoded. close_off is the producer's: a reader bounds it like any offset.
inline uint32_t decode_off(const ShmHeader& h, uint32_t off) noexcept {
  if (off != kOffClosed) return off;
  return h.closed.load(std::memory_order_acquire) != 0
             ? h.close_off.load(std::memory_order_relaxed)
             : kOffBusy;
}

inline constexpr uint32_t kWakeRecord = 1;  // wake on the next commit
inline constexpr uint32_t kWakeSubbuf = 2;  // wake when a sub-buffer is closed and complete

// Per-sub-buffer bookkeeping. The committed count of a slot (committed() below) counts bytes
// committed into it over its whole life: header bytes, records and the padding added when the
// sub-buffer closes. Every lap adds exactly subbuf_size, so the sub-buffer of lap L is complete
// when committed == (L + 1) * size. It is the sum of two counters, each with one kind of writer:
//   `commit_cpu` only rseq sections on the CPU the buffer is bound to write (a plain load, add,
//                store: Producer::commit, rseq::add_on_cpu); nothing else ever writes it but a
//                reset with no writer active;
//   `commit`     every other commit, with an atomic add: an unbound buffer's, a thread that
//                migrated between its reservation and its commit, the switch's padding and header
//                bytes (the switch may run on any CPU).
// Never both kinds on one word: an atomic add from another CPU landing between a section's load
// and store would be overwritten (lost update); the section is restarted only by what happens on
// its own CPU.
// Because the two are read one after the other, no writer knows the sum at the moment its own add
// lands: the reader (consumer, View) decides completeness from the sum, and producers that want
// to know (deliver, the sub-buffer waiter's ring) follow Producer::on_complete's rules.
// `ready` is a lower bound on the committed prefix of the sub-buffer being written, in the
// same units (lap base + offset); writers raise it when they find no reservation in flight.
// `start_bytes` is bytes_produced where the sub-buffer that next uses the slot starts, written
// by the switch that closes the one before it (before `produced` moves): a consumer the writer
// lapped learns from it how many bytes it skipped (lost_overrun_bytes).
struct SubbufMeta {
  std::atomic<uint64_t> commit;
  std::atomic<uint64_t> ready;
  std::atomic<uint32_t> padding;
  uint32_t unused;
  std::atomic<uint64_t> start_bytes;
  std::atomic<uint64_t> commit_cpu;
};

// The one rule for reading a slot's committed count: the sum of its two counters. acquire on
// each: the bytes of every commit counted are visible (the rseq store is a plain store, which
// has release semantics on x86; the atomic add releases). Each counter only grows within a reset
// generation, so a sum read at t1 (commit_cpu) and t2 (commit) lies between the true totals at t1
// and t2: it never exceeds what is committed, so equality with a lap's end proves that lap
// complete; and every commit it counts is a real commit of a record reserved before the load
// (the reader's proof in View::committed_prefix rests on that). In shared memory: values are the
// producer's, only compared (wrapping is harmless).
inline uint64_t committed(const SubbufMeta& m) noexcept {
  return m.commit_cpu.load(std::memory_order_acquire) + m.commit.load(std::memory_order_acquire);
}

static_assert(std::atomic<uint64_t>::is_always_lock_free, "shared atomics must be address-free");
static_assert(std::atomic<uint32_t>::is_always_lock_free, "shared atomics must be address-free");
static_assert(sizeof(SubbufMeta) == 40);
// The inline relay_write (relay_fast.h) sees a slot's bookkeeping as struct relay_fast_subbuf_meta:
// the same layout, field for field. A change here is a change of RELAY_FAST_VERSION.
static_assert(sizeof(SubbufMeta) == sizeof(relay_fast_subbuf_meta));
static_assert(offsetof(SubbufMeta, commit) == offsetof(relay_fast_subbuf_meta, commit));
static_assert(offsetof(SubbufMeta, ready) == offsetof(relay_fast_subbuf_meta, ready));
static_assert(offsetof(SubbufMeta, padding) == offsetof(relay_fast_subbuf_meta, padding));
static_assert(offsetof(SubbufMeta, start_bytes) == offsetof(relay_fast_subbuf_meta, start_bytes));
static_assert(offsetof(SubbufMeta, commit_cpu) == offsetof(relay_fast_subbuf_meta, commit_cpu));
static_assert(sizeof(std::atomic<uint64_t>) == sizeof(uint64_t) &&
              sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
static_assert(offsetof(ShmHeader, wpos) % kCacheLine == 0);
static_assert(offsetof(ShmHeader, produced) - offsetof(ShmHeader, wpos) >= kCacheLine);
static_assert(offsetof(ShmHeader, consumed) % kCacheLine == 0);
static_assert(offsetof(ShmHeader, waiters) % kCacheLine == 0);
static_assert(offsetof(ShmHeader, record_seq) % kCacheLine == 0);

}  // namespace relayfs::core
