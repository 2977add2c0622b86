// View: what a reader of one relay buffer reads of its shared control area, written once for
// every reader: the daemon's Consumer and librelayfs's mmap readers (relay_reader_next), which run
// in other processes than the producer. It answers the questions a reader asks of the writers'
// bookkeeping: where to go on from (the sub-buffers the writer lapped skipped), where a closed
// sub-buffer's data ends and whether all of it is committed, how much of the one being written is
// proven committed, and whether a copy just made is still the lap's own (the seqlock check).
//
// Trust: the geometry is the reader's own (it came with the descriptor, never from the shared
// area). The producer may write anything there at any moment, so every shared value is loaded
// once and checked, or only compared, before it bounds anything; loops have bounds of their own.
// A hostile producer yields -EIO, "nothing now" or a short count, never an access outside the
// mapping or a hang. A View writes nothing: it serves read-only mappings.
#pragma once

#include <atomic>
#include <cstdint>

#include "core/buffer.h"
#include "core/geometry.h"
#include "core/layout.h"

namespace relayfs::core {

// Has the writer begun reusing a sub-buffer's slot? kMaybe: a switch into it is being decided.
enum class Reuse { kNo, kYes, kMaybe };

class View {
 public:
  // buf must outlive the View; its geometry is trusted. Cheap to make: five words.
  explicit View(const Buffer& buf) noexcept
      : hdr_(buf.header()),
        meta_(buf.meta()),
        data_(buf.data()),
        size_(buf.geometry().subbuf_size),
        n_(buf.geometry().n_subbufs) {}

  uint32_t subbuf_size() const noexcept { return size_; }
  uint32_t n_subbufs() const noexcept { return n_; }
  const ShmHeader& header() const noexcept { return *hdr_; }
  // The bytes of the sub-buffer in slot (< n_subbufs()).
  const char* subbuf(uint32_t slot) const noexcept { return data_ + slot_offset(slot, size_); }

  // Sub-buffers the writer switched away from. acquire: the padding, commit and start_bytes of
  // each of them, and bytes_produced, stored before it moved, are visible.
  uint64_t produced() const noexcept { return hdr_->produced.load(std::memory_order_acquire); }

  // An inconsistency was found while the reader's position belonged to reset generation gen.
  // Returns 0 if a reset began since, which explains it, or -EIO: the control area is corrupt.
  int corrupt(uint32_t gen) const noexcept;

  // Where a reader whose next sub-buffer is seq goes on: seq itself, or, if the writer has begun
  // reusing its slot (overwrite mode), the oldest sub-buffer it has not (oldest_unlapped).
  // Returns 1 with *out filled (out->seq may be out->produced: the one being written), 0 while a
  // switch into seq's slot is undecided (look again later), or -EIO if the writer claims to have
  // produced less than seq (the caller asks corrupt()).
  struct Next {
    uint64_t produced;
    uint64_t seq;
  };
  int next(uint64_t seq, Next* out) const noexcept;

  // For sub-buffer seq, when the writer has switched away from `produced`: kNo if its bytes are
  // still the ones written in its lap, kYes if the writer has begun overwriting them, kMaybe if a
  // switch into its slot is being decided right now and did not settle in a few microseconds.
  Reuse reused(uint64_t seq, uint64_t produced) const noexcept;

  // Seqlock reader side: after copying bytes of sub-buffer seq with the position in reset
  // generation gen, true if they were its lap's own: no reset came and the slot is not reused.
  bool still_valid(uint64_t seq, uint32_t gen) const noexcept;

  // Where closed sub-buffer seq's data ends: subbuf_size minus its padding. Returns 0 with *end
  // filled, or -EIO if the padding lies beyond the sub-buffer.
  int data_end(uint64_t seq, uint32_t* end) const noexcept;

  // True if every byte of sub-buffer seq's lap is committed (its counter is a full lap).
  // acquire: the writers' bytes, released by their commits, are then visible.
  bool complete(uint64_t seq) const noexcept;

  // The longest prefix of sub-buffer seq proven committed now: the writers' own bound (`ready`)
  // and, when current (seq is the one being written), the reader's proof that nothing is in
  // flight (the commit count equals the reserved offset). Between 0 and subbuf_size. This is the
  // one definition of "committed" that bytes_produced rests on, for the daemon (st_size) and for
  // relay_buf_stats alike: a reserved record counts once it is committed, never before.
  uint32_t committed_prefix(uint64_t seq, bool current) const noexcept;

  // Bytes committed into the buffer so far: the closed sub-buffers' bytes (padding excluded) plus
  // the committed prefix of the one being written, or at least known_prefix of it if that one is
  // known_seq (what the reader proved of it before). Both are read as one state: a switch stores
  // the new closed total before it moves `produced`, holding the busy word, so a pair read
  // across it would count the closed sub-buffer twice; such a read is taken again. While a switch
  // stays busy (its writer was killed holding it), the closed total alone is returned: a count
  // that may be short, never long.
  uint64_t committed_bytes(uint64_t known_seq = ~uint64_t{0},
                           uint32_t known_prefix = 0) const noexcept;

  // How far writers reserved into sub-buffer seq, the one being written, if the position word
  // (or the offset at close) still says; 0 when it does not.
  uint32_t reserved_end(uint64_t seq) const noexcept;

  // bytes_produced where sub-buffer seq starts, as its slot says: the producer's value, not
  // validated (Consumer::start_of bounds it).
  uint64_t start_bytes(uint64_t seq) const noexcept {
    return meta_[slot_of(seq, n_)].start_bytes.load(std::memory_order_relaxed);
  }

  // True if no switch moved past `produced` since the caller loaded it: the position word is not
  // busy and `produced` reads the same. The caller's loads before this are ordered before it.
  bool settled(uint64_t produced) const noexcept;

 private:
  const ShmHeader* hdr_;
  const SubbufMeta* meta_;
  const char* data_;
  uint32_t size_;
  uint32_t n_;
};

}  // namespace relayfs::core
