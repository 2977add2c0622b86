// libFuzzer target: the daemon's consumer against a producer that writes whatever it likes into
// the shared buffer, at any moment.
//
// The input is a program. Its first bytes choose a geometry and a subbuf_start hook; then come
// operations, each one byte of opcode and its arguments:
//   - an honest producer (core::Producer) writes, reserves, commits, flushes, resets, closes;
//   - a hostile producer sets any control field (header, per-sub-buffer metadata) to a boundary
//     or arbitrary value, pokes raw bytes anywhere in the control area, or scribbles on data;
//   - the consumer is called: read (with and without one_subbuf), plan_read followed by more
//     operations *while the zero-copy read is in progress* and then finish_read or abort_read,
//     data_available, subbuf_ready, consume_upto, subbufs_consumed, stats, bytes_produced,
//     at_record_boundary, finalize, drained, arm_doorbell.
// Once the control area has been corrupted the honest producer stops (it trusts its own shared
// memory, as the library does; it is not what is under test).
//
// What must hold, besides "no crash, no hang (-timeout), no access outside the buffer":
//   - the buffer is mapped between guard pages (core::Mapping), and the slack inside the mapping
//     that holds no field or data (after the header, after the metadata, after the data) is
//     poisoned for AddressSanitizer, so a stray access inside the mapping is caught too;
//   - read() returns -EIO or 0..count; plan_read()'s spans lie inside the data area, number at
//     most max_iov, and add up to what it returns;
//   - stats() reports the consumer's own geometry whatever the control area says;
//   - while only the honest producer has written: no -EIO, no corruption counted, bytes consumed
//     never exceed bytes produced, and (no-overwrite mode without header bytes, resets or skips)
//     the bytes read are exactly the stream of records written, in order, none twice.
#include <fuzzer/FuzzedDataProvider.h>
#include <sanitizer/asan_interface.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/consumer.h"
#include "core/layout.h"
#include "core/producer.h"

using namespace relayfs;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "consumer_fuzz: %s\n", what);
  std::abort();
}

// RELAYFS_FUZZ_TRACE=1 prints every operation (to read a reproducer).
bool trace() {
  static const bool on = std::getenv("RELAYFS_FUZZ_TRACE") != nullptr;
  return on;
}

// subbuf_start hooks: the spec's two modes, each with and without a 4-byte header.
struct Hook {
  bool overwrite = false;
  uint32_t header = 0;
  static bool start(void* ctx, core::Producer& p, void* subbuf, void* prev, uint32_t pad) {
    auto* h = static_cast<Hook*>(ctx);
    (void)subbuf;
    if (h->header >= 4 && prev && p.subbuf_size() >= 4) std::memcpy(prev, &pad, 4);
    if (!h->overwrite && p.buf_full()) return false;
    if (h->header) p.subbuf_start_reserve(h->header);
    return true;
  }
};

// One field of the control area: where it is and how wide.
struct Field {
  size_t off;
  size_t width;
};

std::vector<Field> fields_of(const core::Buffer& b) {
  using core::ShmHeader;
  std::vector<Field> f = {
      {offsetof(ShmHeader, magic), 4},
      {offsetof(ShmHeader, version), 4},
      {offsetof(ShmHeader, subbuf_size), 4},
      {offsetof(ShmHeader, n_subbufs), 4},
      {offsetof(ShmHeader, data_offset), 8},
      {offsetof(ShmHeader, total_size), 8},
      {offsetof(ShmHeader, wpos), 8},
      {offsetof(ShmHeader, produced), 8},
      {offsetof(ShmHeader, bytes_produced), 8},
      {offsetof(ShmHeader, prev_padding), 4},
      {offsetof(ShmHeader, prev_slot), 4},
      {offsetof(ShmHeader, reset_gen), 4},
      {offsetof(ShmHeader, closed), 4},
      {offsetof(ShmHeader, close_off), 4},
      {offsetof(ShmHeader, reset_bytes), 8},
      {offsetof(ShmHeader, lost_full), 8},
      {offsetof(ShmHeader, lost_too_big), 8},
      {offsetof(ShmHeader, lost_wrap), 8},
      {offsetof(ShmHeader, consumed), 8},
      {offsetof(ShmHeader, bytes_consumed), 8},
      {offsetof(ShmHeader, overruns), 8},
      {offsetof(ShmHeader, lost_uncommitted), 8},
      {offsetof(ShmHeader, lost_overrun_bytes), 8},
      {offsetof(ShmHeader, lost_reset_bytes), 8},
      {offsetof(ShmHeader, lost_readahead_bytes), 8},
      {offsetof(ShmHeader, lost_expired_bytes), 8},
      {offsetof(ShmHeader, progress), 4},
      {offsetof(ShmHeader, waiters), 4},
      {offsetof(ShmHeader, blocked), 4},
      {offsetof(ShmHeader, fenced_commits), 4},
  };
  const size_t meta = b.layout().meta_offset;
  for (uint32_t i = 0; i < b.geometry().n_subbufs; ++i) {
    const size_t at = meta + i * sizeof(core::SubbufMeta);
    f.push_back({at + offsetof(core::SubbufMeta, commit), 8});
    f.push_back({at + offsetof(core::SubbufMeta, commit_cpu), 8});
    f.push_back({at + offsetof(core::SubbufMeta, ready), 8});
    f.push_back({at + offsetof(core::SubbufMeta, padding), 4});
    f.push_back({at + offsetof(core::SubbufMeta, start_bytes), 8});
  }
  return f;
}

// A value a hostile producer might store: boundaries of this geometry, plausible position words
// and tags, or anything at all.
uint64_t hostile_value(FuzzedDataProvider& in, uint32_t size, uint32_t n) {
  const uint64_t x = in.ConsumeIntegral<uint64_t>();
  switch (in.ConsumeIntegralInRange<int>(0, 7)) {
    case 0: {
      const uint64_t v[] = {0,
                            1,
                            size - 1ull,
                            size,
                            size + 1ull,
                            n,
                            n + 1ull,
                            uint64_t{size} * n,
                            core::kOffClosed,
                            core::kOffBusy,
                            core::kOffStopped,
                            0x7fffffff,
                            ~uint64_t{0}};
      return v[x % (sizeof v / sizeof v[0])];
    }
    case 1:  // a position word: slot, sequence and offset near the real ones
      return core::make_word(static_cast<uint32_t>(x % (n + 2)), (x >> 8) % 64,
                             static_cast<uint32_t>((x >> 16) % (size + 3)));
    case 2:
      // The markers, and busy values of remote claims (the range below kOffClosed).
      return core::make_word(static_cast<uint32_t>(x % (n + 1)), (x >> 8) % 64,
                             (x >> 16) % 4 == 3
                                 ? core::kOffRemoteFirst + static_cast<uint32_t>(x >> 32) %
                                                               (core::kOffRemoteLast - core::kOffRemoteFirst + 1)
                                 : core::kOffClosed - static_cast<uint32_t>((x >> 16) % 3));
    case 3:  // a commit or ready count: some lap base plus an offset
      return ((x >> 8) % 64) * size + (x & 0xff) % (size + 2);
    case 4:
      return core::consumed_tag(static_cast<uint32_t>(x >> 48), x % 256);
    case 5:
      return x % 256;
    default:
      return x;
  }
}

// Opcodes: 0..10 act as a producer (honest or hostile), 11.. call the consumer.
constexpr int kOps = 22;
constexpr int kFirstConsumerOp = 11;

class Run {
 public:
  Run(uint32_t size, uint32_t n, Hook hook) : hook_(hook) {
    core::Geometry g;
    if (core::make_geometry(size, n, &g) != 0) fail("a geometry inside the limits was refused");
    if (core::Buffer::create(g, "relayfs-fuzz", &buf_) != 0) fail("Buffer::create failed");
    data_ = buf_.data();
    data_size_ = g.data_size();
    const core::Layout& l = buf_.layout();
    meta_end_ = l.meta_offset + uint64_t{n} * sizeof(core::SubbufMeta);
    core::ProducerHooks hk;
    if (hook_.overwrite || hook_.header) {
      hk.subbuf_start = &Hook::start;
      hk.ctx = &hook_;
      hk.overwrite = hook_.overwrite;
    }
    prod_ = std::make_unique<core::Producer>(buf_, hk);
    cons_ = std::make_unique<core::Consumer>(buf_);
    fields_ = fields_of(buf_);
    check_stream_ = !hook_.overwrite && hook_.header == 0;
    poison(true);
  }
  ~Run() { poison(false); }

  void step(FuzzedDataProvider& in, int depth = 0) {
    const int op = in.ConsumeIntegralInRange<int>(0, kOps - 1);
    // While a zero-copy read is in progress only producers act: the daemon makes no other call
    // on the consumer until finish_read or abort_read (it holds the buffer's lock).
    if (in_plan_ && op >= kFirstConsumerOp) return;
    if (trace() && !in_plan_) {  // stats() is a consumer call: none during a plan
      const core::BufferStats st = cons_->stats();
      std::fprintf(stderr, "op %d%s  [produced %llu B / %llu sb, consumed %llu B / %llu sb]\n", op,
                   depth ? " (during a plan)" : "",
                   static_cast<unsigned long long>(st.bytes_produced),
                   static_cast<unsigned long long>(st.subbufs_produced),
                   static_cast<unsigned long long>(st.bytes_consumed),
                   static_cast<unsigned long long>(st.subbufs_consumed));
    }
    switch (op) {
      case 0:
      case 1:
        honest_write(in.ConsumeIntegralInRange<uint32_t>(1, 2 * size() + 1));
        break;
      case 2:
        honest_reserve(in.ConsumeIntegralInRange<uint32_t>(1, size() + 1));
        break;
      case 3:
        honest_commit(in.ConsumeIntegral<uint8_t>());
        break;
      case 4:
        if (!corrupted_) (void)prod_->flush();
        break;
      case 5:
        // Not after close: relay_close frees the channel, so no reset can follow it.
        if (!corrupted_ && pending_.empty() && !closed_) {
          prod_->reset();
          check_stream_ = false;  // a reset discards unread data
        }
        break;
      case 6:
        if (!corrupted_) {
          prod_->close();
          closed_ = true;
        }
        break;
      case 7:
      case 8: {  // a hostile producer sets one control field
        const Field& f = fields_[in.ConsumeIntegralInRange<size_t>(0, fields_.size() - 1)];
        const uint64_t v = hostile_value(in, size(), n());
        std::memcpy(control() + f.off, &v, f.width);  // little-endian: the low bytes
        corrupted_ = true;
        break;
      }
      case 9: {  // raw bytes anywhere in the header or the metadata
        const bool meta = in.ConsumeBool();
        const size_t lo = meta ? buf_.layout().meta_offset : 0;
        const size_t hi = meta ? meta_end_ : sizeof(core::ShmHeader);
        const size_t at = in.ConsumeIntegralInRange<size_t>(lo, hi - 1);
        const auto bytes = in.ConsumeBytes<char>(std::min<size_t>(hi - at, 16));
        if (!bytes.empty()) std::memcpy(control() + at, bytes.data(), bytes.size());
        corrupted_ = true;
        break;
      }
      case 10: {  // scribbles on data: legal for the control area, garbage for readers
        const size_t at = in.ConsumeIntegralInRange<size_t>(0, data_size_ - 1);
        const auto bytes = in.ConsumeBytes<char>(std::min<size_t>(data_size_ - at, 32));
        if (!bytes.empty()) std::memcpy(data_ + at, bytes.data(), bytes.size());
        check_stream_ = false;
        break;
      }
      case 11:
      case 12:
        read(in.ConsumeIntegralInRange<size_t>(1, 3 * data_size_ + 2), in.ConsumeBool());
        break;
      case 13:
        if (depth == 0) plan_read(in);
        break;
      case 14:
        (void)cons_->data_available();
        (void)cons_->subbuf_ready();
        (void)cons_->at_record_boundary();
        (void)cons_->producer_closed();
        break;
      case 15: {
        const uint32_t gen = in.ConsumeIntegral<uint32_t>();
        const uint64_t seq = in.ConsumeIntegralInRange<uint64_t>(0, 4 * n() + 4);
        const int rc = cons_->consume_upto(gen, seq);
        if (rc != 0 && rc != -ESTALE && rc != -EIO) fail("consume_upto: undocumented code");
        if (rc == -EIO && !corrupted_) fail("consume_upto: -EIO from an honest producer");
        if (seq != 0) check_stream_ = false;
        break;
      }
      case 16: {
        const uint64_t k = in.ConsumeIntegralInRange<uint64_t>(0, 2 * n() + 1);
        const int rc = cons_->subbufs_consumed(k);
        if (rc != 0 && rc != -EINVAL && rc != -EIO) fail("subbufs_consumed: undocumented code");
        if (rc == -EINVAL && k != 0) fail("subbufs_consumed: -EINVAL for n > 0");
        if (rc == -EIO && !corrupted_) fail("subbufs_consumed: -EIO from an honest producer");
        if (k != 0) check_stream_ = false;
        break;
      }
      case 17:
        stats();
        break;
      case 18:
        // The daemon finalizes once the producer closed (or died); a producer that died with
        // reservations in flight loses them, counted, so the stream check stops there.
        if (closed_ || corrupted_) {
          if (!pending_.empty()) check_stream_ = false;
          cons_->finalize();
          (void)cons_->drained();
        }
        break;
      case 19:
        cons_->arm_doorbell(in.ConsumeBool());
        break;
      case 20:  // -o orphan_timeout: what is left goes, counted (only once finalized)
        if (cons_->expire() != 0) check_stream_ = false;
        break;
      case 21:  // a page cache took bytes that no reader was shown to get
        cons_->readahead_lost(in.ConsumeIntegralInRange<uint64_t>(0, 2 * size()));
        break;
    }
  }

  void stats() {
    const core::BufferStats st = cons_->stats();
    if (st.subbuf_size != size() || st.n_subbufs != n())
      fail("stats report a geometry other than the consumer's own");
    if (!corrupted_) {
      if (st.corrupt != 0) fail("corruption counted with an honest producer");
      if (st.bytes_consumed > st.bytes_produced) fail("more bytes consumed than produced");
      const uint64_t lost = st.lost_uncommitted + st.lost_overrun_bytes + st.lost_reset_bytes +
                            st.lost_readahead_bytes + st.lost_expired_bytes;
      if (st.bytes_produced != st.bytes_consumed + st.bytes_unread + lost)
        fail("the books do not balance with an honest producer");
    }
  }

 private:
  uint32_t size() const { return buf_.geometry().subbuf_size; }
  uint32_t n() const { return buf_.geometry().n_subbufs; }
  char* control() const { return reinterpret_cast<char*>(buf_.header()); }

  // Poisons (or unpoisons) the bytes of the mapping that belong to nothing.
  void poison(bool on) {
    const core::Layout& l = buf_.layout();
    auto region = [&](uint64_t from, uint64_t to) {
      if (to <= from) return;
      if (on)
        ASAN_POISON_MEMORY_REGION(control() + from, to - from);
      else
        ASAN_UNPOISON_MEMORY_REGION(control() + from, to - from);
    };
    region(sizeof(core::ShmHeader), l.meta_offset);
    region(meta_end_, l.data_offset);
    region(l.data_offset + data_size_, l.total_size);
  }

  // Each record is filled with one byte derived from its number, so a record read twice, out of
  // order or torn shows in the stream check.
  std::string record(uint32_t len) {
    const char c = static_cast<char>('A' + records_ % 53);
    ++records_;
    return std::string(len, c);
  }

  void honest_write(uint32_t len) {
    if (corrupted_) return;
    const std::string r = record(len);
    if (prod_->write(r.data(), r.size()) == 0) written_ += r;
  }

  void honest_reserve(uint32_t len) {
    if (corrupted_ || pending_.size() >= 4) return;
    core::Reservation res;
    const std::string r = record(len);
    if (prod_->reserve(len, &res) != 0) return;
    std::memcpy(res.ptr, r.data(), r.size());  // filled now, published at the commit
    written_ += r;
    pending_.push_back(res);
  }

  void honest_commit(uint8_t which) {
    if (corrupted_ || pending_.empty()) return;
    const size_t i = which % pending_.size();
    prod_->commit(pending_[i]);
    pending_.erase(pending_.begin() + static_cast<ptrdiff_t>(i));
  }

  void delivered(const char* p, size_t len) {
    if (!check_stream_ || corrupted_) return;
    if (read_.size() + len > written_.size() ||
        std::memcmp(written_.data() + read_.size(), p, len) != 0)
      fail("an honest stream was read with bytes lost, repeated, reordered or torn");
    read_.append(p, len);
  }

  void read(size_t count, bool one_subbuf) {
    std::vector<char> out(count);  // heap: ASan sees a copy past count
    const ssize_t got = cons_->read(out.data(), count, one_subbuf);
    if (got == -EIO) {
      if (!corrupted_) fail("read: -EIO from an honest producer");
      return;
    }
    if (got < 0 || static_cast<size_t>(got) > count) fail("read: a count outside 0..count");
    delivered(out.data(), static_cast<size_t>(got));
  }

  // A zero-copy read: spans are planned, then the producer (honest or not) goes on while they
  // are being delivered, then the read is finished or abandoned.
  void plan_read(FuzzedDataProvider& in) {
    const size_t count = in.ConsumeIntegralInRange<size_t>(1, 3 * data_size_ + 2);
    const int max_iov = in.ConsumeIntegralInRange<int>(1, 8);
    iovec iov[8];
    int n_iov = -1;
    const ssize_t got = cons_->plan_read(iov, max_iov, count, &n_iov);
    if (got == -EIO) {
      if (!corrupted_) fail("plan_read: -EIO from an honest producer");
      if (n_iov != 0) fail("plan_read: spans with -EIO");
      return;
    }
    if (got < 0 || static_cast<size_t>(got) > count) fail("plan_read: a count outside 0..count");
    if (n_iov < 0 || n_iov > max_iov) fail("plan_read: more spans than asked for");
    size_t total = 0;
    for (int i = 0; i < n_iov; ++i) {
      const char* b = static_cast<const char*>(iov[i].iov_base);
      if (b < data_ || iov[i].iov_len > data_size_ || b + iov[i].iov_len > data_ + data_size_)
        fail("plan_read: a span outside the data area");
      total += iov[i].iov_len;
    }
    if (total != static_cast<size_t>(got)) fail("plan_read: spans do not add up to the count");
    if (got == 0) return;  // finished already
    // Copy what the reply would carry now: the bytes are the reader's from here on.
    std::string snapshot;
    for (int i = 0; i < n_iov; ++i)
      snapshot.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    in_plan_ = true;
    const int during = in.ConsumeIntegralInRange<int>(0, 6);
    for (int i = 0; i < during && in.remaining_bytes(); ++i) step(in, 1);
    in_plan_ = false;
    if (in.ConsumeBool()) {
      // In no-overwrite mode the writer cannot have reused planned bytes: what the reply
      // carries now is what was planned (unless the data area was scribbled on).
      std::string now;
      for (int i = 0; i < n_iov; ++i)
        now.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
      if (check_stream_ && !corrupted_ && now != snapshot)
        fail("planned bytes changed under a zero-copy read of an honest no-overwrite buffer");
      cons_->finish_read();
      delivered(now.data(), now.size());
    } else {
      cons_->abort_read();
    }
  }

  Hook hook_;
  core::Buffer buf_;
  char* data_ = nullptr;
  uint64_t data_size_ = 0;
  uint64_t meta_end_ = 0;
  std::unique_ptr<core::Producer> prod_;
  std::unique_ptr<core::Consumer> cons_;
  std::vector<Field> fields_;
  std::vector<core::Reservation> pending_;
  bool corrupted_ = false;
  bool closed_ = false;
  bool in_plan_ = false;
  bool check_stream_ = false;
  uint64_t records_ = 0;
  std::string written_, read_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  // Small geometries reach wraps, laps and full buffers in a few operations; a few larger ones
  // (page-sized and odd) keep the page rounding of the data area in view.
  const uint8_t s = in.ConsumeIntegral<uint8_t>();
  static const uint32_t kLarge[] = {4095, 4096, 4097, 65536};
  const uint32_t subbuf = s < 248 ? 1 + s % 96 : kLarge[s % 4];
  const uint32_t n = 1 + in.ConsumeIntegral<uint8_t>() % 8;
  const uint8_t h = in.ConsumeIntegral<uint8_t>();
  Hook hook{(h & 1) != 0, (h & 2) ? 4u : 0u};
  Run run(subbuf, n, hook);
  for (int ops = 0; ops < 512 && in.remaining_bytes(); ++ops) run.step(in);
  run.stats();
  return 0;
}
