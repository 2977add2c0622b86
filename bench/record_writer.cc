// The producer of the ship benchmark (bench/ship_bench.py): writes TOTAL_BYTES of RECORD_SIZE
// records into a new global channel DIR/BASE as fast as relay_write goes, then closes it, and
// prints one line:
//   record_writer: RECORDS records, DROPPED dropped, SECONDS s
// Usage: record_writer DIR BASE RECORD_SIZE TOTAL_BYTES SUBBUF_SIZE N_SUBBUFS [--blocking]
//                      [--rate MBPS]
// --blocking: RELAY_BLOCKING (waits for the reader, loses nothing); otherwise a full buffer
// drops and counts, as a producer that must never wait does. --rate: no faster than MBPS
// (10^6 bytes per second), in steps of 1 MiB.
#include <relayfs/relay.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

// The file callback of a global channel: one buffer, BASE0 (mode 0400, the default).
int create_global(const char*, const char*, mode_t*, rchan_buf*, int* is_global) {
  *is_global = 1;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: record_writer DIR BASE RECORD_SIZE TOTAL_BYTES SUBBUF_SIZE "
                         "N_SUBBUFS [--blocking]\n");
    return 2;
  }
  const size_t rec = std::strtoull(argv[3], nullptr, 10);
  const unsigned long long total = std::strtoull(argv[4], nullptr, 10);
  const size_t subbuf = std::strtoull(argv[5], nullptr, 10);
  const size_t n = std::strtoull(argv[6], nullptr, 10);
  bool blocking = false;
  double rate = 0;  // bytes per second; 0: flat out
  for (int i = 7; i < argc; ++i) {
    if (std::strcmp(argv[i], "--blocking") == 0) blocking = true;
    if (std::strcmp(argv[i], "--rate") == 0 && i + 1 < argc) rate = std::atof(argv[++i]) * 1e6;
  }
  relay_options o{};
  o.flags = blocking ? RELAY_BLOCKING : 0;
  o.block_timeout_ms = -1;
  rchan_callbacks cb{};
  cb.create_buf_file = create_global;
  rchan* c = relay_open_opts(argv[2], argv[1], subbuf, n, &cb, nullptr, &o);
  if (!c) {
    std::perror("relay_open_opts");
    return 1;
  }
  std::vector<char> r(rec);
  for (size_t i = 0; i < rec; ++i) r[i] = static_cast<char>('a' + i % 26);
  const unsigned long long records = total / rec;
  unsigned long long dropped = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const unsigned long long step = std::max<unsigned long long>(1, (1 << 20) / rec);
  for (unsigned long long i = 0; i < records; ++i) {
    if (relay_write(c, r.data(), rec) != 0) ++dropped;
    if (rate > 0 && i % step == step - 1)
      std::this_thread::sleep_until(
          t0 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                   std::chrono::duration<double>(static_cast<double>((i + 1) * rec) / rate)));
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  relay_flush(c);
  relay_close(c);
  std::printf("record_writer: %llu records, %llu dropped, %.3f s\n", records, dropped, s);
  return 0;
}
