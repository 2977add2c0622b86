// Writes the seed corpora of the fuzz targets: `fuzz-seeds DIR` fills DIR/protocol and
// DIR/consumer (scripts/fuzz --seeds regenerates fuzz/corpus with it). Deterministic: the same
// program writes the same files, so the committed corpus can be checked against it.
//
// protocol: one valid message of every type, from the real encoders, and edge cases (longest
// name, bad names, unknown flags and mode bits, reserved words set, truncated and padded
// payloads, lying lengths, bad magic and version, unknown types, oversized length).
// consumer: programs for consumer_fuzz, written through the same FuzzedDataProvider conventions
// the target reads them with: honest streams in every mode, zero-copy reads with writes in
// between, resets, closes and finalize, and each control field corrupted mid-stream.
#include <sys/stat.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "proto/protocol.h"

using namespace relayfs::proto;

namespace {

std::string g_dir;
int g_files = 0;

void put(const std::string& sub, const std::string& name, const std::vector<char>& bytes) {
  const std::string path = g_dir + "/" + sub + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::exit(1);
  }
  ++g_files;
}

void set_header(std::vector<char>& m, const Header& h) {
  std::memcpy(m.data(), &h, sizeof h);
}
Header header_of(const std::vector<char>& m) {
  Header h;
  std::memcpy(&h, m.data(), sizeof h);
  return h;
}

void protocol_seeds() {
  const std::string d = "protocol";
  put(d, "open", encode(OpenRequest{1, 4096, 8, 0400, 0, "cpu"}, 1));
  put(d, "open-global-overwrite",
      encode(OpenRequest{1, 64, 2, 0640, kFlagGlobal | kFlagOverwrite, "g"}, 2));
  put(d, "open-blocking-hook",
      encode(OpenRequest{7, 1, 1, 0, kFlagBlocking | kFlagHookMode, "x"}, 3));
  put(d, "open-name-255", encode(OpenRequest{1, 4096, 4, 0, 0, std::string(255, 'n')}, 4));
  put(d, "open-name-256", encode(OpenRequest{1, 4096, 4, 0, 0, std::string(256, 'n')}, 5));
  put(d, "open-name-empty", encode(OpenRequest{1, 4096, 4, 0, 0, ""}, 6));
  put(d, "open-name-dot", encode(OpenRequest{1, 4096, 4, 0, 0, "."}, 7));
  put(d, "open-name-dotdot", encode(OpenRequest{1, 4096, 4, 0, 0, ".."}, 8));
  put(d, "open-name-slash", encode(OpenRequest{1, 4096, 4, 0, 0, "a/b"}, 9));
  put(d, "open-name-newline", encode(OpenRequest{1, 4096, 4, 0, 0, "a\nb"}, 10));
  put(d, "open-name-nul", encode(OpenRequest{1, 4096, 4, 0, 0, std::string("a\0b", 3)}, 11));
  put(d, "open-name-utf8", encode(OpenRequest{1, 4096, 4, 0, 0, "caf\xc3\xa9"}, 12));
  put(d, "open-flags-unknown", encode(OpenRequest{1, 4096, 4, 0, 0x80000000u, "f"}, 13));
  put(d, "open-mode-high", encode(OpenRequest{1, 4096, 4, 0170000, 0, "m"}, 14));
  put(d, "open-geometry-zero", encode(OpenRequest{1, 0, 0, 0, 0, "z"}, 15));
  put(d, "open-geometry-huge", encode(OpenRequest{1, 0xffffffffu, 0xffffffffu, 0, 0, "h"}, 16));
  {
    auto m = encode(OpenRequest{1, 4096, 4, 0, 0, "r"}, 17);
    m[sizeof(Header) + 28] = 1;  // the reserved word
    put(d, "open-reserved-set", m);
    auto lie = encode(OpenRequest{1, 4096, 4, 0, 0, "len"}, 18);
    const uint32_t big = 0xffffffffu;  // name_len beyond the payload
    std::memcpy(lie.data() + sizeof(Header) + 24, &big, 4);
    put(d, "open-name-len-lies", lie);
    auto cut = encode(OpenRequest{1, 4096, 4, 0, 0, "cut"}, 19);
    cut.resize(sizeof(Header) + 20);
    Header h = header_of(cut);
    h.length = 20;
    set_header(cut, h);
    put(d, "open-truncated", cut);
  }
  put(d, "open-reply", encode(OpenReply{0, 3, 2, 4096, 8}, 1));
  put(d, "open-reply-error", encode(OpenReply{-EACCES, 0, 0, 0, 0}, 1));
  put(d, "close", encode(CloseRequest{3}, 20));
  put(d, "close-reply", encode_status(Type::kCloseReply, Status{0}, 20));
  put(d, "error", encode_status(Type::kError, Status{-EPROTO}, 21));
  put(d, "mapped", encode_event(Type::kMapped, BufferEvent{3, 1}));
  put(d, "unmapped", encode_event(Type::kUnmapped, BufferEvent{3, 1}));
  put(d, "consumed", encode(ConsumedRequest{3, 0, 2}, 22));
  put(d, "consumed-huge", encode(ConsumedRequest{0xffffffffu, 0xffffffffu, ~0ull}, 23));
  put(d, "reader-open", encode(ReaderOpenRequest{42}, 24));
  put(d, "reader-open-reply", encode(ReaderOpenReply{0, 4096, 8, 1}, 24));
  put(d, "reader-consumed", encode(ReaderConsumed{2, 5}, 25));
  put(d, "reader-consumed-reply", encode_status(Type::kReaderConsumedReply, Status{0}, 25));
  put(d, "control", encode(ControlRequest{42, ControlOp::kFlush}, 27));
  put(d, "control-reply", encode_status(Type::kControlReply, Status{-EPERM}, 27));
  put(d, "control-request", encode(ChannelControl{3, ControlOp::kReset}, 28));
  put(d, "control-done", encode_status(Type::kControlDone, Status{0}, 28));
  put(d, "record", encode(RecordRequest{42, 0, 512, 4096}, 29));
  put(d, "record-align-bad", encode(RecordRequest{42, 1, 3, 4096}, 30));
  put(d, "record-resume", encode(RecordRequest{42, 2, 0, 0, kRecordState | kRecordResume, 8192,
                                                77, 163636},
                                  32));
  put(d, "record-resume-no-state", encode(RecordRequest{42, 3, 0, 0, kRecordResume, 8192, 77, 1},
                                          33));
  put(d, "record-reply", encode(RecordReply{0, 1, 0, 163636}, 29));
  put(d, "record-stop", encode_status(Type::kRecordStop, Status{0}, 31));
  put(d, "record-event", encode(RecordEvent{0, RecordKind::kEnd, 0, 1, 4096, 1, 0, 0, 0, 1}));
  {
    // One header field edited at a time, on a valid close request.
    auto edited = [](std::vector<char> m, auto edit) {
      Header h = header_of(m);
      edit(h);
      set_header(m, h);
      return m;
    };
    const auto close = encode(CloseRequest{3}, 26);
    put(d, "bad-magic", edited(close, [](Header& h) { h.magic ^= 1; }));
    put(d, "bad-version", edited(close, [](Header& h) { h.version = kVersion + 1; }));
    put(d, "type-zero", edited(close, [](Header& h) { h.type = 0; }));
    put(d, "type-unknown", edited(close, [](Header& h) {
          h.type = static_cast<uint16_t>(Type::kAdopt) + 1;
        }));
    put(d, "length-above-max", edited(close, [](Header& h) { h.length = kMaxPayload + 1; }));
    put(d, "length-short", edited(close, [](Header& h) { h.length = 4; }));
    auto padded = close;
    padded.push_back(0);
    padded.push_back(0);
    put(d, "close-padded", edited(padded, [](Header& h) { h.length += 2; }));
  }
  put(d, "header-only-partial", std::vector<char>{'C', 'S', 'F', 'R', 1, 0});
  put(d, "garbage", std::vector<char>{'g', 'a', 'r', 'b', 'a', 'g', 'e', '!'});
  {
    // The largest message the daemon takes: an open whose payload is kMaxPayload bytes.
    auto m = encode(OpenRequest{1, 4096, 4, 0, 0, std::string(kMaxPayload - 32, 'L')}, 28);
    put(d, "max-payload", m);
  }
}

// Builds an input for consumer_fuzz the way FuzzedDataProvider reads it: integers are taken from
// the end of the data (most significant byte first, as many bytes as the range needs), byte
// strings from the front.
class Program {
 public:
  void num(uint64_t v, uint64_t lo, uint64_t hi) {
    const uint64_t range = hi - lo;
    std::vector<uint8_t> bytes;
    for (unsigned off = 0; off < 64 && (range >> off) > 0; off += 8) bytes.push_back(0);
    uint64_t x = v - lo;
    for (size_t i = bytes.size(); i-- > 0;) {
      bytes[i] = static_cast<uint8_t>(x);
      x >>= 8;
    }
    tail_.insert(tail_.end(), bytes.begin(), bytes.end());
  }
  void byte(uint8_t v) { num(v, 0, 255); }
  void flag(bool v) { byte(v ? 1 : 0); }
  void bytes(const std::string& s) { front_ += s; }
  std::vector<char> done() const {
    std::vector<char> out(front_.begin(), front_.end());
    out.insert(out.end(), tail_.rbegin(), tail_.rend());
    return out;
  }

  // The target's operations (consumer_fuzz.cc, Run::step).
  void op(int code) { num(static_cast<uint64_t>(code), 0, 19); }
  void write(uint32_t len, uint32_t size) {
    op(0);
    num(len, 1, 2 * size + 1);
  }
  void reserve(uint32_t len, uint32_t size) {
    op(2);
    num(len, 1, size + 1);
  }
  void commit(uint8_t which) {
    op(3);
    byte(which);
  }
  void read(size_t count, bool one, uint64_t data_size) {
    op(11);
    num(count, 1, 3 * data_size + 2);
    flag(one);
  }
  // Then `during` operations, then flag(finish).
  void plan(size_t count, int max_iov, int during, uint64_t data_size) {
    op(13);
    num(count, 1, 3 * data_size + 2);
    num(static_cast<uint64_t>(max_iov), 1, 8);
    num(static_cast<uint64_t>(during), 0, 6);
  }
  void set_field(size_t field, size_t n_fields, int kind, uint64_t raw) {
    op(7);
    num(field, 0, n_fields - 1);
    tail_raw64(raw);
    num(static_cast<uint64_t>(kind), 0, 7);
  }

 private:
  void tail_raw64(uint64_t v) { num(v, 0, ~uint64_t{0}); }
  std::string front_;
  std::vector<uint8_t> tail_;
};

// Geometry selector bytes: subbuf = 1 + s % 96 for s < 248.
void prelude(Program& p, uint32_t subbuf, uint32_t n, bool overwrite, bool header) {
  p.byte(static_cast<uint8_t>(subbuf - 1));
  p.byte(static_cast<uint8_t>(n - 1));
  p.byte(static_cast<uint8_t>((overwrite ? 1 : 0) | (header ? 2 : 0)));
}

void consumer_seeds() {
  const std::string d = "consumer";
  constexpr size_t kHeaderFields = 24;  // consumer_fuzz.cc fields_of: header fields first
  int k = 0;
  for (int mode = 0; mode < 4; ++mode) {
    const bool overwrite = mode & 1, header = mode & 2;
    for (uint32_t subbuf : {16u, 64u, 1u, 7u}) {
      for (uint32_t n : {1u, 2u, 4u}) {
        const uint64_t data_size = uint64_t{subbuf} * n;
        // An honest stream: writes of mixed sizes, reads of mixed sizes, a flush, a close.
        Program p;
        prelude(p, subbuf, n, overwrite, header);
        for (int i = 0; i < 12; ++i) {
          p.write(1 + (i * 5) % subbuf, subbuf);
          if (i % 3 == 2) p.read(1 + (i * 7) % (data_size + 1), i % 2, data_size);
        }
        p.op(4);  // flush
        p.reserve(std::max(1u, subbuf / 3), subbuf);
        p.write(2, subbuf);
        p.read(data_size, false, data_size);
        p.commit(0);
        p.read(3 * data_size, false, data_size);
        p.op(6);   // close
        p.op(18);  // finalize
        p.read(3 * data_size, false, data_size);
        p.op(17);  // stats
        put(d, "honest-" + std::to_string(k), p.done());
        // A zero-copy read with writes, a flush and a reset while it is in progress.
        Program z;
        prelude(z, subbuf, n, overwrite, header);
        for (int i = 0; i < 6; ++i) z.write(1 + i % subbuf, subbuf);
        z.plan(data_size, 4, 3, data_size);
        z.write(1, subbuf);
        z.op(4);
        z.op(mode == 0 ? 0 : 5);
        if (mode == 0) z.num(1, 1, 2 * subbuf + 1);
        z.flag(true);  // finish
        z.plan(2, 1, 1, data_size);
        z.write(3, subbuf);
        z.flag(false);  // abort
        z.read(3 * data_size, false, data_size);
        z.op(15);  // consume_upto
        z.num(0, 0, ~uint32_t{0});
        z.num(2, 0, 4 * n + 4);
        z.op(16);  // subbufs_consumed
        z.num(1, 0, 2 * n + 1);
        z.op(14);
        put(d, "plan-" + std::to_string(k), z.done());
        // Each header field corrupted in the middle of a stream, with a read in progress.
        if (subbuf == 16 && n == 4) {
          for (size_t f = 0; f < kHeaderFields + 3 * n; ++f) {
            Program c;
            prelude(c, subbuf, n, overwrite, header);
            for (int i = 0; i < 7; ++i) c.write(5, subbuf);
            c.read(7, false, data_size);
            c.plan(data_size, 8, 1, data_size);
            c.set_field(f, kHeaderFields + 3 * n, static_cast<int>(f % 8), 0x10000 + f);
            c.flag(true);
            for (int i = 0; i < 3; ++i) c.read(data_size, i == 1, data_size);
            c.op(14);
            c.op(17);
            c.op(18);
            c.read(3 * data_size, false, data_size);
            put(d, "corrupt-" + std::to_string(mode) + "-" + std::to_string(f), c.done());
          }
        }
        ++k;
      }
    }
  }
  // Page-sized and odd large geometries (selectors 248..255: 4095, 4096, 4097, 65536).
  for (uint8_t s : {uint8_t{248}, uint8_t{249}, uint8_t{250}, uint8_t{251}}) {
    static const uint32_t kLarge[] = {4095, 4096, 4097, 65536};
    const uint32_t subbuf = kLarge[s % 4];
    Program p;
    p.byte(s);
    p.byte(1);  // 2 sub-buffers
    p.byte(0);
    for (int i = 0; i < 5; ++i) p.write(subbuf / 2 + 1, subbuf);
    p.plan(3 * subbuf, 8, 2, 2 * subbuf);
    p.write(subbuf, subbuf);
    p.read(10, false, 2 * subbuf);
    p.flag(true);
    p.read(4 * subbuf, false, 2 * subbuf);
    put(d, "large-" + std::to_string(s), p.done());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz-seeds DIR   (writes DIR/protocol and DIR/consumer)\n");
    return 2;
  }
  g_dir = argv[1];
  for (const char* sub : {"", "/protocol", "/consumer"})
    if (::mkdir((g_dir + sub).c_str(), 0755) != 0 && errno != EEXIST) {
      std::perror((g_dir + sub).c_str());
      return 1;
    }
  protocol_seeds();
  consumer_seeds();
  std::printf("fuzz-seeds: %d files in %s\n", g_files, g_dir.c_str());
  return 0;
}
